"""Recent anomalies, newest first, with keyset (cursor) pagination."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request

from api import queries
from api.cache import CacheUnavailable
from api.common import PROBLEMS, cursor_time, decode_cursor, encode_cursor, in_database, invalid
from api.schemas import AnomaliesResponse
from flows.kernel.jsonable import json_column, now_utc, parse_iso

router = APIRouter(tags=["anomalies"])

# The cache keeps the last 7 days of anomalies (Redis contract); longer look-backs read the database.
CACHED_HOURS = 7 * 24
MAX_HOURS = 90 * 24


def _decoded(row: dict[str, Any]) -> dict[str, Any]:
    """`details` is JSON text in the table: answer it as JSON, as the database path does."""
    if isinstance(row.get("details"), str):
        row["details"] = json_column(row["details"])
    return row


def _order_key(row: dict[str, Any]) -> tuple[float, str]:
    return parse_iso(row["window_start"]).timestamp(), str(row["anomaly_id"])


@router.get("/anomalies", response_model=AnomaliesResponse, responses=PROBLEMS)
async def list_anomalies(
    request: Request,
    hours: Annotated[
        int, Query(ge=1, le=MAX_HOURS, description="Look-back from now, by window_start.")
    ] = 24,
    node_id: Annotated[
        str | None, Query(min_length=1, max_length=128, description="Only this node.")
    ] = None,
    severity: Annotated[
        str | None, Query(min_length=1, max_length=32, description="Only this severity.")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=500, description="Anomalies per page.")] = 100,
    cursor: Annotated[
        str | None, Query(max_length=300, description="`next_cursor` of the previous page.")
    ] = None,
) -> Any:
    """Anomalies whose window started in the last `hours`, newest first (window_start, then
    anomaly_id, descending)."""
    before = None
    if cursor is not None:
        c = decode_cursor(cursor, ("ts", "id"))
        ts = cursor_time(c["ts"], cursor)
        if not isinstance(c["id"], str):
            raise invalid("query", "cursor", "cursor is not one this API issued", cursor)
        before = (ts, c["id"])
    now = now_utc()
    since = now - timedelta(hours=hours)

    if hours <= CACHED_HOURS:
        try:
            snapshot, members = await request.app.state.cache.anomalies_between(
                since.timestamp(), before[0].timestamp() if before else float("inf")
            )
            rows = [_decoded(json.loads(m)) for m in members]
            rows = [
                r
                for r in rows
                if (node_id is None or r.get("node_id") == node_id)
                and (severity is None or r.get("severity") == severity)
                and (before is None or _order_key(r) < (before[0].timestamp(), before[1]))
            ]
            rows.sort(key=_order_key, reverse=True)
            request.app.state.metrics.source_reads.labels("cache").inc()
            return _page(
                rows,
                limit,
                hours,
                # The publisher lists the parts it could not publish (tables not built yet).
                available="anomalies" not in (snapshot.info.get("skipped") or {}),
                envelope={
                    "source": "cache",
                    "cycle_id": snapshot.cycle_id,
                    "published_at": snapshot.published_at,
                },
            )
        except CacheUnavailable:
            pass

    rows = await in_database(
        request, queries.anomalies, since, node_id, severity, before, limit + 1
    )
    if rows is None:
        return _page([], limit, hours, available=False, envelope={"source": "database"})
    return _page(rows, limit, hours, available=True, envelope={"source": "database"})


def _page(
    rows: list[dict[str, Any]], limit: int, hours: int, available: bool, envelope: dict
) -> dict:
    page = rows[:limit]
    next_cursor = None
    if len(rows) > limit:
        last = page[-1]
        next_cursor = encode_cursor({"ts": last["window_start"], "id": str(last["anomaly_id"])})
    return {
        **envelope,
        "hours": hours,
        "available": available,
        "count": len(page),
        "anomalies": page,
        "next_cursor": next_cursor,
    }
