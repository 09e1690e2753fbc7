"""The orchestration: flows and deployments, end-to-end cycles, crashes, overlaps, backfills.

Real PostgreSQL, DuckDB and Redis; real processes killed with SIGKILL. The Prefect flow test
uses one ephemeral Prefect API for the session (prefect_test_harness).
"""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, date, datetime, timedelta

import pandas as pd
import pytest

from flows.kernel.contracts import STATUS_KEY
from flows.kernel.settings import PROJECT_ROOT, Target
from flows.kernel.warehouse import connect, open_warehouse
from flows.loaders.files import DateRange, load_files
from flows.loaders.synthetic import Fault
from flows.orchestration.serve import build_deployments, deployment_specs, load_entrypoint
from flows.pipeline.backfill import day_chunks, run_backfill
from flows.pipeline.cycle import run_cycle
from flows.pipeline.watermark import read_watermark
from tests.orch_support import (
    ExtraDatabase,
    RedisServer,
    cli_env,
    pg_scalar,
    published_table,
    register_nodes,
    sigkill,
    start_water,
    synthetic_frame,
    wait_for,
    write_parquet,
)

NODES = 6
SEED_FRESHNESS = """
SELECT
  node_id,
  MAX(window_end) as latest_data,
  NOW() - MAX(window_end) as data_lag
FROM water_infrastructure.computed_metrics
GROUP BY node_id
HAVING NOW() - MAX(window_end) > INTERVAL '1 hour';
"""
# Published tables compared between an interrupted and an uninterrupted warehouse, with keys.
COMPARED_TABLES = {
    "computed_metrics": ["node_id", "time_window", "window_start"],
    "rejected_readings": ["batch_id", "batch_row"],
    "nodes": ["node_id"],
    "anomalies": ["anomaly_id"],
    "network_efficiency": ["district", "time_window", "window_start"],
}


@pytest.fixture
def redis_server(tmp_path):
    server = RedisServer(tmp_path / "redis").start()
    yield server
    server.stop()


@pytest.fixture
def second_pg(pg_target):
    extra = ExtraDatabase(pg_target)
    yield extra.target
    extra.drop()


def _jobs(target: Target) -> pd.DataFrame:
    with open_warehouse(target) as wh:
        return wh.query_df(
            "select cast(job_id as varchar) as job_id, job_type, status, triggered_by, rows_in,"
            " rows_rejected, error_message, started_at, completed_at, data_start, data_end"
            " from water_infrastructure.processing_jobs order by created_at"
        )


def _load(target: Target, frame: pd.DataFrame, path) -> None:
    with connect(target) as wh:
        load_files(wh, [str(write_parquet(frame, path))], progress=False)


# --------------------------------------------------------------------------- flows and deployments


def test_every_flow_imports_and_each_prefect_yaml_entrypoint_resolves(monkeypatch):
    from prefect import Flow
    from prefect.flows import load_flow_from_entrypoint

    import flows.orchestration.flows as module

    assert {f.name for f in module.ALL_FLOWS} == {
        "processing-cycle",
        "backfill",
        "evaluate-models",
        "retrain-models",
        "backup-warehouse",
    }
    # prefect.yaml itself carries the time zone: no variable needed, none honoured.
    monkeypatch.setenv("WATER_LOCAL_TIMEZONE", "America/Chicago")
    specs = deployment_specs()
    assert len(specs) == len({s.name for s in specs}) >= 5
    for spec in specs:
        flow = load_entrypoint(spec.entrypoint)
        assert isinstance(flow, Flow) and flow in module.ALL_FLOWS
        # Prefect's own loader (what a worker uses) resolves it to the same flow.
        assert load_flow_from_entrypoint(spec.entrypoint).name == flow.name
        assert set(spec.parameters) <= set(flow.parameters.properties), spec.name
    crons = {s.name: [(x["cron"], x["timezone"]) for x in s.schedules] for s in specs}
    assert crons["every-30-minutes"] == [("*/30 * * * *", "Europe/Rome")]
    assert crons["daily-evaluation"] == [("0 2 * * *", "Europe/Rome")]
    assert crons["weekly-retraining"] == [("0 3 * * 0", "Europe/Rome")]
    assert crons["daily-backup"] == [("0 1 * * *", "Europe/Rome")]
    assert crons["on-demand"] == [] and crons["historical-load"] == []

    deployments = {d.name: d for d in build_deployments(specs, target="duckdb")}
    cycle = deployments["every-30-minutes"]
    assert cycle.concurrency_limit == 1
    assert cycle.concurrency_options.collision_strategy.value == "CANCEL_NEW"
    assert cycle.parameters["target"] == "duckdb"
    assert cycle.schedules[0].schedule.timezone == "Europe/Rome"
    assert deployments["historical-load"].parameters["chunk_days"] == 1


