"""Nodes and their windowed metrics, history and forecasts: Redis first, database fallback."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, Request, Response

from api import queries
from api.cache import Cache, CacheUnavailable, Snapshot
from api.common import (
    NOT_FOUND,
    PROBLEMS,
    NodeId,
    cursor_time,
    decode_cursor,
    encode_cursor,
    in_database,
    invalid,
    utc_param,
)
from api.schemas import (
    NodeHistoryResponse,
    NodeMetricsResponse,
    NodesResponse,
    PredictionsResponse,
    TimeWindow,
)
from flows.kernel.contracts import NODES_KEY, SERIES_HOURS, node_key
from flows.kernel.jsonable import iso_utc, now_utc, parse_iso

router = APIRouter(tags=["nodes"])

# The cache holds the last 24 h of 5-minute rows per node (Redis contract).
CACHED_SERIES_SPAN = timedelta(hours=SERIES_HOURS)
DEFAULT_SPAN = {"5min": timedelta(hours=24), "1hour": timedelta(days=7), "1day": timedelta(days=90)}
MAX_SPAN = {"5min": timedelta(days=7), "1hour": timedelta(days=92), "1day": timedelta(days=1830)}
WindowParam = Annotated[TimeWindow, Query(description="Window width: 5min, 1hour or 1day.")]


def _cache(request: Request) -> Cache:
    return request.app.state.cache


def _cache_hit(request: Request) -> None:
    request.app.state.metrics.source_reads.labels("cache").inc()


def _not_found(node_id: str) -> HTTPException:
    return HTTPException(status_code=404, detail=f"unknown node {node_id!r}")


def _envelope(snapshot: Snapshot) -> dict[str, Any]:
    return {"source": "cache", "cycle_id": snapshot.cycle_id, "published_at": snapshot.published_at}


def _envelope_prefix(request: Request, status_raw: bytes) -> bytes:
    """`{"source":"cache","cycle_id":…,"published_at":…,"node_id":` for this snapshot."""
    memo = getattr(request.app.state, "envelope_prefix", None)
    if memo is None or memo[0] != status_raw:
        info = json.loads(status_raw)
        envelope = {
            "source": "cache",
            "cycle_id": info.get("cycle_id"),
            "published_at": info.get("published_at"),
        }
        memo = (
            status_raw,
            json.dumps(envelope, separators=(",", ":"))[:-1].encode() + b',"node_id":',
        )
        request.app.state.envelope_prefix = memo
    return memo[1]


async def _cached_node_known(cache: Cache, node_id: str) -> bool:
    _, (nodes,) = await cache.get_json(NODES_KEY)
    return any(n.get("node_id") == node_id for n in nodes or [])


async def _ensure_node_in_db(request: Request, node_id: str) -> None:
    if not await in_database(request, queries.node_exists, node_id):
        raise _not_found(node_id)


@router.get("/nodes", response_model=NodesResponse, responses=PROBLEMS)
async def list_nodes(request: Request) -> Any:
    """Every node with its district, role, status (ok | stale | anomaly | no_data) and last reading."""
    try:
        snapshot, (nodes,) = await _cache(request).get_json(NODES_KEY)
        if nodes is not None:
            _cache_hit(request)
            return {**_envelope(snapshot), "count": len(nodes), "nodes": nodes}
    except CacheUnavailable:
        pass
    rows = await in_database(request, queries.nodes, now_utc())
    rows = rows or []
    return {"source": "database", "count": len(rows), "nodes": rows}


@router.get(
    "/nodes/{node_id}/metrics",
    response_model=NodeMetricsResponse,
    responses={**PROBLEMS, **NOT_FOUND},
)
async def node_metrics(request: Request, node_id: NodeId, window: WindowParam = "5min") -> Any:
    """The node's latest window of the given width (the 5-minute one is served from Redis)."""
    cache = _cache(request)
    if window == "5min":
        try:
            status_raw, latest_raw = await cache.mget(node_key(node_id, "latest"))
            if latest_raw is not None:
                _cache_hit(request)
                # The cached row is passed through as published (no parse, no re-encode), after
                # an envelope prefix that is built once per snapshot.
                body = b"".join(
                    (
                        _envelope_prefix(request, status_raw),
                        json.dumps(node_id).encode(),
                        b',"time_window":"5min","metrics":',
                        latest_raw,
                        b"}",
                    )
                )
                return Response(content=body, media_type="application/json")
            if await _cached_node_known(cache, node_id):
                _cache_hit(request)
                return {
                    **_envelope(Snapshot(status_raw, json.loads(status_raw))),
                    "node_id": node_id,
                    "time_window": window,
                    "metrics": None,
                }
            raise _not_found(node_id)
        except CacheUnavailable:
            pass

    def read(wh):
        if not queries.node_exists(wh, node_id):
            return False, None
        return True, queries.latest_metrics(wh, node_id, window)

    known, row = await in_database(request, read)
    if not known:
        raise _not_found(node_id)
    return {"source": "database", "node_id": node_id, "time_window": window, "metrics": row}


