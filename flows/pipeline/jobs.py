"""Job records kept in the target database (the run lock: lock.py; the watermark: watermark.py).

* `water_infrastructure.processing_jobs`: one row per cycle, backfill, evaluation and
  retraining (running -> completed | failed; `skipped` for a trigger that found another run
  holding the lock). The seed's monitoring queries run on it unmodified.
* `water_infrastructure.pipeline_state`: the cycle watermark, i.e. the newest raw `loaded_at`
  that a completed cycle (or backfill chunk) has carried through dbt and the gates. It moves
  forward only in the transaction that marks the job completed, so a failed or killed run
  leaves it where it was and the next run reprocesses from there.
* `water_infrastructure.backfill_chunks`: the day chunks a backfill has completed (resume).
* The run lock: a PostgreSQL session advisory lock, or an flock on a file beside the DuckDB
  file. The operating system / server drops it when the process dies (even on SIGKILL), so
  a job row still `running` while its lock is free belongs to a dead process: the next run
  that takes the lock marks it failed.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

from flows.kernel.contracts import FRESHNESS_LAG
from flows.kernel.jsonable import to_json
from flows.kernel.runtime import new_job_id, runner_id, utcnow
from flows.kernel.settings import PUBLISHED_SCHEMA, Target
from flows.kernel.warehouse import Warehouse, apply_ddl, in_list
from flows.pipeline.lock import LOCK_FOR_JOB, lock_is_free
from flows.pipeline.watermark import (
    METADATA_WATERMARK_KEY,
    advance_watermark,
    read_watermark,
    record_backfill_chunk,
)

JOB_TYPES = ("cycle", "backfill", "evaluation", "retraining", "backup", "restore")
JOB_STATUSES = ("running", "completed", "failed", "skipped")
_DDL = {
    "postgres": [
        f"create schema if not exists {PUBLISHED_SCHEMA}",
        f"""create table if not exists {PUBLISHED_SCHEMA}.processing_jobs (
            job_id uuid primary key,
            job_type text not null,
            job_name text,
            status text not null check (status in ('running', 'completed', 'failed', 'skipped')),
            triggered_by text,
            flow_run_id text,
            runner text,
            created_at timestamptz not null default now(),
            started_at timestamptz,
            completed_at timestamptz,
            duration_seconds double precision,
            data_start timestamptz,
            data_end timestamptz,
            rows_in bigint,
            rows_rejected bigint,
            result_summary jsonb,
            error_message text)""",
        f"""create index if not exists processing_jobs_created_at_idx
            on {PUBLISHED_SCHEMA}.processing_jobs (created_at desc)""",
        f"""create index if not exists processing_jobs_running_idx
            on {PUBLISHED_SCHEMA}.processing_jobs (job_type) where status = 'running'""",
        f"""create table if not exists {PUBLISHED_SCHEMA}.pipeline_state (
            state_key text primary key,
            watermark timestamptz,
            job_id uuid,
            updated_at timestamptz not null)""",
        f"""create table if not exists {PUBLISHED_SCHEMA}.backfill_chunks (
            backfill_key text not null,
            chunk_start date not null,
            chunk_end date not null,
            job_id uuid not null,
            rows_in bigint not null,
            completed_at timestamptz not null,
            primary key (backfill_key, chunk_start))""",
    ],
    "duckdb": [
        f"create schema if not exists {PUBLISHED_SCHEMA}",
        f"""create table if not exists {PUBLISHED_SCHEMA}.processing_jobs (
            job_id uuid primary key,
            job_type varchar not null,
            job_name varchar,
            status varchar not null check (status in ('running', 'completed', 'failed', 'skipped')),
            triggered_by varchar,
            flow_run_id varchar,
            runner varchar,
            created_at timestamptz not null default current_timestamp,
            started_at timestamptz,
            completed_at timestamptz,
            duration_seconds double,
            data_start timestamptz,
            data_end timestamptz,
            rows_in bigint,
            rows_rejected bigint,
            result_summary json,
            error_message varchar)""",
        f"""create table if not exists {PUBLISHED_SCHEMA}.pipeline_state (
            state_key varchar primary key,
            watermark timestamptz,
            job_id uuid,
            updated_at timestamptz not null)""",
        f"""create table if not exists {PUBLISHED_SCHEMA}.backfill_chunks (
            backfill_key varchar not null,
            chunk_start date not null,
            chunk_end date not null,
            job_id uuid not null,
            rows_in bigint not null,
            completed_at timestamptz not null,
            primary key (backfill_key, chunk_start))""",
    ],
}


def ensure_job_tables(wh: Warehouse) -> None:
    """Create the bookkeeping tables if missing (idempotent)."""
    apply_ddl(wh, _DDL, "water.jobs_ddl")


# --------------------------------------------------------------------------- job rows


@dataclass
class Job:
    job_id: str
    job_type: str
    started_at: datetime
    triggered_by: str
    flow_run_id: str | None = None
    summary: dict[str, Any] = field(default_factory=dict)
    _t0: float = field(default_factory=time.perf_counter)

    @property
    def elapsed_s(self) -> float:
        return time.perf_counter() - self._t0


def start_job(
    wh: Warehouse,
    job_type: str,
    triggered_by: str,
    flow_run_id: str | None = None,
    job_name: str | None = None,
    data_start: datetime | None = None,
    data_end: datetime | None = None,
    job_id: str | None = None,
    started_at: datetime | None = None,
) -> Job:
    if job_type not in JOB_TYPES:
        raise ValueError(f"unknown job type {job_type!r}; expected one of {', '.join(JOB_TYPES)}")
    job = Job(job_id or new_job_id(), job_type, started_at or utcnow(), triggered_by, flow_run_id)
    wh.execute(
        f"insert into {PUBLISHED_SCHEMA}.processing_jobs (job_id, job_type, job_name, status,"
        " triggered_by, flow_run_id, runner, created_at, started_at, data_start, data_end, result_summary)"
        " values (%(job_id)s, %(job_type)s, %(job_name)s, 'running', %(triggered_by)s, %(flow_run_id)s,"
        " %(runner)s, %(started_at)s, %(started_at)s, %(data_start)s, %(data_end)s, %(summary)s)",
        {
            "job_id": job.job_id,
            "job_type": job_type,
            "job_name": job_name,
            "triggered_by": triggered_by,
            "flow_run_id": flow_run_id,
            "runner": runner_id(),
            "started_at": job.started_at,
            "data_start": data_start,
            "data_end": data_end,
            "summary": to_json({}),
        },
    )
    return job


def note_progress(wh: Warehouse, job: Job, step: str) -> None:
    """Make the current step visible in the job row while the job runs."""
    job.summary["current_step"] = step
    wh.execute(
        f"update {PUBLISHED_SCHEMA}.processing_jobs set result_summary = %(summary)s"
        " where job_id = %(job_id)s and status = 'running'",
        {"summary": to_json(job.summary), "job_id": job.job_id},
    )


def finish_job(
    wh: Warehouse,
    job: Job,
    status: str,
    *,
    error_message: str | None = None,
    rows_in: int | None = None,
    rows_rejected: int | None = None,
    data_start: datetime | None = None,
    data_end: datetime | None = None,
    watermark: datetime | None = None,
    metadata_watermark: datetime | None = None,
    backfill_chunk: tuple[str, date, date, int] | None = None,
) -> None:
    """Close the job row; advance the watermarks (and record a chunk) in the same transaction."""
    if status not in ("completed", "failed"):
        raise ValueError(f"a job finishes completed or failed, not {status!r}")
    job.summary.pop("current_step", None)
    with wh.transaction():
        _close_row(wh, job, status, error_message, rows_in, rows_rejected, data_start, data_end)
        if status == "completed" and watermark is not None:
            advance_watermark(wh, watermark, job.job_id)
        if status == "completed" and metadata_watermark is not None:
            advance_watermark(wh, metadata_watermark, job.job_id, METADATA_WATERMARK_KEY)
        if status == "completed" and backfill_chunk is not None:
            record_backfill_chunk(wh, job.job_id, *backfill_chunk)


def checkpoint_chunk(
    wh: Warehouse,
    job: Job,
    watermark: datetime | None,
    chunk: tuple[str, date, date, int],
    metadata_watermark: datetime | None = None,
) -> None:
    """A backfill chunk is done: remember it and move the watermarks, atomically."""
    with wh.transaction():
        if watermark is not None:
            advance_watermark(wh, watermark, job.job_id)
        if metadata_watermark is not None:
            advance_watermark(wh, metadata_watermark, job.job_id, METADATA_WATERMARK_KEY)
        record_backfill_chunk(wh, job.job_id, *chunk)
        wh.execute(
            f"update {PUBLISHED_SCHEMA}.processing_jobs set result_summary = %(summary)s"
            " where job_id = %(job_id)s",
            {"summary": to_json(job.summary), "job_id": job.job_id},
        )


def _close_row(wh, job, status, error_message, rows_in, rows_rejected, data_start, data_end):
    completed_at = utcnow()
    wh.execute(
        f"update {PUBLISHED_SCHEMA}.processing_jobs set status = %(status)s,"
        " completed_at = %(completed_at)s, duration_seconds = %(duration)s,"
        " result_summary = %(summary)s, error_message = %(error)s,"
        " rows_in = coalesce(%(rows_in)s, rows_in), rows_rejected = coalesce(%(rows_rejected)s, rows_rejected),"
        " data_start = coalesce(%(data_start)s, data_start), data_end = coalesce(%(data_end)s, data_end)"
        " where job_id = %(job_id)s",
        {
            "status": status,
            "completed_at": completed_at,
            "duration": round(job.elapsed_s, 3),
            "summary": to_json(job.summary),
            "error": error_message,
            "rows_in": rows_in,
            "rows_rejected": rows_rejected,
            "data_start": data_start,
            "data_end": data_end,
            "job_id": job.job_id,
        },
    )


def complete_restored_job(wh: Warehouse, job_id: str, summary: dict[str, Any]) -> None:
    """A backup's row as restored from its own dump (`running`), closed as it really ended."""
    wh.execute(
        f"update {PUBLISHED_SCHEMA}.processing_jobs set status = 'completed',"
        " completed_at = coalesce(completed_at, %(now)s), result_summary = %(summary)s"
        " where job_id = %(job_id)s and status = 'running'",
        {"now": utcnow(), "summary": to_json(summary), "job_id": job_id},
    )