def test_day_chunks_cover_the_range_once():
    chunks = day_chunks(date(2025, 1, 30), date(2025, 2, 2), 3)
    assert chunks == [(date(2025, 1, 30), date(2025, 2, 1)), (date(2025, 2, 2), date(2025, 2, 2))]
    with pytest.raises(ValueError, match="before start"):
        day_chunks(date(2025, 2, 2), date(2025, 2, 1))


@pytest.fixture(scope="session")
def prefect_api():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


def test_the_prefect_flow_runs_the_same_cycle(duckdb_target, tmp_path, monkeypatch, prefect_api):
    from flows.orchestration.flows import processing_cycle

    monkeypatch.setenv("WATER_DUCKDB_PATH", str(duckdb_target.duckdb_path))
    server = RedisServer(tmp_path / "redis").start()
    monkeypatch.setenv("REDIS_URL", server.url)
    try:
        start = datetime(2025, 3, 1, tzinfo=UTC)
        register_nodes(duckdb_target, NODES)
        frame = synthetic_frame(NODES, 6, start)
        path = write_parquet(frame, tmp_path / "batch.parquet")
        summary = processing_cycle(target="duckdb", source=str(path))
        assert summary["status"] == "completed" and summary["rows_in"] == len(frame)
        assert summary["steps"]["dbt_build"]["status"] == "ok"
        assert summary["publish"]["status"] == "published"

        state = processing_cycle(
            target="duckdb", source=str(tmp_path / "missing-*.parquet"), return_state=True
        )
        assert state.is_failed()
        assert server.client().get(STATUS_KEY) is not None
    finally:
        server.stop()
    jobs = _jobs(duckdb_target)
    assert list(jobs["status"]) == ["completed", "failed"]
    assert (jobs["triggered_by"] == "prefect:flow").all()
    assert "no file matches" in jobs["error_message"].iloc[1]
    with open_warehouse(duckdb_target) as wh:
        flow_runs = wh.query("select flow_run_id from water_infrastructure.processing_jobs")
    assert all(r[0] for r in flow_runs), "each job row names its Prefect flow run"


# --------------------------------------------------------------------------- end to end


def test_end_to_end_cycles_account_for_every_row(target, tmp_path, redis_server):
    """History, then a batch with new and late readings, then nothing: each row counted once."""
    now = datetime.now(UTC).replace(second=0, microsecond=0)
    start = now - timedelta(hours=12)
    full = synthetic_frame(
        NODES,
        12,
        start,
        bad_rows=11,
        faults=(Fault("gap", "N0003", now - timedelta(hours=3)),),
    )
    late = full["timestamp"] >= now - timedelta(hours=2)
    history, batch = full[~late], full[late]
    register_nodes(target, NODES)
    client = redis_server.client()

    _load(target, history, tmp_path / "history.parquet")
    first = run_cycle(target, redis_client=client, triggered_by="test")
    _load(target, batch, tmp_path / "batch.parquet")
    second = run_cycle(target, redis_client=client, triggered_by="test")
    third = run_cycle(target, redis_client=client, triggered_by="test")

    assert (first.rows_in, second.rows_in, third.rows_in) == (len(history), len(batch), 0)
    assert third.steps["dbt_build"].status == "skipped"
    jobs = _jobs(target)
    assert list(jobs["status"]) == ["completed"] * 3
    assert list(jobs["rows_in"]) == [len(history), len(batch), 0]
    with connect(target) as wh:
        raw_total, max_loaded = wh.query(
            "select count(*), max(loaded_at) from raw.sensor_readings"
        )[0]
        rejected = wh.scalar("select count(*) from water_infrastructure.rejected_readings")
        assert read_watermark(wh) == max_loaded
    assert jobs["rows_in"].sum() == raw_total
    assert jobs["rows_rejected"].sum() == rejected
    assert (
        jobs["data_end"].iloc[1] > jobs["data_start"].iloc[1] >= now - timedelta(hours=2, minutes=1)
    )
    assert client.get(STATUS_KEY) is not None and third.publish["status"] == "published"

    if target.type == "postgres":
        # The seed's freshness query, unmodified, names exactly the node silent for 3 hours.
        assert {row[0] for row in pg_rows(target, SEED_FRESHNESS)} == {"N0003"}


