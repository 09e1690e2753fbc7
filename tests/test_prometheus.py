"""Debian's `prometheus` scrapes a running `water api` with the project's scrape config and alert
rules; the series and alerts are read back through Prometheus's HTTP API.

The rules are the production file with only `for:` shortened to 0s (a generated copy, so
alerts.yml stays the one source of the rule text). The faults are real: a worker that stopped
two hours ago (its job rows moved back in time), Redis killed before a cycle publishes, a
batch whose raw gate fails, and the API stopped. Expected values come from the processing_jobs table, read here
with psycopg, not from the API.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from datetime import timedelta
from pathlib import Path

import pandas as pd
import psycopg
import pytest
import yaml

from flows.kernel.settings import PROJECT_ROOT
from tests.orch_support import RedisServer, free_port, wait_http

pytestmark = pytest.mark.postgres

DEPLOY = PROJECT_ROOT / "deploy" / "prometheus"
S = "water_infrastructure"
WAIT_S = 120  # the API reads the jobs table at most every 15 s; scrape and rules run every 1 s


def _get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.load(response)


def _stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def test_rules_and_config_pass_promtool():
    """Syntax, then the shipped thresholds and `for:` against synthetic series
    (tests/prometheus/alerts_test.yml: stale after exactly 1 h + 5 min, not a minute before)."""
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool is not installed (.ci/run installs Debian's prometheus)")
    for args, cwd in (
        (("check", "rules", "alerts.yml"), DEPLOY),
        (("check", "config", "prometheus.yml"), DEPLOY),
        (("test", "rules", "alerts_test.yml"), Path(__file__).parent / "prometheus"),
    ):
        done = subprocess.run([promtool, *args], cwd=cwd, capture_output=True, text=True)
        assert done.returncode == 0, done.stdout + done.stderr


def _test_rules(directory: Path) -> Path:
    """alerts.yml with every `for:` at 0s; nothing else changes."""
    rules = yaml.safe_load((DEPLOY / "alerts.yml").read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            if "for" in rule:
                rule["for"] = "0s"
    path = directory / "alerts.yml"
    path.write_text(yaml.safe_dump(rules, sort_keys=False))
    return path


def _test_config(directory: Path, api_port: int | None, worker_port: int | None = None) -> Path:
    """prometheus.yml scraping the test's API and/or worker every second, with the test's rules
    (a job whose process the test does not run is left out)."""
    config = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())
    config["global"].update(scrape_interval="1s", evaluation_interval="1s")
    config["rule_files"] = [str(_test_rules(directory))]
    ports = {"water-api": api_port, "water-worker": worker_port}
    assert {job["job_name"] for job in config["scrape_configs"]} == set(ports)
    config["scrape_configs"] = [job for job in config["scrape_configs"] if ports[job["job_name"]]]
    for job in config["scrape_configs"]:
        job["static_configs"] = [{"targets": [f"127.0.0.1:{ports[job['job_name']]}"]}]
    path = directory / "prometheus.yml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


class Prometheus:
    def __init__(self, base: str):
        self.base = base

    def query(self, expr: str) -> dict[tuple, float]:
        """Instant query: {sorted label items without __name__/job/instance: value}."""
        body = _get_json(f"{self.base}/api/v1/query?" + urllib.parse.urlencode({"query": expr}))
        assert body["status"] == "success", body
        out = {}
        for series in body["data"]["result"]:
            labels = {
                k: v
                for k, v in series["metric"].items()
                if k not in ("__name__", "job", "instance")
            }
            out[tuple(sorted(labels.items()))] = float(series["value"][1])
        return out

    def firing(self, state: str = "firing") -> set[tuple[str, str]]:
        """(alertname, stage or '') of the alerts in `state` (firing or pending)."""
        alerts = _get_json(f"{self.base}/api/v1/alerts")["data"]["alerts"]
        return {
            (a["labels"]["alertname"], a["labels"].get("stage", ""))
            for a in alerts
            if a["state"] == state
        }

    def wait(self, check, what: str, seconds: float = WAIT_S):
        """Poll until check() returns a truthy value (the platform gauges refresh every 15 s)."""
        deadline = time.monotonic() + seconds
        last = None
        while time.monotonic() < deadline:
            last = check()
            if last:
                return last
            time.sleep(1)
        raise AssertionError(f"{what}: not seen within {seconds}s (last: {last!r}) ")


@pytest.fixture
def stack(pg_target, tmp_path):
    """A private Redis, `water api` on PostgreSQL and Prometheus scraping it."""
    prometheus_bin = shutil.which("prometheus")
    if prometheus_bin is None:
        pytest.fail("prometheus is not installed (.ci/run installs Debian's prometheus)")
    redis_server = RedisServer(tmp_path / "redis").start()
    env = {**os.environ, **pg_target.dbt_env(), "REDIS_URL": redis_server.url}
    procs: list[subprocess.Popen] = []
    try:
        _water(env, "load", "synthetic", "--nodes", "3", "--days", "1", "--cadence", "300")
        _water(env, "cycle")
        api_port = free_port()
        procs.append(_spawn(env, sys.executable, "-m", "flows.cli", "api", "--insecure-no-auth",
                            "--port", str(api_port)))  # fmt: skip
        wait_http(f"http://127.0.0.1:{api_port}/health", procs[-1])
        prom_port = free_port()
        procs.append(
            _spawn(
                env,
                prometheus_bin,
                f"--config.file={_test_config(tmp_path, api_port)}",
                f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{prom_port}",
            )
        )
        wait_http(f"http://127.0.0.1:{prom_port}/-/ready", procs[-1])
        yield Prometheus(f"http://127.0.0.1:{prom_port}"), env, redis_server, pg_target, procs[0]
    finally:
        for proc in reversed(procs):
            _stop(proc)
        redis_server.stop()


def _spawn(env, *argv) -> subprocess.Popen:
    return subprocess.Popen(
        argv, cwd=PROJECT_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def _water(env, *args, ok: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run(
        [sys.executable, "-m", "flows.cli", *args],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    assert (done.returncode == 0) == ok, done.stdout[-2000:] + done.stderr[-2000:]
    return done


def _sql(target, query: str, params=None) -> list[tuple] | None:
    with psycopg.connect(**target.pg_dsn_parts, autocommit=True) as conn:
        cursor = conn.execute(query, params)
        return cursor.fetchall() if cursor.description else None


def _last_cycle(target) -> tuple:
    return _sql(
        target,
        f"select job_id, status, rows_in, rows_rejected, result_summary from {S}.processing_jobs"
        " where job_type = 'cycle' order by started_at desc limit 1",
    )[0]


def test_prometheus_scrapes_the_api_and_fires_the_platform_alerts(stack):
    prom, env, redis_server, target, api = stack

    # 1. A healthy cycle: the series match its job row and nothing fires.
    job_id, status, rows_in, rows_rejected, summary = _last_cycle(target)
    assert status == "completed" and rows_in > 0
    steps = prom.wait(lambda: prom.query("water_cycle_step_duration_seconds"), "step durations")
    assert steps == {
        (("step", name),): pytest.approx(step["seconds"], abs=1e-3)
        for name, step in summary["steps"].items()
    }
    assert prom.query("water_cycle_rows_processed") == {(): rows_in}
    assert prom.query("water_cycle_rows_rejected") == (
        {(): rows_rejected} if rows_rejected is not None else {}
    )
    assert prom.query('water_cycle_last_status{status="completed"}') == {
        (("status", "completed"),): 1.0
    }
    assert prom.query("water_cycle_step_status == 1") == {
        (("status", step["status"]), ("step", name)): 1.0 for name, step in summary["steps"].items()
    }
    assert prom.query("water_gate_blocked") == {
        (("stage", "raw"),): 0.0,
        (("stage", "marts"),): 0.0,
    }
    assert prom.query("water_publish_last_status == 1") == {(("status", "published"),): 1.0}
    assert prom.query("water_cache_snapshot_age_seconds >= 0")  # publish age, from Redis
    # The API's latency histogram, labelled by route template: a scrape is observed after its
    # response, so the second scrape carries the first.
    latency = prom.wait(
        lambda: prom.query('water_api_request_duration_seconds_count{route="/metrics"}'),
        "the API's latency histogram",
    )
    assert list(latency) == [(("method", "GET"), ("route", "/metrics"), ("status", "200"))]
    assert prom.query('up{job="water-api"}') == {(): 1.0}
    assert prom.firing() == set()

    # 2. The worker stopped two hours ago: its job rows are moved back in time.
    _sql(
        target,
        f"update {S}.processing_jobs set started_at = started_at - %(d)s,"
        " completed_at = completed_at - %(d)s",
        {"d": timedelta(hours=2)},
    )
    prom.wait(lambda: ("WaterCycleStale", "") in prom.firing(), "WaterCycleStale firing")
    assert prom.firing() == {("WaterCycleStale", "")}

    # 3. Redis is down when the next cycle publishes: the cycle completes, the publish fails.
    redis_server.stop()
    _water(env, "cycle")
    assert _last_cycle(target)[4]["publish"]["status"] == "failed"
    assert prom.wait(lambda: prom.firing() == {("WaterPublishFailed", "")}, "publish alert")

    # 4. A batch that is mostly impossible pressures: the raw gate blocks the cycle.
    (last_ts, node_id) = _sql(
        target, "select max(timestamp), min(node_id) from raw.sensor_readings"
    )[0]
    times = pd.date_range(last_ts + timedelta(minutes=5), periods=100, freq="60s")
    broken = Path(redis_server.directory).parent / "broken.csv"
    pd.DataFrame(
        {
            "timestamp": times.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "node_id": node_id,
            "node_name": "broken",
            "flow_rate": 12.5,
            "pressure": [99.0] * 60 + [4.0] * 40,
            "temperature": 11.0,
            "volume": [1000.0 + i for i in range(100)],
            "quality_score": 0.98,
        }
    ).to_csv(broken, index=False)
    _water(env, "cycle", "--no-publish", "--source", str(broken), ok=False)
    job_id, status, *_, summary = _last_cycle(target)
    assert status == "failed" and summary["steps"]["raw_gate"]["status"] == "failed"
    prom.wait(lambda: ("WaterGateBlocked", "raw") in prom.firing(), "WaterGateBlocked firing")
    assert prom.query("water_gate_blocked == 1") == {(("stage", "raw"),): 1.0}
    assert prom.query('water_gate_critical_failures{stage="raw"}') == {
        (("stage", "raw"),): float(len(summary["steps"]["raw_gate"]["critical_failures"]))
    }
    assert prom.query('water_cycle_last_status{status="failed"}') == {(("status", "failed"),): 1.0}
    # The last publish attempt is still the failed one; the marts gate did not run.
    assert ("WaterPublishFailed", "") in prom.firing()
    assert ("WaterGateBlocked", "marts") not in prom.firing()

    # 5. The API stops: Prometheus has no platform series left, and says so.
    _stop(api)
    prom.wait(lambda: ("WaterMonitoringBlind", "") in prom.firing(), "WaterMonitoringBlind firing")
    assert prom.query('up{job="water-api"}') == {(): 0.0}


def test_a_stopped_worker_fires_worker_down(tmp_path):
    """`water serve` (the processing worker) is scraped as job water-worker; killed (SIGKILL,
    with its Prefect server), up drops to 0 and WaterWorkerDown fires. The rules are the shipped
    ones with `for:` shortened (promtool checks the shipped 5 minutes)."""
    prometheus_bin = shutil.which("prometheus")
    if prometheus_bin is None:
        pytest.fail("prometheus is not installed (.ci/run installs Debian's prometheus)")
    worker_port, prefect_port, prom_port = free_port(), free_port(), free_port()
    env = {
        **{k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"},
        "HOME": str(tmp_path),
        "PREFECT_HOME": str(tmp_path / ".prefect"),
        "WATER_DUCKDB_PATH": str(tmp_path / "warehouse.duckdb"),
        "WATER_WORKER_METRICS_PORT": str(worker_port),
    }
    worker = subprocess.Popen(  # its own session: the kill takes its Prefect server too
        [sys.executable, "-m", "flows.cli", "serve", "--port", str(prefect_port), "--target", "duckdb"],
        cwd=PROJECT_ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True,
    )  # fmt: skip
    prom = None
    try:
        wait_http(f"http://127.0.0.1:{worker_port}/metrics", worker)
        config = _test_config(tmp_path, None, worker_port)
        rules = yaml.safe_load((tmp_path / "alerts.yml").read_text())
        for group in rules["groups"]:
            for rule in group["rules"]:
                if rule["alert"] == "WaterWorkerDown":
                    rule["for"] = "3s"
        (tmp_path / "alerts.yml").write_text(yaml.safe_dump(rules, sort_keys=False))
        prom = _spawn(env, prometheus_bin, f"--config.file={config}",
                      f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                      f"--web.listen-address=127.0.0.1:{prom_port}")  # fmt: skip
        wait_http(f"http://127.0.0.1:{prom_port}/-/ready", prom)
        p = Prometheus(f"http://127.0.0.1:{prom_port}")
        # Serving: every deployment of prefect.yaml, once its Prefect server answers.
        served = len(yaml.safe_load((PROJECT_ROOT / "prefect.yaml").read_text())["deployments"])
        p.wait(lambda: p.query("water_worker_deployments") == {(): served}, "deployments", 300)
        assert p.query('up{job="water-worker"}') == {(): 1.0}
        assert p.firing() == set() and p.firing("pending") == set()

        os.killpg(worker.pid, signal.SIGKILL)
        worker.wait()
        p.wait(lambda: p.query('up{job="water-worker"}') == {(): 0.0}, "up == 0")
        p.wait(lambda: ("WaterWorkerDown", "") in p.firing(), "WaterWorkerDown firing")
        assert p.firing() == {("WaterWorkerDown", "")}
    finally:
        if worker.poll() is None:
            os.killpg(worker.pid, signal.SIGKILL)
            worker.wait()
        if prom is not None:
            _stop(prom)
