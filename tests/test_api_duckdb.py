"""The API's database fallback on the embedded DuckDB target (the single-machine demo): a real
cycle on a DuckDB file, then every read with Redis unreachable, through read-only connections."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta

import duckdb
import jwt
import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from api.settings import load_api_settings
from flows.kernel.settings import PROJECT_ROOT, Target
from flows.loaders.synthetic import Fault, SyntheticConfig, node_metadata, write_parquet

SECRET = "duckdb-api-test-secret-0123456789-abcdef"


def _water(*args: str, env: dict[str, str]) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "flows.cli", *args],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr[-2000:]


@pytest.fixture(scope="module")
def duckdb_api(tmp_path_factory):
    """The cycle runs in its own process, as `water cycle` does next to a running API: this
    process then holds no writable connection to the file, only the API's read-only ones."""
    root = tmp_path_factory.mktemp("duckdb-api")
    target = Target("duckdb", duckdb_path=root / "warehouse.duckdb")
    now = datetime.now(UTC)
    end = now.replace(second=0, microsecond=0) - timedelta(minutes=now.minute % 5)
    config = SyntheticConfig(
        nodes=4,
        days=1,
        cadence_s=300,
        seed=3,
        faults=(
            Fault("reverse_flow", "N0002", end - timedelta(hours=3), end - timedelta(hours=2), 1.0),
        ),
    )
    write_parquet(config, root / "readings.parquet", progress=False)
    node_metadata(config).to_csv(root / "nodes.csv", index=False)
    env = {**os.environ, **target.dbt_env()}
    _water("nodes", str(root / "nodes.csv"), env=env)
    _water("cycle", "--source", str(root / "readings.parquet"), "--no-publish", env=env)
    with duckdb.connect(str(target.duckdb_path), read_only=True) as con:
        (job_id,) = con.execute(
            "select cast(job_id as varchar) from water_infrastructure.processing_jobs"
        ).fetchall()[0]
    api_env = {
        **target.dbt_env(),
        "REDIS_URL": "redis://127.0.0.1:1/0",
        "WATER_API_JWT_SECRET": SECRET,
    }
    with TestClient(create_app(load_api_settings(api_env))) as client:
        yield target, job_id, client


def _get(client, path, **params):
    token = jwt.encode(
        {"sub": "t", "scope": "read", "exp": int(time.time()) + 600}, SECRET, algorithm="HS256"
    )
    response = client.get(path, params=params, headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body.get("source", "database") == "database"
    return body


def test_every_read_answers_from_duckdb(duckdb_api):
    target, job_id, client = duckdb_api
    nodes = _get(client, "/api/v1/nodes")
    assert [n["node_id"] for n in nodes["nodes"]] == ["N0001", "N0002", "N0003", "N0004"]
    metrics = _get(client, "/api/v1/nodes/N0001/metrics", window="1hour")["metrics"]
    with duckdb.connect(str(target.duckdb_path), read_only=True) as con:
        (expected,) = con.execute(
            "select max(window_start) from water_infrastructure.computed_metrics"
            " where node_id = 'N0001' and time_window = '1hour'"
        ).fetchall()[0]
        anomaly_ids = [
            r[0]
            for r in con.execute(
                "select anomaly_id from water_infrastructure.anomalies"
                " where window_start >= now() - interval 24 hour order by window_start desc, anomaly_id desc"
            ).fetchall()
        ]
    assert datetime.fromisoformat(
        metrics["window_start"].replace("Z", "+00:00")
    ) == expected.astimezone(UTC)
    history = _get(client, "/api/v1/nodes/N0001/history", limit=50)
    assert history["count"] == 50 and history["next_cursor"]
    page2 = _get(client, "/api/v1/nodes/N0001/history", limit=50, cursor=history["next_cursor"])
    assert page2["rows"][0]["window_start"] > history["rows"][-1]["window_start"]
    assert anomaly_ids, "the reverse flow produced no anomaly"
    seen, cursor = [], None
    while True:
        page = _get(
            client, "/api/v1/anomalies", hours=24, limit=4, **({"cursor": cursor} if cursor else {})
        )
        seen += [a["anomaly_id"] for a in page["anomalies"]]
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert seen == anomaly_ids
    assert _get(client, "/api/v1/network/efficiency")["available"] is True
    assert _get(client, "/api/v1/models/status")["source"] == "database"
    assert _get(client, f"/api/v1/jobs/{job_id}")["status"] == "completed"
    status = _get(client, "/api/v1/status")
    assert status["processing_service"]["last_cycle"]["job_id"] == job_id
    assert status["database"]["reachable"] is True


def test_the_api_never_takes_duckdbs_write_lock(duckdb_api):
    """Right after the API has served reads, another process can open the file for writing
    (the API's read-only connections are closed after each request)."""
    target, _, client = duckdb_api
    _get(client, "/api/v1/nodes")
    write = (
        "import duckdb, sys; duckdb.connect(sys.argv[1]).execute('create table probe (x integer)')"
    )
    done = subprocess.run(
        [sys.executable, "-c", write, str(target.duckdb_path)], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr


def test_reads_never_block_a_cycle(duckdb_api, tmp_path):
    """Found by the fault campaign: a few API reads a second on the DuckDB target kept the
    cycle from opening its file and failed it. Here reads (node metrics, /ready) run back to
    back, in this process, for the whole of a `water cycle` in another one (which gives up on
    a busy file after 5 s): the cycle completes, every read answers from the database, and the
    reads then show the new cycle."""
    target, first_job, client = duckdb_api
    config = SyntheticConfig(nodes=4, days=0.5, cadence_s=300, seed=11)
    write_parquet(config, tmp_path / "more.parquet", progress=False)
    env = {**os.environ, **target.dbt_env(), "WATER_DUCKDB_BUSY_WAIT_S": "5"}
    token = jwt.encode(
        {"sub": "t", "scope": "read", "exp": int(time.time()) + 900}, SECRET, algorithm="HS256"
    )
    headers = {"Authorization": f"Bearer {token}"}
    cycle = subprocess.Popen(
        [sys.executable, "-m", "flows.cli", "cycle", "--no-publish",
         "--source", str(tmp_path / "more.parquet")],
        cwd=PROJECT_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    answers: list[tuple[str, object]] = []
    while cycle.poll() is None:
        metrics = client.get("/api/v1/nodes/N0001/metrics?window=1hour", headers=headers)
        answers.append(("metrics", metrics.status_code))
        # /ready says 503 here for the unreachable Redis; its database check must hold.
        answers.append(("ready database", client.get("/ready").json()["database"]))
    output = cycle.stdout.read()
    assert cycle.returncode == 0, output[-2000:]
    assert len(answers) >= 20, answers
    assert set(answers) == {("metrics", 200), ("ready database", True)}, answers
    status = client.get("/api/v1/status", headers=headers).json()
    assert status["processing_service"]["last_cycle"]["job_id"] != first_job
    assert status["processing_service"]["last_cycle"]["status"] == "completed"