def pg_rows(target: Target, sql: str) -> list[tuple]:
    import psycopg

    with psycopg.connect(autocommit=True, **target.pg_dsn_parts) as con:
        return con.execute(sql).fetchall()


# --------------------------------------------------------------------------- crashes and overlaps


def _two_batches(tmp_path):
    start = datetime(2025, 3, 1, tzinfo=UTC)
    full = synthetic_frame(NODES, 36, start, seed=4, bad_rows=11)
    cut = full["timestamp"] >= start + timedelta(hours=24)
    return (
        write_parquet(full[~cut], tmp_path / "history.parquet"),
        write_parquet(full[cut], tmp_path / "batch.parquet"),
        int(cut.sum()),
    )


def _running_step(target: Target) -> str | None:
    if not pg_scalar(
        target, "select to_regclass('water_infrastructure.processing_jobs') is not null"
    ):
        return None
    return pg_scalar(
        target,
        "select result_summary->>'current_step' from water_infrastructure.processing_jobs"
        " where status = 'running' order by started_at desc limit 1",
    )


@pytest.mark.slow
def test_sigkill_during_dbt_then_the_next_cycle_converges(pg_target, second_pg, tmp_path):
    history, batch, batch_rows = _two_batches(tmp_path)
    for target in (pg_target, second_pg):
        register_nodes(target, NODES)
        with connect(target) as wh:
            load_files(wh, [str(history)], progress=False)
        run_cycle(target, publish_to_redis=False)
        with connect(target) as wh:
            load_files(wh, [str(batch)], progress=False)

    run_cycle(second_pg, publish_to_redis=False)  # the uninterrupted reference

    env = cli_env(pg_target, None, tmp_path / "dbt-sub")
    victim = start_water(
        ["cycle", "--target", "postgres", "--no-publish"], env, tmp_path / "victim.log"
    )
    deduplicated_before = pg_scalar(
        pg_target, "select count(*) from water_staging.int_readings_deduplicated"
    )
    try:
        wait_for(lambda: _running_step(pg_target) == "dbt_build", 240, "the dbt step", victim)
        # kill once dbt has committed its first incremental model, mid-build
        wait_for(
            lambda: (
                pg_scalar(pg_target, "select count(*) from water_staging.int_readings_deduplicated")
                > deduplicated_before
            ),
            240,
            "the first model to commit",
            victim,
        )
    finally:
        sigkill(victim)
    killed = _jobs(pg_target).iloc[-1]
    assert killed["status"] == "running", "SIGKILL leaves the row as it was"
    windows = "select count(*) from water_infrastructure.computed_metrics"
    assert pg_scalar(pg_target, windows) < pg_scalar(second_pg, windows), "killed mid-build"

    recovered = run_cycle(pg_target, publish_to_redis=False)
    assert recovered.rows_in == batch_rows, "the killed cycle's scope is processed again, once"
    jobs = _jobs(pg_target)
    assert list(jobs["status"]) == ["completed", "failed", "completed"]
    assert "abandoned" in jobs["error_message"].iloc[1]
    assert jobs.loc[jobs["status"] == "completed", "rows_in"].sum() == pg_scalar(
        pg_target, "select count(*) from raw.sensor_readings"
    )

    for table, key in COMPARED_TABLES.items():
        with connect(second_pg) as wh:
            if not wh.relation_exists("water_infrastructure", table):
                continue
        expected = published_table(second_pg, table, key)
        actual = published_table(pg_target, table, key)
        pd.testing.assert_frame_equal(actual, expected, check_dtype=False, obj=table)


