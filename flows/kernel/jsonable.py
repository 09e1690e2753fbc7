"""Python and database values -> JSON values, one set of conventions for the API, the job
summaries and the model registry (the Redis publisher encodes the same way with orjson).

Timestamps become ISO-8601 UTC with `Z` (naive values are UTC: the warehouse sessions run in
UTC), decimals become floats, NaN and infinities become null, JSON text stays JSON.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, is_dataclass
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any
from uuid import UUID


def iso_utc(value: datetime) -> str:
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def parse_iso(value: str | None) -> datetime | None:
    if not value:
        return None
    parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def jsonable(value: Any) -> Any:
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, datetime):
        return iso_utc(value)
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, Decimal):
        return jsonable(float(value))
    if isinstance(value, UUID):
        return str(value)
    if is_dataclass(value) and not isinstance(value, type):
        return jsonable(asdict(value))
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set):
        return [jsonable(v) for v in value]
    if hasattr(value, "item"):  # numpy scalars
        return jsonable(value.item())
    return str(value)


def to_json(value: Any) -> str:
    """JSON text of `value` (keys sorted), for JSON columns."""
    return json.dumps(jsonable(value), sort_keys=True)


def json_column(value: Any) -> Any:
    """A JSON column as stored: psycopg gives dicts, DuckDB may give text."""
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return jsonable(value)


def now_utc() -> datetime:
    return datetime.now(UTC)
