"""Helpers the routers share: database calls off the event loop, cursors, parameters, errors."""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Annotated, Any, TypeVar

from fastapi import HTTPException, Path, Request
from fastapi.exceptions import RequestValidationError
from starlette.concurrency import run_in_threadpool

from api.schemas import ProblemResponse
from api.store import open_readonly
from flows.kernel.jsonable import parse_iso
from flows.kernel.warehouse import WarehouseError

log = logging.getLogger(__name__)
T = TypeVar("T")

# Printable, no whitespace or slashes; long enough for any real identifier.
NodeId = Annotated[
    str,
    Path(min_length=1, max_length=128, pattern=r"^[^\s/]+$", description="Node identifier."),
]

PROBLEMS: dict[int | str, dict[str, Any]] = {
    401: {"model": ProblemResponse, "description": "Missing, expired or invalid bearer token."},
    403: {"model": ProblemResponse, "description": "The token lacks the required scope."},
    503: {
        "model": ProblemResponse,
        "description": "Neither the cache nor the database could answer.",
    },
}
NOT_FOUND: dict[int | str, dict[str, Any]] = {
    404: {"model": ProblemResponse, "description": "Unknown node."}
}


class DatabaseUnavailable(HTTPException):
    def __init__(self) -> None:
        super().__init__(status_code=503, detail="database unavailable; try again shortly")


async def in_database(request: Request, fn: Callable[..., T], *args: Any) -> T:
    """Run `fn(wh, *args)` on a short-lived read-only connection, in the thread pool."""
    target = request.app.state.settings.target

    def work() -> T:
        with open_readonly(target) as wh:
            return fn(wh, *args)

    try:
        result = await run_in_threadpool(work)
    except WarehouseError as exc:
        # The reason goes to the log (it names no secret), never to the client.
        log.warning("database read failed: %s", exc)
        raise DatabaseUnavailable() from None
    request.app.state.metrics.source_reads.labels("database").inc()
    return result


def invalid(location: str, name: str, message: str, value: Any = None) -> RequestValidationError:
    """A 422 in FastAPI's own error shape, so clients parse every 422 the same way."""
    return RequestValidationError(
        [{"type": "value_error", "loc": (location, name), "msg": message, "input": value}]
    )


def encode_cursor(payload: dict[str, Any]) -> str:
    raw = json.dumps(payload, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str, keys: tuple[str, ...]) -> dict[str, Any]:
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        payload = json.loads(base64.urlsafe_b64decode(padded.encode()))
    except (ValueError, UnicodeError):
        _bad_cursor(cursor)
    if not isinstance(payload, dict) or set(payload) != set(keys):
        _bad_cursor(cursor)
    return payload


# Times the API accepts. Readings before 2000 are rejected by the pipeline anyway; the bounds keep
# every date computation (defaults of 24 h back, UTC conversion) inside datetime's range.
EARLIEST = datetime(1900, 1, 1, tzinfo=UTC)
LATEST = datetime(2200, 1, 1, tzinfo=UTC)


def utc_param(value: datetime | None, name: str) -> datetime | None:
    """A query time in UTC (naive means UTC), or a 422 when outside [EARLIEST, LATEST)."""
    if value is None:
        return None
    try:
        utc = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    except OverflowError:  # e.g. 0001-01-01T00:30+01:00 is before year 1 in UTC
        utc = None
    if utc is None or not EARLIEST <= utc < LATEST:
        raise invalid(
            "query", name, "time must be from 1900-01-01 to before 2200-01-01 UTC", str(value)
        )
    return utc


def cursor_time(value: Any, cursor: str) -> datetime:
    """The time inside a cursor; a 422 when it is not a time this API could have issued."""
    try:
        parsed = parse_iso(value) if isinstance(value, str) else None
        return utc_param(parsed, "cursor") if parsed else _bad_cursor(cursor)
    except (ValueError, RequestValidationError):
        return _bad_cursor(cursor)


def _bad_cursor(cursor: str):
    raise invalid("query", "cursor", "cursor is not one this API issued", cursor)