def test_a_second_trigger_while_a_cycle_runs_is_skipped_and_recorded(pg_target, tmp_path):
    history, _batch, _rows = _two_batches(tmp_path)
    register_nodes(pg_target, NODES)
    with connect(pg_target) as wh:
        load_files(wh, [str(history)], progress=False)
    env = cli_env(pg_target, None, tmp_path / "dbt-sub")
    first = start_water(
        ["cycle", "--target", "postgres", "--no-publish"], env, tmp_path / "first.log"
    )
    try:
        wait_for(lambda: _running_step(pg_target) == "dbt_build", 240, "the dbt step", first)
        running_id = pg_scalar(
            pg_target,
            "select cast(job_id as text) from water_infrastructure.processing_jobs where status = 'running'",
        )
        second = run_cycle(pg_target, publish_to_redis=False, triggered_by="test-second")
        assert second.status == "skipped"
        assert running_id in second.message
        assert first.wait(timeout=300) == 0, (tmp_path / "first.log").read_text()[-2000:]
    finally:
        if first.poll() is None:
            sigkill(first)
    jobs = _jobs(pg_target)
    assert sorted(jobs["status"]) == ["completed", "skipped"]
    skipped = jobs[jobs["status"] == "skipped"].iloc[0]
    assert skipped["triggered_by"] == "test-second" and running_id in skipped["error_message"]
    assert "cycle" in (tmp_path / "first.log").read_text()


@pytest.mark.slow
def test_a_killed_backfill_resumes_without_duplicates(pg_target, second_pg, tmp_path, redis_server):
    start = datetime(2025, 3, 1, tzinfo=UTC)
    frame = synthetic_frame(NODES, 72, start, seed=8)
    path = write_parquet(frame, tmp_path / "three-days.parquet")
    first_day, last_day = date(2025, 3, 1), date(2025, 3, 3)
    for target in (pg_target, second_pg):
        register_nodes(target, NODES)

    args = [
        "load",
        str(path),
        "--process",
        "--start-date",
        str(first_day),
        "--end-date",
        str(last_day),
    ]
    env = cli_env(pg_target, redis_server.url, tmp_path / "dbt-sub")
    victim = start_water([*args, "--target", "postgres"], env, tmp_path / "victim.log")
    try:
        wait_for(
            lambda: (
                pg_scalar(
                    pg_target,
                    "select to_regclass('water_infrastructure.backfill_chunks') is not null",
                )
                and pg_scalar(
                    pg_target, "select count(*) from water_infrastructure.backfill_chunks"
                )
                >= 1
            ),
            300,
            "the first chunk",
            victim,
        )
    finally:
        sigkill(victim)
    done_before = pg_scalar(pg_target, "select count(*) from water_infrastructure.backfill_chunks")
    assert done_before < 3

    resumed = run_backfill(
        pg_target, [str(path)], first_day, last_day, redis_client=redis_server.client()
    )
    assert resumed.status == "completed"
    assert len(resumed.summary["chunks_already_done"]) == done_before

    with connect(pg_target) as wh:
        chunks = wh.query(
            "select chunk_start, rows_in from water_infrastructure.backfill_chunks order by 1"
        )
        raw, distinct_rows = wh.query(
            'select count(*), count(distinct (node_id, "timestamp")) from raw.sensor_readings'
        )[0]
    assert [c[0] for c in chunks] == [first_day, date(2025, 3, 2), last_day]
    in_range = frame["timestamp"].dt.date.between(first_day, last_day)  # jitter crosses midnight
    assert raw == distinct_rows == int(in_range.sum()), "every reading in range loaded exactly once"
    assert sum(c[1] for c in chunks) == raw
    jobs = _jobs(pg_target)
    assert list(jobs["status"]) == ["failed", "completed"]

    # the same readings loaded at once and processed in one cycle give the same tables
    with connect(second_pg) as wh:
        load_files(wh, [str(path)], DateRange(first_day, last_day), progress=False)
    run_cycle(second_pg, publish_to_redis=False)
    for table in ("computed_metrics", "nodes"):
        key = COMPARED_TABLES[table]
        pd.testing.assert_frame_equal(
            published_table(pg_target, table, key),
            published_table(second_pg, table, key),
            check_dtype=False,
            obj=table,
        )


