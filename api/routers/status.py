"""`GET /api/v1/status` and `GET /api/v1/models/status`."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from api import models_registry, platform
from api.common import PROBLEMS, in_database
from api.schemas import ModelsResponse, StatusResponse
from flows.kernel.jsonable import iso_utc, parse_iso

router = APIRouter(tags=["status"])


def _freshness(view: platform.PlatformView, stale_after_s: int) -> dict[str, Any]:
    """Per node lag from the database, or from the cached node list when the database is down."""
    rows = view.db.freshness
    if rows is None and view.cached_nodes is not None:
        rows = [
            {"node_id": n["node_id"], "last_reading_at": n.get("last_reading_at")}
            for n in view.cached_nodes
        ]
    nodes, latest = [], None
    for row in rows or []:
        last = parse_iso(row.get("last_reading_at"))
        lag = (view.checked_at - last).total_seconds() if last else None
        nodes.append(
            {
                "node_id": row["node_id"],
                "last_reading_at": row.get("last_reading_at"),
                "lag_seconds": lag,
                "is_stale": lag is None or lag > stale_after_s,
            }
        )
        if last is not None and (latest is None or last > latest):
            latest = last
    return {
        "latest_reading_at": iso_utc(latest) if latest else None,
        "stale_after_seconds": stale_after_s,
        "stale_nodes": sum(n["is_stale"] for n in nodes),
        "nodes": nodes,
    }


def assess(view: platform.PlatformView, stale_after_s: int) -> dict[str, Any]:
    """Status and its reasons. Never a blanket `ok`: each check that fails is named."""
    degraded: list[str] = []
    stale: list[str] = []
    db = view.db
    if not view.database_up:
        degraded.append("database unreachable")
    if view.cache_configured and not view.cache_up:
        degraded.append(f"redis: {view.cache_detail}")
    elif view.cache_configured and view.snapshot is None:
        degraded.append("redis holds no published snapshot: reads come from the database")
    elif not view.cache_configured:
        degraded.append("redis not configured: reads come from the database")
    if view.database_up and db.last_cycle is None and db.running is None:
        stale.append("no processing cycle has been recorded")
    if db.last_cycle is not None and db.last_cycle.get("status") == "failed":
        degraded.append(f"last cycle {db.last_cycle.get('job_id')} failed")
    last_success = parse_iso((db.last_success or {}).get("completed_at"))
    if view.database_up and db.last_cycle is not None:
        if last_success is None:
            stale.append("no cycle has completed successfully")
        elif (view.checked_at - last_success).total_seconds() > stale_after_s:
            stale.append(f"last successful cycle finished more than {stale_after_s}s ago")
    published = parse_iso((view.snapshot or {}).get("published_at"))
    if published is not None and (view.checked_at - published).total_seconds() > stale_after_s:
        stale.append(f"redis snapshot published more than {stale_after_s}s ago")

    freshness = _freshness(view, stale_after_s)
    latest = parse_iso(freshness["latest_reading_at"])
    if freshness["nodes"] and (
        latest is None or (view.checked_at - latest).total_seconds() > stale_after_s
    ):
        stale.append(f"no node has reported in the last {stale_after_s}s")
    elif freshness["stale_nodes"]:
        degraded.append(
            f"{freshness['stale_nodes']} of {len(freshness['nodes'])} node(s) have not reported in {stale_after_s}s"
        )

    status = "degraded" if degraded else "stale" if stale else "ok"
    return {
        "status": status,
        "is_degraded": bool(degraded),
        "is_stale": bool(stale),
        "reasons": degraded + stale,
        "data_freshness": freshness,
    }


@router.get("/status", response_model=StatusResponse, responses=PROBLEMS)
async def status(request: Request) -> Any:
    """Last cycle and its state, data freshness per node, active models, Redis and database health."""
    settings = request.app.state.settings
    view = await platform.gather(request.app.state)
    snap = view.snapshot or {}
    published = parse_iso(snap.get("published_at"))
    return {
        **assess(view, settings.stale_after_s),
        "checked_at": iso_utc(view.checked_at),
        "target": settings.target.describe(),
        "processing_service": {
            "running": view.db.running is not None,
            "current_cycle": view.db.running,
            "last_cycle": view.db.last_cycle,
            "last_successful_at": (view.db.last_success or {}).get("completed_at"),
        },
        "active_models": view.db.active_models,
        "redis": {
            "reachable": view.cache_up,
            "detail": view.cache_detail,
            "cycle_id": snap.get("cycle_id"),
            "published_at": snap.get("published_at"),
            "age_seconds": (view.checked_at - published).total_seconds() if published else None,
        },
        "database": {"reachable": view.database_up, "detail": view.database_detail},
    }


@router.get("/models/status", response_model=ModelsResponse, responses=PROBLEMS)
async def models_status(request: Request) -> Any:
    """Every registered model, active ones first, with their latest evaluation scores."""
    models = await in_database(request, models_registry.models)
    return {
        "source": "database",
        "available": models is not None,
        "active_count": sum(m["is_active"] for m in models or []),
        "models": models or [],
    }
