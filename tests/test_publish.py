"""The Redis hot cache: contract layout, TTLs, atomic snapshots, outages, gate failures.

Real Redis (a private redis-server per test, see orch_support), real warehouses, real cycles.
"""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import sys
import threading
from datetime import UTC, datetime, timedelta

import orjson
import pandas as pd
import pytest

from flows.kernel.contracts import ANOMALIES_KEY, KEYS_KEY, NODES_KEY, SERIES_COLUMNS, STATUS_KEY
from flows.kernel.redis_conn import (
    REDIS_CONNECT_TIMEOUT_S,
    REDIS_SOCKET_TIMEOUT_S,
    connect_redis,
    embedded_url,
    redis_endpoint,
)
from flows.kernel.warehouse import connect, open_warehouse
from flows.loaders.files import load_files
from flows.loaders.synthetic import Fault
from flows.pipeline.cycle import run_cycle
from flows.pipeline.results import CycleFailed
from flows.pipeline.steps import PUBLISH_RETRIES
from flows.pipeline.watermark import read_watermark
from flows.publish.publisher import Snapshot, write_snapshot
from tests.orch_support import RedisServer, register_nodes, synthetic_frame, write_parquet

NODES = 6
HOURS = 6


@pytest.fixture
def redis_server(tmp_path):
    server = RedisServer(tmp_path / "redis").start()
    yield server
    server.stop()


def _fresh_start(hours_before_now: float = HOURS) -> datetime:
    now = datetime.now(UTC).replace(second=0, microsecond=0)
    return now - timedelta(hours=hours_before_now)


def _load_fresh_batch(target, tmp_path, name="batch.parquet", start=None, **kwargs):
    start = start or _fresh_start()
    frame = synthetic_frame(
        NODES,
        HOURS,
        start,
        bad_rows=11,
        faults=(Fault("gap", "N0003", start + timedelta(hours=HOURS - 2)),),
        **kwargs,
    )
    register_nodes(target, NODES)
    with connect(target) as wh:
        load_files(wh, [str(write_parquet(frame, tmp_path / name))], progress=False)
    return frame


def _json(client, key):
    raw = client.get(key)
    assert raw is not None, f"{key} is missing"
    return orjson.loads(raw)


def test_snapshot_follows_the_contract(target, tmp_path, redis_server, monkeypatch):
    monkeypatch.setenv("WATER_REDIS_TTL_S", "600")
    _load_fresh_batch(target, tmp_path)
    client = redis_server.client()
    result = run_cycle(target, redis_client=client)
    assert result.status == "completed"
    assert result.publish["status"] == "published", result.publish

    status = _json(client, STATUS_KEY)
    assert status["cycle_id"] == result.cycle_id
    assert status["schema_version"] == 1 and status["nodes"] == NODES
    assert status["published_at"].endswith("Z") and status["target"] == target.name
    with connect(target) as wh:
        latest_end = wh.scalar(
            "select max(window_end) from water_infrastructure.computed_metrics where time_window = '5min'"
        )
        db_latest = wh.query_df(
            "select * from water_infrastructure.computed_metrics where node_id = 'N0001'"
            " and time_window = '5min' order by window_start desc limit 1"
        ).iloc[0]
        series_count = wh.scalar(
            "select count(*) from water_infrastructure.computed_metrics where node_id = 'N0001'"
            " and time_window = '5min' and window_start >= %(since)s",
            {"since": latest_end - timedelta(hours=24)},
        )
    assert status["latest_window_end"] == latest_end.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")

    # every key of the snapshot is listed in water:keys and expires within the configured TTL
    listed = set(_json(client, KEYS_KEY))
    present = {k.decode() for k in client.scan_iter("water:*")}
    assert listed == present
    assert all(0 < client.ttl(k) <= 600 for k in present)

    nodes = {n["node_id"]: n for n in _json(client, NODES_KEY)}
    assert set(nodes) == {f"N{i:04d}" for i in range(1, NODES + 1)}
    assert nodes["N0003"]["status"] == "stale", "no reading for 2 hours"
    assert {n["status"] for k, n in nodes.items() if k != "N0003"} <= {"ok", "anomaly"}

    latest = _json(client, "water:node:N0001:latest")
    assert latest["window_start"] == db_latest["window_start"].strftime("%Y-%m-%dT%H:%M:%SZ")
    assert latest["reading_count"] == db_latest["reading_count"]
    assert latest["avg_flow_rate"] == pytest.approx(db_latest["avg_flow_rate"])
    assert latest["status"] == nodes["N0001"]["status"]

    series = _json(client, "water:node:N0001:series:5min")
    starts = [row["window_start"] for row in series]
    assert starts == sorted(starts) and len(series) == series_count
    assert series[-1]["window_start"] == latest["window_start"]
    # every value of the (column-wise encoded) series equals the warehouse's
    with connect(target) as wh:
        expected = wh.query_df(
            f"select {', '.join(SERIES_COLUMNS)} from water_infrastructure.computed_metrics"
            " where node_id = 'N0001' and time_window = '5min' and window_start >= %(since)s"
            " order by window_start",
            {"since": latest_end - timedelta(hours=24)},
        )
    assert [list(row) for row in series] == [list(SERIES_COLUMNS)] * len(series)
    for column in SERIES_COLUMNS:
        got = [row[column] for row in series]
        if column in ("window_start", "window_end"):
            assert got == [t.strftime("%Y-%m-%dT%H:%M:%SZ") for t in expected[column]], column
        else:
            want = [None if pd.isna(v) else float(v) for v in expected[column]]
            assert [g is None for g in got] == [w is None for w in want], column
            pairs = [(g, w) for g, w in zip(got, want, strict=True) if w is not None]
            assert [g for g, _ in pairs] == pytest.approx([w for _, w in pairs], rel=1e-12), column

    members = client.zrange(ANOMALIES_KEY, 0, -1, withscores=True)
    for member, score in members:
        row = orjson.loads(member)
        assert datetime.fromisoformat(row["window_start"]).timestamp() == score
        assert set(row) >= {"anomaly_id", "node_id", "severity", "anomaly_type"}