def test_bad_source_fails_the_cycle_with_one_line_and_stores_nothing(duckdb_target, tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("timestamp,node_id,flow_rate\n2025-01-01T00:00:00Z,N1,abc\n")
    env = cli_env(duckdb_target, None, tmp_path / "dbt-sub")
    result = subprocess.run(  # noqa: S603 - our console script
        [
            sys.executable,
            "-m",
            "flows.cli",
            "cycle",
            "--source",
            str(bad),
            "--no-publish",
            "--target",
            "duckdb",
        ],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 1
    lines = [line for line in result.stderr.splitlines() if line.startswith("water: error:")]
    assert len(lines) == 1 and "row 1, column flow_rate" in lines[0] and "step load" in lines[0]
    with open_warehouse(duckdb_target) as wh:
        assert wh.scalar("select count(*) from raw.sensor_readings") == 0
        assert read_watermark(wh) is None
        assert wh.scalar("select status from water_infrastructure.processing_jobs") == "failed"


# A `water` process whose install is broken: importing the module named first on the command
# line (or any of its submodules) raises ImportError, as a missing or corrupt package would.
BROKEN_INSTALL = """
import sys
from importlib.abc import MetaPathFinder

broken = sys.argv.pop(1)


class BrokenInstall(MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == broken or name.startswith(broken + "."):
            raise ImportError(f"No module named {name!r} (injected: broken install)")
        return None


sys.meta_path.insert(0, BrokenInstall())
from flows.cli.main import main

sys.argv[0] = "water"
main()
"""


@pytest.mark.parametrize(
    ("broken", "failed_step"),
    [
        ("ml.scoring", None),  # the scoring step's module: no run starts
        ("expectations.gate", None),  # the gates' module: no run starts
        ("great_expectations", "raw_gate"),  # the GX runtime, imported when the gate runs
    ],
)
def test_a_broken_install_fails_the_cycle_and_publishes_nothing(
    duckdb_target, tmp_path, redis_server, broken, failed_step
):
    """Fail closed: a gate or the scoring that cannot import fails the cycle; nothing is
    published, the watermark stays, no job completes (they used to be skipped)."""
    readings = tmp_path / "readings.csv"
    readings.write_text(
        "timestamp,node_id,flow_rate,pressure\n"
        "2025-01-01T00:00:00Z,N1,12.5,3.1\n"
        "2025-01-01T00:05:00Z,N1,12.7,3.0\n"
    )
    env = cli_env(duckdb_target, redis_server.url, tmp_path / "dbt-sub")
    result = subprocess.run(  # noqa: S603 - our console script, under an injected fault
        [sys.executable, "-c", BROKEN_INSTALL, broken, "cycle", "--source", str(readings)],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 1, result.stdout + result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("water: error:")]
    assert len(lines) == 1 and broken in lines[0] and "injected: broken install" in lines[0]
    if failed_step:
        assert f"step {failed_step}" in lines[0]
    assert redis_server.client().keys("*") == []
    with open_warehouse(duckdb_target) as wh:
        started = wh.relation_exists("water_infrastructure", "processing_jobs")
        assert started == bool(failed_step)  # an import-time failure starts no run at all
        if started:
            assert read_watermark(wh) is None
            jobs = wh.query("select status from water_infrastructure.processing_jobs")
            assert [r[0] for r in jobs] == ["failed"]
