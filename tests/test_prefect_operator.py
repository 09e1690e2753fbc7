"""Prefect as operators use it: native `prefect deploy --all` from a clean shell, `water serve`
on another port with a UI that reaches its API, failure notifications to a real HTTP
receiver, a summary artifact per cycle, and a cycle that is a handful of task runs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import urllib.request
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pandas as pd
import pytest

from flows.kernel.settings import PROJECT_ROOT
from tests.orch_support import (
    RedisServer,
    free_port,
    register_nodes,
    synthetic_frame,
    wait_for,
    write_parquet,
)

BIN = Path(sys.executable).parent
NODES = 4


@pytest.fixture(scope="module")
def prefect_server():
    """A temporary Prefect server (its own database); yields its API URL."""
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield PREFECT_API_URL.value()


class Receiver:
    """A real local HTTP server recording every JSON body POSTed to it."""

    def __init__(self):
        received = self.received = []

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server's API
                body = self.rfile.read(int(self.headers["Content-Length"]))
                received.append(json.loads(body))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hook?token=s3cret"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def _get_json(url: str, body: dict | None = None):
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 - local test URL
        return json.loads(response.read() or b"null")


def _clean_shell(tmp_path: Path, **extra: str) -> dict[str, str]:
    """What an operator's fresh login shell has: no WATER_* variables at all."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WATER_", "PREFECT_"))}
    return {**env, "HOME": str(tmp_path), "PREFECT_HOME": str(tmp_path / ".prefect"), **extra}