def test_a_snapshot_removes_the_keys_the_previous_one_had(redis_server):
    client = redis_server.client()
    first = Snapshot(
        "c1",
        {},
        strings={"water:status": b"{}", "water:node:A:latest": b"{}", "water:node:B:latest": b"{}"},
    )
    second = Snapshot("c2", {}, strings={"water:status": b"{}", "water:node:A:latest": b"{}"})
    assert write_snapshot(client, first, 60) == 0
    assert client.exists("water:node:B:latest")
    assert write_snapshot(client, second, 60) == 1
    assert not client.exists("water:node:B:latest")
    assert set(json.loads(client.get(KEYS_KEY))) == {
        "water:status",
        "water:node:A:latest",
        KEYS_KEY,
    }


def test_readers_see_one_cycle_or_the_next_never_a_mix(redis_server):
    """A writer alternates two snapshots whose every key names its cycle; a reader reading
    several keys in one MULTI must always find a single cycle id."""
    keys = [f"water:node:N{i:04d}:latest" for i in range(200)]

    def snapshot(cycle: str) -> Snapshot:
        blob = orjson.dumps({"cycle_id": cycle, "pad": "x" * 2000})
        return Snapshot(cycle, {}, strings={STATUS_KEY: blob, **dict.fromkeys(keys, blob)})

    snapshots = [snapshot("even"), snapshot("odd")]
    stop = threading.Event()

    def writer():
        client = redis_server.client()
        n = 0
        while not stop.is_set():
            write_snapshot(client, snapshots[n % 2], 60)
            n += 1

    write_snapshot(redis_server.client(), snapshots[0], 60)
    thread = threading.Thread(target=writer)
    thread.start()
    mixed, reads = 0, 0
    try:
        reader = redis_server.client()
        for _ in range(300):
            with reader.pipeline(transaction=True) as pipe:
                pipe.get(STATUS_KEY)
                for key in keys[::20]:
                    pipe.get(key)
                values = pipe.execute()
            cycles = {orjson.loads(v)["cycle_id"] for v in values}
            mixed += len(cycles) != 1
            reads += 1
    finally:
        stop.set()
        thread.join()
    assert reads == 300 and mixed == 0


def test_redis_down_the_cycle_commits_and_the_next_one_republishes(
    duckdb_target, tmp_path, redis_server
):
    target = duckdb_target
    _load_fresh_batch(target, tmp_path)
    redis_server.stop()
    down = run_cycle(target, redis_client=redis_server.client())
    assert down.status == "completed"
    assert down.publish["status"] == "failed"
    with open_warehouse(target) as wh:
        status, summary = wh.query(
            "select status, result_summary from water_infrastructure.processing_jobs"
            " where cast(job_id as varchar) = %(j)s",
            {"j": down.cycle_id},
        )[0]
        assert read_watermark(wh) == down.watermark is not None
        built = wh.scalar("select count(*) from water_infrastructure.computed_metrics")
    assert status == "completed" and built > 0
    assert json.loads(summary)["publish"]["status"] == "failed"

    redis_server.start()
    back = run_cycle(target, redis_client=redis_server.client())
    assert back.rows_in == 0, "nothing new: the warehouse already committed the batch"
    assert back.publish["status"] == "published"
    assert _json(redis_server.client(), STATUS_KEY)["cycle_id"] == back.cycle_id