def record_skipped(
    wh: Warehouse,
    job_type: str,
    triggered_by: str,
    reason: str,
    flow_run_id: str | None = None,
    job_id: str | None = None,
) -> str:
    """A trigger that found another run holding the lock: one row, status skipped."""
    job_id = job_id or new_job_id()
    now = utcnow()
    wh.execute(
        f"insert into {PUBLISHED_SCHEMA}.processing_jobs (job_id, job_type, status, triggered_by,"
        " flow_run_id, runner, created_at, started_at, completed_at, duration_seconds, result_summary,"
        " error_message) values (%(job_id)s, %(job_type)s, 'skipped', %(triggered_by)s, %(flow_run_id)s,"
        " %(runner)s, %(now)s, %(now)s, %(now)s, 0, %(summary)s, %(reason)s)",
        {
            "job_id": job_id,
            "job_type": job_type,
            "triggered_by": triggered_by,
            "flow_run_id": flow_run_id,
            "runner": runner_id(),
            "now": now,
            "summary": to_json({"skipped": reason}),
            "reason": reason,
        },
    )
    return job_id


def running_jobs(wh: Warehouse, job_types: Sequence[str]) -> list[dict[str, Any]]:
    rows = wh.query(
        f"select job_id, job_type, started_at, runner, triggered_by from {PUBLISHED_SCHEMA}.processing_jobs"
        f" where status = 'running' and {in_list('job_type', 'types', wh.type)} order by started_at",
        {"types": list(job_types)},
    )
    keys = ("job_id", "job_type", "started_at", "runner", "triggered_by")
    return [dict(zip(keys, row, strict=True)) for row in rows]


