"""Liveness, readiness and Prometheus metrics (unauthenticated, for probes and scrapers)."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.concurrency import run_in_threadpool

from api import platform
from api.store import open_readonly
from flows.kernel.warehouse import WarehouseError

log = logging.getLogger(__name__)
router = APIRouter(tags=["operations"])


@router.get("/health", summary="Liveness: the process answers")
async def health() -> dict[str, str]:
    return {"status": "alive"}


def _database_reachable(target) -> bool:
    try:
        with open_readonly(target) as wh:
            wh.scalar("select 1")
        return True
    except WarehouseError as exc:
        log.warning("readiness: database unreachable: %s", exc)
        return False


@router.get(
    "/ready",
    summary="Readiness: the database and Redis are reachable",
    responses={503: {"description": "A dependency is unreachable."}},
)
async def ready(request: Request) -> Any:
    state = request.app.state
    database = await run_in_threadpool(_database_reachable, state.settings.target)
    redis = await state.cache.ping() if state.cache.configured else None
    ok = database and redis is not False
    body = {
        "status": "ready" if ok else "not_ready",
        "database": database,
        "redis": "not configured" if redis is None else redis,
    }
    return JSONResponse(body, status_code=200 if ok else 503)


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
async def metrics(request: Request) -> Response:
    state = request.app.state
    if state.metrics.platform.due():
        state.metrics.platform.update(await platform.collect(state))
    return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)
