"""`POST /api/v1/processing/trigger` and `GET /api/v1/jobs/{job_id}`."""

from __future__ import annotations

import logging
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Path, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from api import queries
from api.auth import Principal, require_trigger
from api.common import PROBLEMS, DatabaseUnavailable, in_database
from api.ratelimit import SharedLimiter
from api.schemas import ConflictResponse, Job, ProblemResponse, TriggerResponse
from api.trigger import TriggerFailed, cycle_lock_held
from flows.kernel.warehouse import WarehouseError

log = logging.getLogger(__name__)

trigger_router = APIRouter(tags=["processing"])
jobs_router = APIRouter(tags=["processing"])


async def _running_job_id(request: Request) -> str | None:
    state = request.app.state
    launcher = state.launcher
    own = launcher.busy_job()
    if own is not None:
        return own
    if launcher.mode == "prefect":
        try:
            flow_run = await launcher.busy_flow_run()
        except Exception as exc:  # noqa: BLE001 - any Prefect client failure means "cannot start"
            log.warning(
                "prefect unreachable while checking for running cycles: %s", type(exc).__name__
            )
            raise TriggerFailed("prefect unreachable") from exc
        if flow_run is not None:
            return flow_run
    target = state.settings.target
    try:
        held = await run_in_threadpool(cycle_lock_held, target)
    except WarehouseError as exc:
        log.warning("cannot check the cycle lock: %s", exc)
        raise DatabaseUnavailable() from None
    if not held:
        return None
    try:
        jobs = await in_database(request, queries.recent_jobs, "cycle", 1, "running")
    except DatabaseUnavailable:  # e.g. the running cycle holds the DuckDB file
        return "unknown"
    return jobs[0]["job_id"] if jobs else "unknown"


@trigger_router.post(
    "/processing/trigger",
    status_code=202,
    response_model=TriggerResponse,
    responses={
        **PROBLEMS,
        409: {"model": ConflictResponse, "description": "A cycle is already running."},
        429: {"model": ProblemResponse, "description": "Too many triggers; see Retry-After."},
    },
)
async def trigger_cycle(
    request: Request, principal: Annotated[Principal, Depends(require_trigger)]
) -> Any:
    """Start a processing cycle now. Returns the job id at once; follow it at `status_url`."""
    state = request.app.state
    limiter: SharedLimiter = state.trigger_limiter
    wait = await run_in_threadpool(limiter.acquire, principal.subject)
    if wait is not None:
        state.metrics.triggers.labels("rate_limited").inc()
        return JSONResponse(
            {"detail": f"trigger rate limit {limiter.limit.describe()} reached"},
            status_code=429,
            headers={"Retry-After": limiter.retry_after_header(wait)},
        )
    launcher = state.launcher
    # One trigger decision at a time in this process: check-then-start must not interleave.
    async with state.trigger_lock:
        try:
            running = await _running_job_id(request)
            if running is not None:
                state.metrics.triggers.labels("conflict").inc()
                return JSONResponse(
                    {"detail": "a processing cycle is already running", "running_job_id": running},
                    status_code=409,
                )
            triggered_by = f"api:{principal.subject}"
            if launcher.mode == "prefect":
                launch = await launcher.launch(triggered_by)
            else:
                launch = await run_in_threadpool(launcher.launch, triggered_by)
        except TriggerFailed as exc:
            log.error("trigger failed: %s", exc)
            state.metrics.triggers.labels("failed").inc()
            raise HTTPException(
                status_code=503, detail="the cycle could not be started; see the API log"
            ) from None
    state.metrics.triggers.labels("accepted").inc()
    return {
        "job_id": launch.job_id,
        "status": "accepted",
        "mode": launcher.mode,
        "flow_run_id": launch.flow_run_id,
        "status_url": f"/api/v1/jobs/{launch.job_id}",
    }


@jobs_router.get(
    "/jobs/{job_id}",
    response_model=Job,
    responses={**PROBLEMS, 404: {"model": ProblemResponse, "description": "Unknown job."}},
)
async def get_job(
    request: Request,
    job_id: Annotated[str, Path(min_length=1, max_length=64, pattern=r"^[0-9A-Za-z-]+$")],
) -> Any:
    """A processing job by its id (or its Prefect flow run id): status, timings, row counts, result."""
    launcher = request.app.state.launcher
    try:
        row = await in_database(request, queries.job, job_id)
    except DatabaseUnavailable:
        # A DuckDB file is closed to readers while a cycle writes it: this API's own runs
        # can still be reported from their process.
        if launcher.mode == "local" and launcher.pending_job(job_id) is not None:
            return launcher.pending_job(job_id)
        raise
    if row is not None:
        return row
    pending = launcher.pending_job(job_id)
    if launcher.mode == "prefect":
        try:
            pending = await pending
        except Exception as exc:  # noqa: BLE001 - Prefect down: the job is simply not known here
            log.warning("prefect unreachable while reading job %s: %s", job_id, type(exc).__name__)
            pending = None
    if pending is None:
        raise HTTPException(status_code=404, detail=f"unknown job {job_id!r}")
    return pending
