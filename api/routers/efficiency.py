"""`GET /api/v1/network/efficiency`: the water balance of the network and its districts."""

from __future__ import annotations

import json
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request

from api import queries
from api.cache import Cache, CacheUnavailable
from api.common import PROBLEMS, in_database
from api.schemas import EfficiencyResponse
from flows.kernel.contracts import (
    DISTRICT_KEY_PREFIX,
    KEYS_KEY,
    NETWORK_EFFICIENCY_KEY,
    district_of_key,
)

router = APIRouter(tags=["network"])


async def _from_cache(cache: Cache) -> dict[str, Any]:
    """Network and district entries of one snapshot (re-read once if a publish slips between)."""
    for _ in range(2):
        snapshot, (keys, network) = await cache.get_json(KEYS_KEY, NETWORK_EFFICIENCY_KEY)
        district_keys = sorted(k for k in keys or [] if k.startswith(DISTRICT_KEY_PREFIX))
        status_raw, *values = await cache.mget(*district_keys)
        if json.loads(status_raw).get("cycle_id") != snapshot.cycle_id:
            continue
        districts = [
            {"district": district_of_key(key), **json.loads(value)}
            for key, value in zip(district_keys, values, strict=True)
            if value is not None
        ]
        return {
            "source": "cache",
            "cycle_id": snapshot.cycle_id,
            "published_at": snapshot.published_at,
            "available": network is not None or bool(districts),
            "network": network,
            "districts": districts,
        }
    raise CacheUnavailable("the snapshot changed twice while reading")


@router.get("/network/efficiency", response_model=EfficiencyResponse, responses=PROBLEMS)
async def network_efficiency(
    request: Request,
    district: Annotated[
        str | None, Query(min_length=1, max_length=128, description="Only this district.")
    ] = None,
) -> Any:
    """Latest hourly and daily water balance (input, consumption, losses, efficiency) of the
    whole network and of each district."""
    try:
        body = await _from_cache(request.app.state.cache)
        request.app.state.metrics.source_reads.labels("cache").inc()
    except CacheUnavailable:
        found = await in_database(request, queries.efficiency)
        body = {
            "source": "database",
            "available": found is not None,
            **(found or {"network": None, "districts": []}),
        }
    if district is not None:
        body["districts"] = [d for d in body["districts"] if d["district"] == district]
    return body
