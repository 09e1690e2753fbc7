"""The platform's state as /api/v1/status and /metrics report it.

One gathering step reads the jobs table, node freshness, active models and recent anomaly
counts on one short-lived read-only connection, plus the Redis snapshot marker. Either side may
be down: what could not be read is reported as unreachable, never guessed.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from starlette.concurrency import run_in_threadpool

from api import models_registry, queries
from api.cache import CacheUnavailable
from api.metrics import PlatformState
from api.store import ReadOnlyWarehouse, open_readonly
from api.trigger import cycle_lock_held
from flows.kernel.contracts import NODES_KEY
from flows.kernel.jsonable import now_utc, parse_iso
from flows.kernel.warehouse import WarehouseError, is_duckdb_busy
from flows.pipeline.lock import LOCK_FOR_JOB, lock_holder_note

log = logging.getLogger(__name__)

CYCLE_JOB_TYPE = "cycle"  # flows.pipeline.jobs.JOB_TYPES


@dataclass
class DatabaseView:
    last_cycle: dict[str, Any] | None = None
    last_success: dict[str, Any] | None = None
    last_publish: dict[str, Any] | None = None  # the `publish` summary of the latest cycle with one
    running: dict[str, Any] | None = None
    freshness: list[dict[str, Any]] | None = None
    active_models: list[dict[str, Any]] = field(default_factory=list)
    anomalies_24h: dict[str, int] | None = None


@dataclass
class PlatformView:
    checked_at: datetime
    database_up: bool
    database_detail: str | None
    db: DatabaseView
    cache_configured: bool
    cache_up: bool
    cache_detail: str | None
    snapshot: dict[str, Any] | None
    cached_nodes: list[dict[str, Any]] | None


def running_cycle(wh: ReadOnlyWarehouse, target) -> dict[str, Any] | None:
    """The cycle holding the run lock, if any. A `running` row whose lock is free belongs to a
    process that died (flows.pipeline.jobs marks it failed on the next run), so the lock decides."""
    if not cycle_lock_held(target):
        return None
    jobs = queries.recent_jobs(wh, CYCLE_JOB_TYPE, limit=1, status="running")
    if jobs:
        return jobs[0]
    # DuckDB readers see the snapshot of the last finished run; the lock file names the job.
    note = lock_holder_note(target, LOCK_FOR_JOB[CYCLE_JOB_TYPE]) or {}
    return {
        "job_id": note.get("job_id") or "unknown",
        "job_type": CYCLE_JOB_TYPE,
        "status": "running",
    }


def _read_database(wh: ReadOnlyWarehouse, target, now: datetime) -> DatabaseView:
    view = DatabaseView()
    finished = [
        j for j in queries.recent_jobs(wh, CYCLE_JOB_TYPE, limit=10) if j.get("status") != "running"
    ]
    view.last_cycle = finished[0] if finished else None
    view.last_publish = next(
        (s["publish"] for s in map(_summary, finished) if isinstance(s.get("publish"), dict)), None
    )
    successes = queries.recent_jobs(wh, CYCLE_JOB_TYPE, limit=1, status="completed")
    view.last_success = successes[0] if successes else None
    view.running = running_cycle(wh, target)
    view.freshness = queries.freshness(wh)
    view.active_models = models_registry.active_models(wh)
    view.anomalies_24h = queries.anomaly_counts_by_severity(wh, now - timedelta(hours=24))
    return view


async def gather(state) -> PlatformView:
    now = now_utc()
    target = state.settings.target

    def read() -> DatabaseView:
        with open_readonly(target) as wh:
            return _read_database(wh, target, now)

    database_up, database_detail, db = True, None, DatabaseView()
    try:
        db = await run_in_threadpool(read)
    except WarehouseError as exc:
        if (
            target.type == "duckdb"
            and is_duckdb_busy(exc)
            and await run_in_threadpool(cycle_lock_held, target)
        ):
            # One process at a time may open a DuckDB file: a running cycle has it.
            database_detail = "busy: a running cycle holds the DuckDB file"
            db.running = {"job_id": "unknown", "job_type": CYCLE_JOB_TYPE, "status": "running"}
        else:
            log.warning("status: database unreachable: %s", exc)
            database_up, database_detail = False, "unreachable"

    cache = state.cache
    snapshot, cached_nodes, cache_up, cache_detail = None, None, False, None
    if not cache.configured:
        cache_detail = "not configured (REDIS_URL)"
    else:
        try:
            snap, (cached_nodes,) = await cache.get_json(NODES_KEY)
            snapshot, cache_up = snap.info, True
        except CacheUnavailable as exc:
            cache_up = await cache.ping()
            cache_detail = str(exc) if not cache_up else "reachable, but no snapshot published"
    return PlatformView(
        checked_at=now,
        database_up=database_up,
        database_detail=database_detail,
        db=db,
        cache_configured=cache.configured,
        cache_up=cache_up,
        cache_detail=cache_detail,
        snapshot=snapshot,
        cached_nodes=cached_nodes,
    )


def to_metrics(view: PlatformView) -> PlatformState:
    db = view.db
    state = PlatformState(database_up=view.database_up, cache_up=view.cache_up)
    if db.last_success is not None:
        done = parse_iso(db.last_success.get("completed_at"))
        state.last_success_at = done.timestamp() if done else None
    if db.last_cycle is not None:
        job = db.last_cycle
        state.last_cycle_status = job.get("status")
        state.last_cycle_duration_s = _float(job.get("duration_seconds"))
        state.step_seconds = step_seconds(job)
        for name, step in _steps(job).items():
            state.step_status[name] = str(step.get("status"))
            if name.endswith("_gate"):
                state.gate_failures[name.removesuffix("_gate")] = len(
                    step.get("critical_failures") or []
                )
        state.rows_processed = _int(job.get("rows_in"))
        state.rows_rejected = _int(job.get("rows_rejected"))
    state.cycle_running = db.running is not None
    if db.last_publish is not None:
        state.last_publish_status = str(db.last_publish.get("status"))
    state.anomalies_24h = dict(db.anomalies_24h or {})
    for model in db.active_models:
        for metric, value in (model.get("scores") or {}).items():
            number = _float(value)
            if number is not None:
                labels = {
                    "model_id": str(model.get("model_id")),
                    "model_type": str(model.get("model_type") or "unknown"),
                    "metric": str(metric),
                    "basis": str(model.get("scores_basis") or "unknown"),
                }
                state.model_scores.append((labels, number))
    published = parse_iso((view.snapshot or {}).get("published_at"))
    if published is not None:
        state.cache_age_s = (view.checked_at - published).total_seconds()
    return state


def step_seconds(job: dict[str, Any]) -> dict[str, float]:
    """Seconds per step from the job's result_summary (`steps: {name: {seconds, status}}`)."""
    out = {}
    for name, step in _steps(job).items():
        seconds = _float(step.get("seconds"))
        if seconds is not None:
            out[name] = seconds
    return out


def _summary(job: dict[str, Any]) -> dict[str, Any]:
    summary = job.get("result_summary")
    return summary if isinstance(summary, dict) else {}


def _steps(job: dict[str, Any]) -> dict[str, dict[str, Any]]:
    steps = _summary(job).get("steps")
    if not isinstance(steps, dict):
        return {}
    return {str(name): step for name, step in steps.items() if isinstance(step, dict)}


async def collect(state) -> PlatformState:
    return to_metrics(await gather(state))


def _float(value: Any) -> float | None:
    try:
        return float(value) if value is not None else None
    except (TypeError, ValueError):
        return None


def _int(value: Any) -> int | None:
    number = _float(value)
    return int(number) if number is not None else None