@router.get(
    "/nodes/{node_id}/history",
    response_model=NodeHistoryResponse,
    responses={**PROBLEMS, **NOT_FOUND},
)
async def node_history(
    request: Request,
    node_id: NodeId,
    window: WindowParam = "5min",
    start: Annotated[
        datetime | None,
        Query(
            description="Inclusive start (UTC). Default: `end` minus 24 h / 7 d / 90 d by window."
        ),
    ] = None,
    end: Annotated[
        datetime | None,
        Query(
            description="Exclusive end (UTC). Default: the end of the newest window in the platform."
        ),
    ] = None,
    limit: Annotated[int, Query(ge=1, le=1000, description="Rows per page.")] = 288,
    cursor: Annotated[
        str | None, Query(max_length=200, description="`next_cursor` of the previous page.")
    ] = None,
) -> Any:
    """The node's windows in [start, end), oldest first, paginated. Ranges are bounded per window:
    7 days of 5min, 92 days of 1hour, 1830 days of 1day rows."""
    after = None
    if cursor is not None:
        after = cursor_time(decode_cursor(cursor, ("after",))["after"], cursor)
    start = utc_param(start, "start")
    end = utc_param(end, "end")
    cache = _cache(request)

    series: list[dict[str, Any]] | None = None
    snapshot: Snapshot | None = None
    if window == "5min":
        try:
            snapshot, (series, nodes) = await cache.get_json(
                node_key(node_id, "series:5min"), NODES_KEY
            )
            if series is None and not any(n.get("node_id") == node_id for n in nodes or []):
                raise _not_found(node_id)
        except CacheUnavailable:
            snapshot = None
    if snapshot is None:  # the node's existence was not settled by the cache
        await _ensure_node_in_db(request, node_id)

    if end is None:
        # The newest window in the platform (as the published series): a node that stopped
        # reporting shows its gap rather than an older range of its own.
        cached_end = parse_iso(snapshot.info.get("latest_window_end")) if snapshot else None
        if cached_end is not None:
            end = cached_end
        else:
            latest = await in_database(request, queries.latest_window_end, window)
            end = _utc(latest) if latest is not None else now_utc().replace(microsecond=0)
    if start is None:
        start = end - DEFAULT_SPAN[window]
    if end <= start:
        raise invalid("query", "end", "end must be after start", iso_utc(end))
    if end - start > MAX_SPAN[window]:
        raise invalid(
            "query",
            "start",
            f"range too long for {window}: at most {MAX_SPAN[window].days} days",
            iso_utc(start),
        )

    # The cached series holds every 5-minute row from (latest_window_end - 24 h) on.
    series_from = parse_iso(snapshot.info.get("latest_window_end")) if snapshot else None
    if (
        snapshot is not None
        and series_from is not None
        and start >= series_from - CACHED_SERIES_SPAN
    ):
        _cache_hit(request)
        rows = [
            r
            for r in series or []
            if start <= parse_iso(r["window_start"]) < end
            and (after is None or parse_iso(r["window_start"]) > after)
        ]
        page, more = rows[:limit], len(rows) > limit
        envelope = _envelope(snapshot)
    else:
        fetched = await in_database(
            request, queries.metrics_history, node_id, window, start, end, after, limit + 1
        )
        page, more = fetched[:limit], len(fetched) > limit
        envelope = {"source": "database"}
    next_cursor = encode_cursor({"after": page[-1]["window_start"]}) if more else None
    return {
        **envelope,
        "node_id": node_id,
        "time_window": window,
        "start": iso_utc(start),
        "end": iso_utc(end),
        "count": len(page),
        "rows": page,
        "next_cursor": next_cursor,
    }


@router.get(
    "/nodes/{node_id}/predictions",
    response_model=PredictionsResponse,
    responses={**PROBLEMS, **NOT_FOUND},
)
async def node_predictions(request: Request, node_id: NodeId) -> Any:
    """Next-24 h flow forecast of the active model, with its interval; empty without a model."""
    cache = _cache(request)
    try:
        snapshot, (forecast, nodes) = await cache.get_json(node_key(node_id, "forecast"), NODES_KEY)
        if forecast is None and not any(n.get("node_id") == node_id for n in nodes or []):
            raise _not_found(node_id)
        _cache_hit(request)
        rows = forecast or []
        return {
            **_envelope(snapshot),
            "node_id": node_id,
            "model_available": bool(rows),
            "count": len(rows),
            "predictions": rows,
        }
    except CacheUnavailable:
        pass

    def read(wh):
        if not queries.node_exists(wh, node_id):
            return False, None
        return True, queries.predictions(wh, node_id)

    known, rows = await in_database(request, read)
    if not known:
        raise _not_found(node_id)
    rows = rows or []
    return {
        "source": "database",
        "node_id": node_id,
        "model_available": bool(rows),
        "count": len(rows),
        "predictions": rows,
    }


def _utc(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