def fail_abandoned_jobs(wh: Warehouse, job_types: Sequence[str], found_by: str) -> list[str]:
    """Mark `running` rows of these types failed. Call only while holding their lock:
    then no live process can own them (a killed process released the lock with its life)."""
    now = utcnow()
    rows = wh.query(
        f"update {PUBLISHED_SCHEMA}.processing_jobs set status = 'failed', completed_at = %(now)s,"
        " duration_seconds = "
        + _seconds_between("started_at", "%(now)s", wh.type)
        + ", error_message = %(message)s"
        f" where status = 'running' and {in_list('job_type', 'types', wh.type)} returning job_id",
        {
            "now": now,
            "types": list(job_types),
            "message": (
                "abandoned: the process ended without finishing (killed, crashed or lost its host);"
                f" found still running by job {found_by} at {now.isoformat(timespec='seconds')}"
            ),
        },
    )
    return [str(r[0]) for r in rows]


def _seconds_between(start: str, end: str, engine: str) -> str:
    if engine == "postgres":
        return f"extract(epoch from ({end}::timestamptz - {start}))"
    return f"epoch({end}::timestamptz) - epoch({start})"


# --------------------------------------------------------------------------- reading jobs


JOB_COLUMNS = (
    "job_id",
    "job_type",
    "status",
    "triggered_by",
    "started_at",
    "completed_at",
    "duration_seconds",
    "rows_in",
    "rows_rejected",
    "data_start",
    "data_end",
    "error_message",
    "result_summary",
    "flow_run_id",
)


