"""Prometheus metrics of the processing worker (`water serve`), so a stopped worker is seen.

The worker listens on `WATER_WORKER_METRICS_PORT` (default 9108, on 127.0.0.1 or
`WATER_WORKER_METRICS_HOST`; `0` switches it off) from the moment it starts. Prometheus scrapes it
as job `water-worker` (deploy/prometheus/prometheus.yml): `up == 0` there is the alert
`WaterWorkerDown`, minutes before `WaterCycleStale` (an hour without a completed cycle) would say
the same.
"""

from __future__ import annotations

import os
import time

from prometheus_client import CollectorRegistry, Gauge, start_http_server

from flows.kernel.settings import ConfigError

DEFAULT_PORT = 9108


class WorkerMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.started = Gauge(
            "water_worker_start_time_seconds",
            "Unix time the worker process started.",
            registry=self.registry,
        )
        self.deployments = Gauge(
            "water_worker_deployments",
            "Deployments this worker serves (0 until its Prefect server answers).",
            registry=self.registry,
        )
        self.started.set(time.time())

    def listen(self, env: dict[str, str] | None = None) -> str | None:
        """Serve /metrics as configured; the address, or None when switched off."""
        env = os.environ if env is None else env
        text = env.get("WATER_WORKER_METRICS_PORT", str(DEFAULT_PORT)).strip()
        if not text.isdigit() or int(text) > 65535:
            raise ConfigError(f"WATER_WORKER_METRICS_PORT={text!r} is not a port number (0 = off)")
        if int(text) == 0:
            return None
        host = env.get("WATER_WORKER_METRICS_HOST", "127.0.0.1")
        try:
            start_http_server(int(text), addr=host, registry=self.registry)
        except OSError as exc:
            raise ConfigError(
                f"worker metrics cannot listen on {host}:{text} ({exc.strerror}); set"
                " WATER_WORKER_METRICS_PORT to a free port, or 0 to switch them off"
            ) from exc
        return f"http://{host}:{text}/metrics"
