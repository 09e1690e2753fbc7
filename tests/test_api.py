"""The HTTP API against real PostgreSQL and Redis after a real processing cycle.

One module-scoped platform: a synthetic 6-node network (2 days at 5 min, with a reverse flow
and a data gap) loaded into a fresh PostgreSQL database, one `flows.pipeline.cycle.run_cycle` that builds
the marts and publishes to Redis DB 12. Every endpoint's answer is checked against the
warehouse itself, the database fallback against the cache, the OpenAPI schema with
schemathesis (no 5xx), and the seed's curl examples against a real `water api` server,
including a triggered cycle.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import jwt
import psycopg
import pytest
import redis
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from psycopg.rows import dict_row
from schemathesis.specs.openapi.checks import positive_data_acceptance

from api.app import create_app
from api.common import encode_cursor
from api.settings import load_api_settings
from flows.kernel.settings import PROJECT_ROOT, Target
from flows.kernel.warehouse import connect
from flows.loaders.loading import load_synthetic
from flows.loaders.synthetic import Fault, SyntheticConfig
from flows.pipeline.cycle import run_cycle
from flows.pipeline.lock import LOCK_FOR_JOB, RunLock
from tests.orch_support import free_port

REDIS_URL = "redis://127.0.0.1:6379/12"
SECRET = "api-test-secret-0123456789-abcdefghijkl"
FAULT_NODE = "N0002"  # reverse flow in the last day: anomalies on this node
PG = {
    "host": os.environ.get("PGHOST", "127.0.0.1"),
    "port": os.environ.get("PGPORT", "5432"),
    "user": os.environ.get("PGUSER", "postgres"),
}


def token(scope: str = "read", sub: str = "tester") -> str:
    return jwt.encode(
        {"sub": sub, "scope": scope, "exp": int(time.time()) + 3600}, SECRET, algorithm="HS256"
    )


READ = {"Authorization": f"Bearer {token('read')}"}


@dataclass
class Platform:
    target: Target
    cycle_id: str
    env: dict[str, str]

    def rows(self, sql: str, params: dict | None = None) -> list[dict[str, Any]]:
        with psycopg.connect(
            autocommit=True, row_factory=dict_row, **self.target.pg_dsn_parts
        ) as con:
            return con.execute(sql, params).fetchall()

    def table_exists(self, name: str) -> bool:
        return bool(
            self.rows(
                "select 1 from information_schema.tables where table_schema = 'water_infrastructure'"
                " and table_name = %(n)s",
                {"n": name},
            )
        )


@pytest.fixture(scope="module")
def platform(tmp_path_factory) -> Platform:
    name = f"water_test_api_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(autocommit=True, dbname="postgres", **PG) as admin:
        admin.execute(f'create database "{name}"')
    target = Target("postgres", pg_dsn_parts={**PG, "dbname": name})
    client = redis.Redis.from_url(REDIS_URL)
    client.flushdb()
    now = datetime.now(UTC)
    end = now.replace(second=0, microsecond=0) - timedelta(minutes=now.minute % 5)
    config = SyntheticConfig(
        nodes=6,
        days=2,
        cadence_s=300,
        seed=20,
        faults=(
            Fault(
                "reverse_flow", FAULT_NODE, end - timedelta(hours=3), end - timedelta(hours=2), 1.0
            ),
            Fault("gap", "N0003", end - timedelta(hours=6), end - timedelta(hours=4)),
        ),
    )
    try:
        with connect(target) as wh:
            load_synthetic(
                wh, config, progress=False, landing_dir=tmp_path_factory.mktemp("landing")
            )
        result = run_cycle(target, triggered_by="test", redis_client=client)
        assert result.status == "completed", result.message
        env = {**target.dbt_env(), "REDIS_URL": REDIS_URL, "WATER_API_JWT_SECRET": SECRET}
        yield Platform(target, result.job_id, env)
    finally:
        client.flushdb()
        client.close()
        with psycopg.connect(autocommit=True, dbname="postgres", **PG) as admin:
            admin.execute(f'drop database if exists "{name}" with (force)')


@pytest.fixture(scope="module")
def client(platform):
    with TestClient(create_app(load_api_settings(platform.env))) as c:
        yield c


@pytest.fixture(scope="module")
def fallback_client(platform):
    """The same API with Redis unreachable: every read comes from the database."""
    env = {**platform.env, "REDIS_URL": "redis://127.0.0.1:1/0"}
    with TestClient(create_app(load_api_settings(env))) as c:
        yield c


def get(client, path: str, status: int = 200, **params) -> dict[str, Any]:
    response = client.get(path, headers=READ, params=params)
    assert response.status_code == status, response.text
    return response.json()


def as_time(value: str | datetime | None) -> datetime | None:
    if value is None or isinstance(value, datetime):
        return value if value is None or value.tzinfo else value.replace(tzinfo=UTC)
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def normalised(value: Any) -> Any:
    """Compare cache and database answers: parse timestamps, round floats."""
    if isinstance(value, dict):
        return {k: normalised(v) for k, v in value.items()}
    if isinstance(value, list):
        return [normalised(v) for v in value]
    if isinstance(value, float):
        return round(value, 9)
    if isinstance(value, str) and len(value) >= 20 and value[4] == "-" and value[10] == "T":
        return as_time(value)
    return value


def without_envelope(body: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in body.items() if k not in ("source", "cycle_id", "published_at")}


# -- status -----------------------------------------------------------------------------------
def test_status_reports_the_cycle_freshness_and_components(client, platform):
    body = get(client, "/api/v1/status")
    service = body["processing_service"]
    assert service["running"] is False
    assert service["last_cycle"]["job_id"] == platform.cycle_id
    assert service["last_cycle"]["status"] == "completed"
    assert service["last_cycle"]["rows_in"] > 0
    assert as_time(service["last_successful_at"]) <= as_time(body["checked_at"])
    assert body["redis"] == {
        **body["redis"],
        "reachable": True,
        "cycle_id": platform.cycle_id,
    }
    assert body["database"]["reachable"] is True
    freshness = body["data_freshness"]
    assert sorted(n["node_id"] for n in freshness["nodes"]) == [f"N000{i}" for i in range(1, 7)]
    # The synthetic feed ends now: every node is fresh, so nothing is stale or degraded.
    assert freshness["stale_nodes"] == 0
    assert body["status"] == "ok", body["reasons"]
    assert body["reasons"] == [] and not body["is_stale"] and not body["is_degraded"]


def test_status_turns_stale_when_data_is_older_than_the_threshold(platform):
    # The cycle finished, and the newest reading was taken, well over a second ago.
    env = {**platform.env, "WATER_API_STALE_AFTER_S": "1"}
    with TestClient(create_app(load_api_settings(env))) as c:
        body = get(c, "/api/v1/status")
    assert body["is_stale"] is True
    assert body["status"] in ("stale", "degraded")
    assert any("more than 1s ago" in r or "in the last 1s" in r for r in body["reasons"])


# -- nodes ------------------------------------------------------------------------------------
def test_nodes_come_from_the_cache_and_match_the_nodes_mart(client, platform):
    body = get(client, "/api/v1/nodes")
    assert body["source"] == "cache" and body["cycle_id"] == platform.cycle_id
    mart = platform.rows(
        "select node_id, district, balance_role from water_infrastructure.nodes order by node_id"
    )
    assert [(n["node_id"], n["district"], n["balance_role"]) for n in body["nodes"]] == [
        (r["node_id"], r["district"], r["balance_role"]) for r in mart
    ]
    assert body["count"] == 6
    assert {n["status"] for n in body["nodes"]} <= {"ok", "anomaly"}


def test_node_metrics_are_the_latest_window_of_each_width(client, platform):
    for window, source in (("5min", "cache"), ("1hour", "database"), ("1day", "database")):
        body = get(client, "/api/v1/nodes/N0001/metrics", window=window)
        assert body["source"] == source
        (latest,) = platform.rows(
            "select * from water_infrastructure.computed_metrics where node_id = 'N0001'"
            " and time_window = %(w)s order by window_start desc limit 1",
            {"w": window},
        )
        metrics = body["metrics"]
        assert as_time(metrics["window_start"]) == latest["window_start"]
        assert metrics["reading_count"] == latest["reading_count"]
        assert metrics["avg_flow_rate"] == pytest.approx(float(latest["avg_flow_rate"]))
        assert metrics["quality_score"] == pytest.approx(float(latest["quality_score"]))


def test_unknown_nodes_are_404_on_every_node_route(client, fallback_client):
    for c in (client, fallback_client):
        for suffix in ("metrics", "history", "predictions"):
            body = get(c, f"/api/v1/nodes/NOPE/{suffix}", status=404)
            assert body == {"detail": "unknown node 'NOPE'"}
        get(c, "/api/v1/nodes/NOPE/metrics", status=404, window="1day")


def test_history_pages_through_the_range_in_order(client, platform):
    (bounds,) = platform.rows(
        "select max(window_end) as last_end from water_infrastructure.computed_metrics"
        " where node_id = 'N0003' and time_window = '1hour'"
    )
    end = bounds["last_end"]
    start = (end - timedelta(days=3)).isoformat()
    pages, cursor = [], None
    while True:
        params = {"window": "1hour", "start": start, "end": end.isoformat(), "limit": 7}
        if cursor:
            params["cursor"] = cursor
        body = get(client, "/api/v1/nodes/N0003/history", **params)
        assert body["count"] == len(body["rows"]) <= 7
        pages.append(body["rows"])
        cursor = body["next_cursor"]
        if cursor is None:
            break
    rows = [r for page in pages for r in page]
    expected = platform.rows(
        "select window_start from water_infrastructure.computed_metrics where node_id = 'N0003'"
        " and time_window = '1hour' and window_start >= %(s)s and window_start < %(e)s order by window_start",
        {"s": as_time(start), "e": end},
    )
    assert [as_time(r["window_start"]) for r in rows] == [r["window_start"] for r in expected]
    assert len(pages) > 1 and len(rows) == len(expected) > 0


def test_history_of_the_last_day_is_served_from_the_cache(client, fallback_client):
    cached = get(client, "/api/v1/nodes/N0004/history", limit=1000)
    assert cached["source"] == "cache"
    from_db = get(fallback_client, "/api/v1/nodes/N0004/history", limit=1000)
    assert from_db["source"] == "database"
    assert normalised(without_envelope(cached)) == normalised(without_envelope(from_db))
    assert cached["count"] > 200


@pytest.mark.parametrize(
    ("params", "name"),
    [
        ({"start": "2026-01-02T00:00:00Z", "end": "2026-01-01T00:00:00Z"}, "end"),
        ({"start": "2020-01-01T00:00:00Z", "end": "2026-01-01T00:00:00Z"}, "start"),
        ({"cursor": "not-a-cursor"}, "cursor"),
        ({"window": "2min"}, "window"),
        ({"limit": 0}, "limit"),
    ],
)
def test_history_rejects_bad_parameters_with_422(client, params, name):
    body = get(client, "/api/v1/nodes/N0001/history", status=422, **params)
    assert [e["loc"] for e in body["detail"]] == [["query", name]]


def _cursor(payload: dict) -> str:
    return encode_cursor(payload)


@pytest.mark.parametrize(
    ("path", "params", "name"),
    [
        # Found by the fault campaign: each answered 500 before.
        ("/api/v1/anomalies", {"cursor": _cursor({"ts": "not-a-date", "id": "a"})}, "cursor"),
        (
            "/api/v1/anomalies",
            {"cursor": _cursor({"ts": "2026-01-01T00:00:00+99:00", "id": "a"})},
            "cursor",
        ),
        (
            "/api/v1/anomalies",
            {"cursor": _cursor({"ts": "0001-01-01T00:00:00+01:00", "id": "a"})},
            "cursor",
        ),
        ("/api/v1/nodes/N0001/history", {"end": "0001-01-01T00:00:00Z"}, "end"),
        ("/api/v1/nodes/N0001/history", {"end": "0001-01-01T00:30:00+01:00"}, "end"),
        ("/api/v1/nodes/N0001/history", {"start": "9999-12-31T23:00:00-05:00"}, "start"),
        ("/api/v1/nodes/N0001/history", {"cursor": _cursor({"after": "nope"})}, "cursor"),
    ],
)
def test_out_of_range_times_and_cursors_are_422_not_500(client, path, params, name):
    body = get(client, path, status=422, **params)
    assert [e["loc"] for e in body["detail"]] == [["query", name]]
    assert all("\n" not in e["msg"] for e in body["detail"])


def test_predictions_follow_the_forecast_table(client, platform):
    body = get(client, "/api/v1/nodes/N0001/predictions")
    assert body["source"] == "cache"
    if not platform.table_exists("ml_predictions_cache"):
        assert body["model_available"] is False and body["predictions"] == []
        return
    stored = platform.rows(
        "select target_timestamp from water_infrastructure.ml_predictions_cache where node_id = 'N0001'"
        " and target_timestamp >= now() - interval '1 hour' and target_timestamp < now() + interval '24 hours'"
    )
    assert body["count"] == len(stored)
    assert body["model_available"] is (len(stored) > 0)


# -- anomalies -----------------------------------------------------------------------------------
def test_anomalies_are_newest_first_paginated_and_match_the_mart(client, platform):
    if not platform.table_exists("anomalies"):
        body = get(client, "/api/v1/anomalies", hours=24)
        assert body["count"] == 0
        pytest.skip("the anomalies mart is not built by the pipeline yet")
    expected = platform.rows(
        "select anomaly_id from water_infrastructure.anomalies where window_start >= now() - interval '24 hours'"
        " order by window_start desc, anomaly_id desc"
    )
    assert any(a["anomaly_id"] for a in expected), "the injected faults produced no anomaly"
    seen, cursor = [], None
    while True:
        params = {"hours": 24, "limit": 3, **({"cursor": cursor} if cursor else {})}
        body = get(client, "/api/v1/anomalies", **params)
        assert body["source"] == "cache" and body["available"] is True
        seen.extend(body["anomalies"])
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert [a["anomaly_id"] for a in seen] == [r["anomaly_id"] for r in expected]
    keys = [(as_time(a["window_start"]), a["anomaly_id"]) for a in seen]
    assert keys == sorted(keys, reverse=True)


def test_anomaly_filters(client, platform):
    if not platform.table_exists("anomalies"):
        pytest.skip("the anomalies mart is not built by the pipeline yet")
    body = get(client, "/api/v1/anomalies", hours=48, node_id=FAULT_NODE, limit=500)
    assert body["count"] > 0
    assert {a["node_id"] for a in body["anomalies"]} == {FAULT_NODE}
    severity = body["anomalies"][0]["severity"]
    filtered = get(client, "/api/v1/anomalies", hours=48, severity=severity, limit=500)
    assert filtered["count"] > 0 and {a["severity"] for a in filtered["anomalies"]} == {severity}
    assert get(client, "/api/v1/anomalies", hours=48, node_id="NOPE")["count"] == 0
    get(client, "/api/v1/anomalies", status=422, hours=24 * 91)


# -- efficiency and models -------------------------------------------------------------------------
def test_network_efficiency_matches_the_mart(client, platform):
    body = get(client, "/api/v1/network/efficiency")
    assert body["source"] == "cache"
    if not platform.table_exists("network_efficiency"):
        assert body == {**body, "available": False, "network": None, "districts": []}
        return
    latest = platform.rows(
        "select district, time_window, period_status, window_start"
        " from water_infrastructure.network_efficiency_latest"
    )
    periods = {("1hour", "complete"): "hourly", ("1day", "complete"): "daily"}
    periods |= {(w, "partial"): f"{p}_partial" for (w, _), p in periods.items()}
    expected = {(r["district"], periods[r["time_window"], r["period_status"]]): r for r in latest}
    assert body["available"] is True
    districts = sorted({d for d, _ in expected if d != "(network)"})
    assert [d["district"] for d in body["districts"]] == districts
    for entry in [{**body["network"], "district": "(network)"}, *body["districts"]]:
        for period in periods.values():
            row, want = entry[period], expected.get((entry["district"], period))
            assert (row is None) == (want is None), (entry["district"], period)
            if row is not None:
                assert as_time(row["window_start"]) == want["window_start"]
                assert row["period_status"] == want["period_status"]
    one = districts[0]
    only = get(client, "/api/v1/network/efficiency", district=one)["districts"]
    assert [d["district"] for d in only] == [one]


def test_models_status_lists_the_registry(client, platform):
    body = get(client, "/api/v1/models/status")
    if not platform.table_exists("ml_models"):
        assert body == {"source": "database", "available": False, "active_count": 0, "models": []}
        return
    registered = platform.rows("select model_id, status from water_infrastructure.ml_models")
    assert sorted(m["model_id"] for m in body["models"]) == sorted(
        r["model_id"] for r in registered
    )
    assert body["active_count"] == sum(r["status"] == "active" for r in registered)
    assert all("artifact_path" not in m for m in body["models"])


# -- the database fallback answers what the cache answers ------------------------------------------
@pytest.mark.parametrize(
    "path",
    [
        "/api/v1/nodes",
        "/api/v1/nodes/N0005/metrics",
        "/api/v1/nodes/N0001/predictions",
        "/api/v1/anomalies?hours=48&limit=500",
        "/api/v1/network/efficiency",
    ],
)
def test_database_fallback_matches_the_cache(client, fallback_client, path):
    cached = client.get(path, headers=READ).json()
    from_db = fallback_client.get(path, headers=READ).json()
    assert cached["source"] == "cache" and from_db["source"] == "database"
    cached, from_db = without_envelope(cached), without_envelope(from_db)
    if "metrics" in cached:  # the cached row carries the node status besides the table's columns
        cached["metrics"].pop("status")
    assert normalised(cached) == normalised(from_db)


# -- jobs and metrics -------------------------------------------------------------------------------
def test_jobs_endpoint_reads_processing_jobs(client, platform):
    body = get(client, f"/api/v1/jobs/{platform.cycle_id}")
    (row,) = platform.rows(
        "select * from water_infrastructure.processing_jobs where job_id = %(j)s",
        {"j": platform.cycle_id},
    )
    assert body["status"] == row["status"] == "completed"
    assert body["rows_in"] == row["rows_in"] > 0
    assert body["triggered_by"] == "test"
    assert "dbt_build" in body["result_summary"]["steps"]
    get(client, f"/api/v1/jobs/{uuid.uuid4()}", status=404)
    get(client, "/api/v1/jobs/has%20space", status=422)


def test_prometheus_metrics_expose_requests_and_the_platform(client, platform):
    get(client, "/api/v1/nodes/N0001/metrics")
    text = client.get("/metrics").text
    assert (
        'water_api_request_duration_seconds_bucket{le="0.005",method="GET",'
        'route="/api/v1/nodes/{node_id}/metrics",status="200"}'
    ) in text
    assert 'water_source_up{source="database"} 1.0' in text
    assert 'water_source_up{source="redis"} 1.0' in text
    assert 'water_cycle_step_duration_seconds{step="dbt_build"}' in text
    (row,) = platform.rows(
        "select rows_in, rows_rejected, completed_at from water_infrastructure.processing_jobs where job_id = %(j)s",
        {"j": platform.cycle_id},
    )
    assert sample(text, "water_cycle_rows_processed") == row["rows_in"]
    assert sample(text, "water_cycle_rows_rejected") == row["rows_rejected"]
    assert sample(text, "water_cycle_last_success_timestamp_seconds") == pytest.approx(
        row["completed_at"].timestamp()
    )
    assert "water_cache_snapshot_age_seconds" in text
    assert 'water_api_reads_total{source="cache"}' in text


def sample(text: str, name: str) -> float:
    """The value of an unlabelled sample in Prometheus text format."""
    (line,) = [line for line in text.splitlines() if line.startswith(name + " ")]
    return float(line.split(" ", 1)[1])


def test_health_and_readiness(client):
    assert client.get("/health").json() == {"status": "alive"}
    assert client.get("/ready").json() == {"status": "ready", "database": True, "redis": True}


def test_trigger_answers_409_while_the_run_lock_is_held(client, platform):
    lock = RunLock(platform.target, LOCK_FOR_JOB["cycle"])
    assert lock.acquire()
    try:
        response = client.post(
            "/api/v1/processing/trigger", headers={"Authorization": f"Bearer {token('trigger')}"}
        )
    finally:
        lock.release()
    assert response.status_code == 409
    assert response.json()["detail"] == "a processing cycle is already running"


# -- the OpenAPI schema, fuzzed ----------------------------------------------------------------------
def test_openapi_schema_holds_and_nothing_answers_5xx(platform):
    """Every GET operation with generated (valid and invalid) parameters: responses match the
    schema, status codes are documented, none is a 5xx. (The trigger starts real cycles: it is
    exercised end to end below, not fuzzed.)"""
    app = create_app(load_api_settings(platform.env))
    schema = schemathesis.openapi.from_asgi("/openapi.json", app).include(method="GET")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 12
    headers = {"Authorization": f"Bearer {token('read trigger')}"}
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(
            max_examples=12,
            deadline=None,
            derandomize=True,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        def check(case):
            # Opaque cursors and cross-field rules (end after start, bounded ranges) make some
            # schema-valid values a legitimate 422, so "valid data is accepted" does not apply.
            case.call_and_validate(headers=headers, excluded_checks=[positive_data_acceptance])

        check()


def test_openapi_documents_every_route_and_the_bearer_scheme(client):
    spec = client.get("/openapi.json").json()
    paths = set(spec["paths"])
    assert {
        "/api/v1/status",
        "/api/v1/models/status",
        "/api/v1/anomalies",
        "/api/v1/processing/trigger",
        "/api/v1/jobs/{job_id}",
        "/api/v1/nodes",
        "/api/v1/nodes/{node_id}/metrics",
        "/api/v1/nodes/{node_id}/history",
        "/api/v1/nodes/{node_id}/predictions",
        "/api/v1/network/efficiency",
    } <= paths
    assert spec["components"]["securitySchemes"]["bearerJWT"]["scheme"] == "bearer"
    assert client.get("/docs").status_code == 200


# -- the seed's curl examples against a real server, then a triggered cycle ---------------------------
@pytest.fixture(scope="module")
def server(platform):
    port = free_port()
    env = {**os.environ, **platform.env}
    process = subprocess.Popen(
        [sys.executable, "-m", "flows.cli", "api", "--port", str(port)],
        cwd=PROJECT_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{base}/health", timeout=1).status_code == 200:
                break
        except httpx.TransportError:
            time.sleep(0.2)
    else:
        process.kill()
        pytest.fail(f"water api did not start: {process.stdout.read().decode()[-2000:]}")
    yield base
    process.terminate()
    process.wait(timeout=30)


def curl(command: str, base: str, scope: str = "read") -> str:
    """Run a seed example as written, on this server's port, with a bearer token added."""
    command = command.replace("http://localhost:8000", base.replace("127.0.0.1", "localhost"))
    args = shlex.split(command)
    assert args[0] == "curl"
    args[1:1] = ["-sS", "--fail-with-body", "-H", f"Authorization: Bearer {token(scope)}"]
    if "|" in args:
        pipe = args.index("|")
        first = subprocess.run(args[:pipe], capture_output=True, check=True)
        return subprocess.run(
            args[pipe + 1 :], input=first.stdout, capture_output=True, check=True
        ).stdout.decode()
    return subprocess.run(args, capture_output=True, check=True).stdout.decode()