def recent_jobs(wh: Warehouse, limit: int = 10) -> list[dict[str, Any]]:
    if not wh.relation_exists(PUBLISHED_SCHEMA, "processing_jobs"):
        return []
    rows = wh.query(
        f"select {', '.join(JOB_COLUMNS)} from {PUBLISHED_SCHEMA}.processing_jobs"
        " order by created_at desc limit %(n)s",
        {"n": limit},
    )
    jobs = []
    for row in rows:
        job = dict(zip(JOB_COLUMNS, row, strict=True))
        summary = job["result_summary"]
        if isinstance(summary, str):
            job["result_summary"] = json.loads(summary) if summary else {}
        job["job_id"] = str(job["job_id"])
        jobs.append(job)
    return jobs


# --------------------------------------------------------------------------- `water status`


@dataclass
class JobsSummary:
    recent: list[dict[str, Any]]
    watermark: datetime | None
    running: list[dict[str, Any]]
    running_alive: bool
    last_publish: dict[str, Any] | None
    stale_nodes: int | None  # nodes whose newest window ended more than FRESHNESS_LAG ago


def jobs_summary(wh: Warehouse, target: Target, limit: int = 5) -> JobsSummary | None:
    """The jobs section of `water status` (None before the first run)."""
    if not wh.relation_exists(PUBLISHED_SCHEMA, "processing_jobs"):
        return None
    recent = recent_jobs(wh, limit)
    running = running_jobs(wh, JOB_TYPES)
    alive = bool(running) and not all(
        lock_is_free(target, LOCK_FOR_JOB[job["job_type"]]) for job in running
    )
    publish_rows = wh.query(
        f"select result_summary from {PUBLISHED_SCHEMA}.processing_jobs"
        " where job_type in ('cycle', 'backfill') and status = 'completed'"
        " order by completed_at desc limit 1"
    )
    last_publish = None
    if publish_rows:
        summary = publish_rows[0][0]
        summary = json.loads(summary) if isinstance(summary, str) else (summary or {})
        last_publish = summary.get("publish")
    stale = None
    if wh.relation_exists(PUBLISHED_SCHEMA, "computed_metrics"):
        # The seed's data-freshness query, counted.
        stale = wh.scalar(
            f"select count(*) from (select node_id from {PUBLISHED_SCHEMA}.computed_metrics"
            " group by node_id having now() - max(window_end)"
            f" > interval '{int(FRESHNESS_LAG.total_seconds())} seconds') as lagging"
        )
    return JobsSummary(recent, read_watermark(wh), running, alive, last_publish, stale)


def format_jobs(summary: JobsSummary | None) -> list[str]:
    if summary is None:
        return ["jobs              none yet: run `water cycle`"]
    lines = [
        f"cycle watermark   {summary.watermark or '-'} (raw loaded_at carried by completed runs)"
    ]
    for job in summary.running:
        state = (
            "running"
            if summary.running_alive
            else "abandoned: its process is gone; the next run marks it failed"
        )
        lines.append(
            f"running           {job['job_type']} {job['job_id']} since {job['started_at']:%Y-%m-%d %H:%M:%S} ({state})"
        )
    if summary.last_publish:
        publish = summary.last_publish
        detail = (
            f"{publish.get('keys')} key(s), {publish.get('bytes', 0) / 1e6:.1f} MB"
            if publish.get("status") == "published"
            else publish.get("error") or publish.get("reason") or ""
        )
        lines.append(f"last publish      {publish.get('status')} {detail}")
    if summary.stale_nodes:
        lines.append(
            f"freshness         {summary.stale_nodes} node(s) without a window in the last hour"
        )
    lines.append("recent jobs")
    for job in summary.recent:
        duration = f"{job['duration_seconds']:.1f}s" if job["duration_seconds"] is not None else "-"
        rows = f"{job['rows_in']:,} in" if job["rows_in"] is not None else ""
        error = f"  {job['error_message'][:90]}" if job["error_message"] else ""
        lines.append(
            f"  {job['started_at']:%Y-%m-%d %H:%M:%S}  {job['job_type']:<10} {job['status']:<9} {duration:>8}  {rows}{error}"
        )
    return lines