def test_prefect_deploy_all_in_a_clean_shell_registers_local_time_schedules(
    prefect_server, tmp_path
):
    env = _clean_shell(tmp_path, PREFECT_API_URL=prefect_server)
    prefect = str(BIN / "prefect")
    pool = subprocess.run(  # noqa: S603
        [prefect, "work-pool", "create", "water-local", "--type", "process"],
        env=env,
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert pool.returncode == 0, pool.stdout + pool.stderr
    deploy = subprocess.run(  # noqa: S603
        [prefect, "--no-prompt", "deploy", "--all"],
        env=env,
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert deploy.returncode == 0, deploy.stdout[-3000:] + deploy.stderr[-3000:]

    deployments = _get_json(f"{prefect_server}/deployments/filter", {})
    schedules = {
        d["name"]: sorted(
            (s["schedule"]["cron"], s["schedule"]["timezone"]) for s in d["schedules"]
        )
        for d in deployments
    }
    assert schedules["every-30-minutes"] == [("*/30 * * * *", "Europe/Rome")]
    assert schedules["daily-evaluation"] == [("0 2 * * *", "Europe/Rome")]
    assert schedules["weekly-retraining"] == [("0 3 * * 0", "Europe/Rome")]
    assert schedules["on-demand"] == [] and schedules["historical-load"] == []


def test_water_serve_on_another_port_gives_its_ui_the_right_api(tmp_path):
    port = free_port()
    env = _clean_shell(
        tmp_path,
        WATER_DUCKDB_PATH=str(tmp_path / "warehouse.duckdb"),
        PREFECT_SERVER_DATABASE_CONNECTION_URL=f"sqlite+aiosqlite:///{tmp_path / 'prefect.db'}",
    )
    log = (tmp_path / "serve.log").open("w")
    serve = subprocess.Popen(  # noqa: S603
        [str(BIN / "water"), "serve", "--port", str(port), "--target", "duckdb"],
        env=env,
        cwd=PROJECT_ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        base = f"http://127.0.0.1:{port}"

        def served() -> bool:
            try:
                return len(_get_json(f"{base}/api/deployments/filter", {})) >= 5
            except OSError:
                return False

        wait_for(served, 300, "water serve to register its deployments", serve)
        ui = _get_json(f"{base}/ui-settings")
        assert ui["api_url"] == f"{base}/api"
        # What the UI reads to show marketing banners and send analytics: both off.
        settings = _get_json(f"{ui['api_url']}/admin/settings")
        assert settings["server"]["ui"]["show_promotional_content"] is False
        assert settings["server"]["analytics_enabled"] is False
        # The UI's API shows the runs: a run of a served deployment appears there.
        (on_demand,) = [
            d
            for d in _get_json(f"{ui['api_url']}/deployments/filter", {})
            if d["name"] == "on-demand"
        ]
        run = _get_json(f"{ui['api_url']}/deployments/{on_demand['id']}/create_flow_run", {})
        listed = _get_json(f"{ui['api_url']}/flow_runs/filter", {})
        assert run["id"] in {r["id"] for r in listed}
    finally:
        os.killpg(serve.pid, signal.SIGINT)  # Ctrl-C: water serve stops its server too
        try:
            serve.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(serve.pid, signal.SIGKILL)
            serve.wait()
        log.close()
    assert "Prefect UI: " + base in (tmp_path / "serve.log").read_text()


def _mostly_invalid_batch(start: datetime) -> pd.DataFrame:
    times = pd.date_range(start, periods=100, freq="60s", tz="UTC")
    return pd.DataFrame(
        {
            "timestamp": times,
            "node_id": "N0001",
            "node_name": "inlet",
            "flow_rate": 12.5,
            "pressure": [99.0] * 60 + [4.0] * 40,  # 60 % impossible: the raw gate is critical
            "temperature": 11.0,
            "volume": [1000.0 + i for i in range(100)],
            "quality_score": 0.98,
        }
    )


def _artifact(api_url: str, flow_run_id: str) -> str:
    artifacts = _get_json(
        f"{api_url}/artifacts/filter",
        {"artifacts": {"flow_run_id": {"any_": [flow_run_id]}, "type": {"any_": ["markdown"]}}},
    )
    assert len(artifacts) == 1, artifacts
    return artifacts[0]["data"]


def test_cycles_leave_a_summary_and_a_gate_blocked_one_notifies(
    prefect_server, duckdb_target, tmp_path, monkeypatch
):
    from flows.orchestration.flows import processing_cycle

    receiver = Receiver()
    redis = RedisServer(tmp_path / "redis").start()
    monkeypatch.setenv("WATER_DUCKDB_PATH", str(duckdb_target.duckdb_path))
    monkeypatch.setenv("REDIS_URL", redis.url)
    monkeypatch.setenv("WATER_NOTIFY_URL", receiver.url)
    try:
        start = datetime(2025, 3, 1, tzinfo=UTC)
        register_nodes(duckdb_target, NODES)
        good = synthetic_frame(NODES, 6, start)
        ok = processing_cycle(
            target="duckdb",
            source=str(write_parquet(good, tmp_path / "good.parquet")),
            return_state=True,
        )
        assert ok.is_completed()
        assert receiver.received == []  # nothing to report

        bad = _mostly_invalid_batch(start + timedelta(hours=7))
        blocked = processing_cycle(
            target="duckdb",
            source=str(write_parquet(bad, tmp_path / "bad.parquet")),
            return_state=True,
        )
        assert blocked.is_failed()
    finally:
        redis.stop()
        receiver.close()

    (note,) = receiver.received
    assert note["kind"] == "gate_blocked" and note["failed_step"] == "raw_gate"
    assert note["flow"] == "processing-cycle" and note["flow_run_id"] == str(
        blocked.state_details.flow_run_id
    )
    assert "rejected_share_below_limit" in note["message"] and note["text"]

    ok_run = str(ok.state_details.flow_run_id)
    summary = _artifact(prefect_server, ok_run)
    assert f"rows loaded: {len(good):,}" in summary
    assert "| raw_gate | ok |" in summary and "| marts_gate | ok |" in summary
    assert "published" in summary
    blocked_summary = _artifact(prefect_server, str(blocked.state_details.flow_run_id))
    assert ": failed" in blocked_summary and "| raw_gate | failed" in blocked_summary
    assert "rejected_share_below_limit" in blocked_summary

    # A handful of task runs per cycle: one per step (PrefectSteps.run), dbt's build inside its
    # own step. Counted from the run's summary rather than the server's task-run list: Prefect
    # records task runs from the process-wide event stream, which in a shared test process can
    # still be bound to an earlier test's server (the list then comes back incomplete).
    steps = summary.split("## Steps", 1)[1]
    step_rows = [line for line in steps.splitlines() if line.startswith("| ") and "---" not in line]
    assert "| dbt_build | ok |" in steps and len(step_rows) - 1 <= 8, step_rows  # minus header