def test_seed_curl_examples_work_with_a_token(server, platform):
    status = json.loads(curl("curl http://localhost:8000/api/v1/status", server))
    assert status["processing_service"]["last_cycle"]["status"] == "completed"
    models = json.loads(curl("curl http://localhost:8000/api/v1/models/status", server))
    assert models["source"] == "database"
    anomalies = json.loads(curl("curl http://localhost:8000/api/v1/anomalies?hours=24", server))
    assert anomalies["hours"] == 24
    service = json.loads(
        curl("curl http://localhost:8000/api/v1/status | jq '.processing_service'", server)
    )
    assert service["running"] is False
    # Without a token the server refuses (curl exits non-zero on the 401).
    refused = subprocess.run(
        ["curl", "-sS", "--fail-with-body", f"{server}/api/v1/status"], capture_output=True
    )
    assert refused.returncode != 0 and b"missing bearer token" in refused.stdout


def test_seed_trigger_example_starts_a_cycle_that_publishes(server, platform):
    first = json.loads(
        curl("curl -X POST http://localhost:8000/api/v1/processing/trigger", server, "trigger")
    )
    assert first["status"] == "accepted" and first["mode"] == "local"
    job_id = first["job_id"]
    # A second trigger while that cycle runs is refused with the running job's id.
    second = (
        subprocess.run(
            [
                "curl",
                "-sS",
                "-X",
                "POST",
                "-H",
                f"Authorization: Bearer {token('trigger', sub='other')}",
                "-w",
                "\n%{http_code}",
                f"{server}/api/v1/processing/trigger",
            ],
            capture_output=True,
            check=True,
        )
        .stdout.decode()
        .rsplit("\n", 1)
    )
    assert second[1] == "409" and json.loads(second[0])["running_job_id"] == job_id
    deadline = time.monotonic() + 600
    job = {}
    while time.monotonic() < deadline:
        job = json.loads(curl(f"curl {server}/api/v1/jobs/{job_id}", server))
        if job["status"] not in ("queued", "running"):
            break
        time.sleep(1)
    assert job["status"] == "completed", job
    assert job["triggered_by"] == "api:tester"
    status = json.loads(curl("curl http://localhost:8000/api/v1/status", server))
    assert status["processing_service"]["last_cycle"]["job_id"] == job_id
    assert status["redis"]["cycle_id"] == job_id
