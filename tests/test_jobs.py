"""processing_jobs, the run lock and the watermark, on real PostgreSQL and DuckDB.

No dbt here: these exercise the bookkeeping directly, including a real SIGKILL of a process
that holds the lock and a `running` job row.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from datetime import UTC, datetime, timedelta

import pytest

from flows.kernel.settings import PROJECT_ROOT
from flows.kernel.warehouse import open_warehouse
from flows.pipeline.jobs import (
    ensure_job_tables,
    fail_abandoned_jobs,
    finish_job,
    record_skipped,
    running_jobs,
    start_job,
)
from flows.pipeline.lock import RunLock, lock_holder_note, lock_is_free
from flows.pipeline.watermark import read_watermark
from tests.orch_support import wait_for

SEED_RECENT_JOBS = """
SELECT
  job_id,
  job_type,
  status,
  started_at,
  completed_at,
  duration_seconds,
  result_summary
FROM water_infrastructure.processing_jobs
WHERE created_at > NOW() - INTERVAL '24 hours'
ORDER BY created_at DESC;
"""


def _tables(target):
    with open_warehouse(target) as wh:
        ensure_job_tables(wh)


def test_completed_job_advances_the_watermark_a_failed_one_does_not(target):
    _tables(target)
    first = datetime(2025, 1, 1, 12, tzinfo=UTC)
    with open_warehouse(target) as wh:
        job = start_job(wh, "cycle", "test")
        finish_job(wh, job, "completed", rows_in=10, rows_rejected=1, watermark=first)
        assert read_watermark(wh) == first

        failed = start_job(wh, "cycle", "test")
        finish_job(wh, failed, "failed", error_message="boom", watermark=first + timedelta(hours=1))
        assert read_watermark(wh) == first, "a failed job must leave the watermark alone"

        older = start_job(wh, "cycle", "test")
        finish_job(wh, older, "completed", watermark=first - timedelta(hours=1))
        assert read_watermark(wh) == first, "the watermark never moves backwards"

        rows = wh.query(
            "select status, rows_in, rows_rejected, error_message, duration_seconds >= 0,"
            " completed_at >= started_at from water_infrastructure.processing_jobs order by created_at"
        )
    assert [r[0] for r in rows] == ["completed", "failed", "completed"]
    assert rows[0][1:3] == (10, 1)
    assert rows[1][3] == "boom"
    assert all(r[4] and r[5] for r in rows)


def test_seed_monitoring_query_runs_unmodified_on_postgres(pg_target):
    _tables(pg_target)
    with open_warehouse(pg_target) as wh:
        job = start_job(wh, "cycle", "test")
        time.sleep(0.2)
        finish_job(wh, job, "completed", rows_in=5)
        skipped = record_skipped(wh, "cycle", "test", "another run holds the lock")
        rows = wh.query(SEED_RECENT_JOBS)
    assert [str(r[0]) for r in rows] == [skipped, job.job_id]
    by_id = {str(r[0]): r for r in rows}
    _, job_type, status, started, completed, duration, summary = by_id[job.job_id]
    assert (job_type, status) == ("cycle", "completed")
    # duration_seconds is the real elapsed time, consistent with the timestamps
    assert duration >= 0.2
    assert abs((completed - started).total_seconds() - duration) < 0.5
    assert isinstance(summary, dict)
    assert by_id[skipped][2] == "skipped"


def test_lock_excludes_a_second_holder_and_releases(target):
    _tables(target)
    first = RunLock(target, "warehouse")
    second = RunLock(target, "warehouse")
    try:
        assert first.acquire()
        assert not second.acquire(wait_s=0.3)
        assert not lock_is_free(target, "warehouse")
        first.release()
        assert second.acquire()
    finally:
        first.release()
        second.release()
    assert lock_is_free(target, "warehouse")


def test_lock_note_is_visible_to_other_processes_on_duckdb(duckdb_target):
    _tables(duckdb_target)
    with RunLock(duckdb_target, "warehouse") as lock:
        assert lock.acquire()
        lock.note(job_id="abc", step="dbt_build")
        note = lock_holder_note(duckdb_target, "warehouse")
    assert note["step"] == "dbt_build" and note["job_id"] == "abc"
    assert lock_holder_note(duckdb_target, "warehouse") is None


_HOLDER = textwrap.dedent(
    """
    import json, sys, time
    from flows.kernel.settings import Target
    from flows.pipeline.run import Run
    from pathlib import Path
    spec = json.loads(sys.argv[1])
    target = Target(spec["name"], duckdb_path=Path(spec["path"]) if spec["path"] else None,
                    pg_dsn_parts=spec["pg"])
    run = Run(target, "cycle", None, "test-holder", None)
    assert run.begin()
    print(run.job.job_id, flush=True)
    time.sleep(600)
    """
)


def _spawn_holder(target) -> tuple[subprocess.Popen, str]:
    import json

    spec = json.dumps(
        {
            "name": target.name,
            "path": str(target.duckdb_path) if target.duckdb_path else None,
            "pg": target.pg_dsn_parts,
        }
    )
    process = subprocess.Popen(  # noqa: S603 - our own interpreter and script
        [sys.executable, "-c", _HOLDER, spec],
        cwd=PROJECT_ROOT,
        env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    line = process.stdout.readline().strip()
    if not line:
        process.kill()
        raise AssertionError(f"holder did not start: {process.stderr.read()[-2000:]}")
    return process, line


def test_a_killed_runs_job_is_marked_failed_at_the_next_start(target):
    from flows.pipeline.run import Run

    holder, job_id = _spawn_holder(target)
    try:
        # while the holder lives: its row is running and its lock is taken -> a trigger skips
        blocked = Run(target, "cycle", None, "test", None)
        assert not blocked.begin()
        assert blocked.result.status == "skipped"
        assert job_id in blocked.result.message
    finally:
        os.killpg(holder.pid, signal.SIGKILL)
        holder.wait()

    # the OS / server released the lock with the process; the row still says running
    wait_for(lambda: lock_is_free(target, "warehouse"), 30, "the lock to be released")
    with open_warehouse(target) as wh:
        assert [str(j["job_id"]) for j in running_jobs(wh, ["cycle"])] == [job_id]

    nxt = Run(target, "cycle", None, "test", None)
    assert nxt.begin()
    try:
        assert nxt.job.summary["marked_abandoned_jobs_failed"] == [job_id]
    finally:
        nxt.lock.release()
    with open_warehouse(target) as wh:
        status, error, completed = wh.query(
            "select status, error_message, completed_at from water_infrastructure.processing_jobs"
            " where cast(job_id as varchar) = %(j)s",
            {"j": job_id},
        )[0]
        skipped = wh.scalar(
            "select count(*) from water_infrastructure.processing_jobs where status = 'skipped'"
        )
    assert status == "failed" and completed is not None
    assert "abandoned" in error and nxt.job.job_id in error
    assert skipped == 1


def test_fail_abandoned_only_touches_the_given_types(target):
    _tables(target)
    with open_warehouse(target) as wh:
        cycle = start_job(wh, "cycle", "test")
        evaluation = start_job(wh, "evaluation", "test")
        assert fail_abandoned_jobs(wh, ["cycle", "backfill"], "me") == [cycle.job_id]
        assert [str(j["job_id"]) for j in running_jobs(wh, ["evaluation"])] == [evaluation.job_id]


def test_unknown_job_type_is_refused(duckdb_target):
    _tables(duckdb_target)
    with open_warehouse(duckdb_target) as wh, pytest.raises(ValueError, match="unknown job type"):
        start_job(wh, "cleanup", "test")
