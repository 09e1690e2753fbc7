"""Prometheus metrics: the API's own request metrics plus the platform's state.

Request latency is observed by an ASGI middleware, labelled by route template (never by raw
path, so unknown URLs cannot blow up the label set). The platform gauges (last cycle, its steps
and row counts, anomalies by severity, active model scores, cache age) are read at scrape time
from the jobs table, the anomalies and the model registry, at most once per
`PLATFORM_REFRESH_S`, and exported as gauges of what those tables say.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Histogram, disable_created_metrics
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

PLATFORM_REFRESH_S = 15.0
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


@dataclass
class PlatformState:
    """What the warehouse and the cache said at the last refresh (None = unknown)."""

    database_up: bool = False
    cache_up: bool = False
    last_success_at: float | None = None
    last_cycle_duration_s: float | None = None
    last_cycle_status: str | None = None
    step_seconds: dict[str, float] = field(default_factory=dict)
    step_status: dict[str, str] = field(default_factory=dict)
    gate_failures: dict[str, int] = field(default_factory=dict)  # stage -> critical failures
    last_publish_status: str | None = None
    rows_processed: int | None = None
    rows_rejected: int | None = None
    cycle_running: bool = False
    anomalies_24h: dict[str, int] = field(default_factory=dict)
    model_scores: list[tuple[dict[str, str], float]] = field(default_factory=list)
    cache_age_s: float | None = None


CYCLE_STATUSES = ("completed", "failed")
STEP_STATUSES = ("ok", "skipped", "failed")
GATE_STAGES = ("raw", "marts")
PUBLISH_STATUSES = ("published", "failed", "disabled")


def one_hot(name: str, doc: str, label: str, known: tuple[str, ...], value: str | None):
    """A gauge per known value, 1 on the current one (all 0 while unknown): alert rules can
    test `== 1` and a value outside the known set still shows up."""
    family = GaugeMetricFamily(name, doc, labels=[label])
    for item in dict.fromkeys((*known, *([value] if value else []))):
        family.add_metric([item], float(item == value))
    return family


class PlatformCollector(Collector):
    def __init__(self) -> None:
        self.state = PlatformState()
        self.refreshed_at = 0.0

    def due(self) -> bool:
        return time.monotonic() - self.refreshed_at >= PLATFORM_REFRESH_S

    def update(self, state: PlatformState) -> None:
        self.state = state
        self.refreshed_at = time.monotonic()

    def collect(self) -> Iterable[GaugeMetricFamily]:
        s = self.state
        up = GaugeMetricFamily(
            "water_source_up", "1 when the source answered at the last refresh.", labels=["source"]
        )
        up.add_metric(["database"], float(s.database_up))
        up.add_metric(["redis"], float(s.cache_up))
        yield up
        yield GaugeMetricFamily(
            "water_cycle_running",
            "1 while a processing cycle is running.",
            value=float(s.cycle_running),
        )
        if s.last_success_at is not None:
            yield GaugeMetricFamily(
                "water_cycle_last_success_timestamp_seconds",
                "Completion time (Unix seconds) of the last successful processing cycle.",
                value=s.last_success_at,
            )
        if s.last_cycle_duration_s is not None:
            yield GaugeMetricFamily(
                "water_cycle_last_duration_seconds",
                "Duration of the last finished processing cycle.",
                value=s.last_cycle_duration_s,
            )
        yield one_hot(
            "water_cycle_last_status",
            "Outcome of the last finished processing cycle (1 on its status).",
            "status",
            CYCLE_STATUSES,
            s.last_cycle_status,
        )
        steps = GaugeMetricFamily(
            "water_cycle_step_duration_seconds",
            "Duration of each step of the last finished processing cycle.",
            labels=["step"],
        )
        for step, seconds in sorted(s.step_seconds.items()):
            steps.add_metric([step], seconds)
        yield steps
        outcomes = GaugeMetricFamily(
            "water_cycle_step_status",
            "Outcome of each step of the last finished processing cycle (1 on its status).",
            labels=["step", "status"],
        )
        for step, status in sorted(s.step_status.items()):
            for known in STEP_STATUSES:
                outcomes.add_metric([step, known], float(status == known))
        yield outcomes
        blocked = GaugeMetricFamily(
            "water_gate_blocked",
            "1 when the last finished cycle stopped at this quality gate (nothing published).",
            labels=["stage"],
        )
        failures = GaugeMetricFamily(
            "water_gate_critical_failures",
            "Critical expectation failures of this gate in the last finished cycle.",
            labels=["stage"],
        )
        for stage in GATE_STAGES:
            blocked.add_metric([stage], float(s.step_status.get(f"{stage}_gate") == "failed"))
            failures.add_metric([stage], float(s.gate_failures.get(stage, 0)))
        yield blocked
        yield failures
        yield one_hot(
            "water_publish_last_status",
            "Outcome of the last cycle's publish to Redis (1 on its status).",
            "status",
            PUBLISH_STATUSES,
            s.last_publish_status,
        )
        if s.rows_processed is not None:
            yield GaugeMetricFamily(
                "water_cycle_rows_processed",
                "Raw rows the last finished cycle took in.",
                value=float(s.rows_processed),
            )
        if s.rows_rejected is not None:
            yield GaugeMetricFamily(
                "water_cycle_rows_rejected",
                "Rows the last finished cycle quarantined in rejected_readings.",
                value=float(s.rows_rejected),
            )
        anomalies = GaugeMetricFamily(
            "water_anomalies_last_24h",
            "Anomalies with window_start in the last 24 hours.",
            labels=["severity"],
        )
        for severity, count in sorted(s.anomalies_24h.items()):
            anomalies.add_metric([severity], float(count))
        yield anomalies
        scores = GaugeMetricFamily(
            "water_model_score",
            "Scores of the active models: latest daily evaluation, else training holdout (basis).",
            labels=["model_id", "model_type", "metric", "basis"],
        )
        for labels, value in s.model_scores:
            scores.add_metric(
                [labels["model_id"], labels["model_type"], labels["metric"], labels["basis"]], value
            )
        yield scores
        if s.cache_age_s is not None:
            yield GaugeMetricFamily(
                "water_cache_snapshot_age_seconds",
                "Seconds since the Redis snapshot was published.",
                value=s.cache_age_s,
            )


class ApiMetrics:
    """One registry per app (tests build several apps in one process)."""

    def __init__(self) -> None:
        disable_created_metrics()  # the *_created series only add noise for these metrics
        self.registry = CollectorRegistry(auto_describe=True)
        self.request_seconds = Histogram(
            "water_api_request_duration_seconds",
            "HTTP request latency by route template.",
            ["method", "route", "status"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.source_reads = Counter(
            "water_api_reads",
            "Reads answered, by where the data came from (cache or database).",
            ["source"],
            registry=self.registry,
        )
        self.triggers = Counter(
            "water_api_triggers",
            "Trigger requests by outcome (accepted, conflict, rate_limited, failed).",
            ["outcome"],
            registry=self.registry,
        )
        self.platform = PlatformCollector()
        self.registry.register(self.platform)


class RequestMetricsMiddleware:
    """Pure ASGI middleware: latency per (method, route template, status)."""

    def __init__(self, app, metrics: ApiMetrics):
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status_holder = {"status": 500}

        async def send_wrapper(message):
            if message["type"] == "http.response.start":
                status_holder["status"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            self.metrics.request_seconds.labels(
                scope.get("method", ""), route_template(scope), str(status_holder["status"])
            ).observe(time.perf_counter() - started)


def route_template(scope) -> str:
    """The matched route's template with its router prefix ("/api/v1/nodes/{node_id}/metrics").

    FastAPI puts the router's own route (path without the include prefix) in the scope; the
    prefix is literal, so it is the leading part of the actual path the template does not cover.
    """
    route = scope.get("route")
    template = getattr(route, "path", None)
    if not template:
        return "unmatched"
    extra = scope["path"].rstrip("/").count("/") - template.rstrip("/").count("/")
    if extra <= 0:
        return template
    prefix = "/".join(scope["path"].split("/")[: extra + 1])
    return prefix + template