def test_a_critical_gate_failure_publishes_nothing_and_keeps_the_watermark(
    duckdb_target, tmp_path, redis_server
):
    target = duckdb_target
    client = redis_server.client()
    _load_fresh_batch(target, tmp_path, start=_fresh_start(HOURS + 1))
    first = run_cycle(target, redis_client=client)
    assert first.publish["status"] == "published"

    later = synthetic_frame(NODES, 1, _fresh_start(1), seed=9)
    with connect(target) as wh:
        load_files(wh, [str(write_parquet(later, tmp_path / "later.parquet"))], progress=False)
        # schema drift in raw: a column outside the contract is a critical raw-gate failure
        wh.execute("alter table raw.sensor_readings add column firmware varchar")
    with pytest.raises(CycleFailed, match="raw quality gate failed"):
        run_cycle(target, redis_client=client)
    assert _json(client, STATUS_KEY)["cycle_id"] == first.cycle_id
    with open_warehouse(target) as wh:
        assert read_watermark(wh) == first.watermark
        failed = wh.query(
            "select status, error_message from water_infrastructure.processing_jobs"
            " order by created_at desc limit 1"
        )[0]
    assert failed[0] == "failed" and "raw_columns_known" in failed[1]

    with connect(target) as wh:
        wh.execute("alter table raw.sensor_readings drop column firmware")
    fixed = run_cycle(target, redis_client=client)
    assert fixed.rows_in == len(later)
    assert _json(client, STATUS_KEY)["cycle_id"] == fixed.cycle_id


def test_embedded_redis_when_no_url_is_configured(tmp_path):
    env = {"WATER_REDIS_EMBEDDED_PATH": str(tmp_path / "embedded" / "water.rdb")}
    endpoint = redis_endpoint(env)
    assert endpoint.embedded and "embedded redis" in endpoint.describe()
    client = connect_redis(endpoint)
    client.set("water:probe", b"here", ex=60)
    url = embedded_url(endpoint)
    assert url.startswith("unix://")
    # another process reaches the same server through the URL (as the API does)
    read = subprocess.run(  # noqa: S603 - our interpreter
        [
            sys.executable,
            "-c",
            f"import redis; print(redis.Redis.from_url({url!r}).get('water:probe').decode())",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert read.stdout.strip() == "here"


def test_redis_url_is_checked_and_passwords_are_masked():
    from flows.kernel.settings import ConfigError

    with pytest.raises(ConfigError, match="REDIS_URL must start with"):
        redis_endpoint({"REDIS_URL": "127.0.0.1:6379"})
    described = redis_endpoint({"REDIS_URL": "redis://user:s3cret@cache:6379/0"}).describe()
    assert "s3cret" not in described and "***" in described


class HungRedis:
    """A TCP listener that accepts connections and never answers: a hung Redis server."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.accepted: list[socket.socket] = []
        self.received = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self):
        self.sock.settimeout(0.2)
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
                self.accepted.append(conn)
            except TimeoutError:
                pass
            for conn in self.accepted:  # read what clients send, answer nothing
                conn.setblocking(False)
                with contextlib.suppress(BlockingIOError, OSError):
                    self.received += len(conn.recv(65536))

    def close(self):
        self._stop.set()
        self._thread.join()
        for conn in self.accepted:
            conn.close()
        self.sock.close()


def test_a_hung_redis_fails_the_publish_step_within_its_timeouts(
    duckdb_target, tmp_path, monkeypatch
):
    """Found by the fault campaign: a server that accepts and never answers held a cycle ~2 min."""
    hung = HungRedis()
    monkeypatch.setenv("REDIS_URL", f"redis://127.0.0.1:{hung.port}/0")
    try:
        _load_fresh_batch(duckdb_target, tmp_path)
        result = run_cycle(duckdb_target)  # the platform's own client (connect_redis)
    finally:
        hung.close()
    assert hung.accepted and hung.received > 0, "the cycle never reached the hung server"
    assert result.status == "completed"
    assert result.publish["status"] == "failed"
    assert "timeout" in result.publish["error"].lower()
    # Bound: (retries + 1) attempts of one read timeout each, plus the step's backoff; the
    # publish write is one MULTI/EXEC, so a failed attempt leaves nothing half-written.
    bound = (PUBLISH_RETRIES + 1) * (REDIS_SOCKET_TIMEOUT_S + REDIS_CONNECT_TIMEOUT_S) + 10
    assert result.publish["seconds"] < bound
    with open_warehouse(duckdb_target) as wh:
        (summary,) = wh.query(
            "select result_summary from water_infrastructure.processing_jobs"
            " where cast(job_id as varchar) = %(j)s",
            {"j": result.cycle_id},
        )[0]
    assert json.loads(summary)["publish"]["status"] == "failed"
