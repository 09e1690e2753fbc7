"""The FastAPI application: `create_app(settings)` (what `water api` serves).

Read routes sit under /api/v1 behind the `read` scope when auth is on; the trigger always needs
the `trigger` scope; /health, /ready, /metrics and the OpenAPI docs are open for probes,
scrapers and readers of the docs. Unexpected errors answer a generic 500 with an error id that
is also in the server log, never a traceback or exception text.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import uuid
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse

from api.auth import TokenVerifier, require_read
from api.cache import Cache
from api.metrics import ApiMetrics, RequestMetricsMiddleware
from api.ratelimit import SharedLimiter
from api.routers import anomalies, docs, efficiency, nodes, ops, processing, status
from api.settings import ApiSettings
from api.trigger import make_launcher

log = logging.getLogger("water.api")

API_PREFIX = "/api/v1"
DESCRIPTION = """
Operational API of the water-infrastructure platform: the status of the processing cycles,
node metrics (served from the Redis hot cache, the database as fallback), anomalies, forecasts,
network efficiency, and a trigger for an extra processing cycle.

**Auth**: send `Authorization: Bearer <JWT>`. Scopes (claim `scope`, space-separated, or `scp`):
`read` for every `/api/v1` read (when auth is on), `trigger` for `POST /api/v1/processing/trigger`.
"""


def create_app(settings: ApiSettings) -> FastAPI:
    cache = Cache(settings.redis_url)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        await cache.close()
        app.state.launcher.close()

    app = FastAPI(
        title="water-infrastructure API",
        version="1.0.0",
        description=DESCRIPTION,
        lifespan=lifespan,
        docs_url=None,  # /docs and /redoc come from api.routers.docs, without a CDN
        redoc_url=None,
        openapi_url="/openapi.json",
    )
    app.state.settings = settings
    app.state.cache = cache
    app.state.verifier = TokenVerifier(settings)
    app.state.metrics = ApiMetrics()
    # One allowance per client and deployment (the target), shared by every worker on this Redis.
    app.state.trigger_limiter = SharedLimiter(
        settings.trigger_rate, settings.redis_url, scope=_limit_scope(settings)
    )
    app.state.launcher = make_launcher(settings)
    app.state.trigger_lock = asyncio.Lock()

    read_guard = [Depends(require_read)] if settings.auth_enabled else []
    for router in (status.router, nodes.router, anomalies.router, efficiency.router):
        app.include_router(router, prefix=API_PREFIX, dependencies=read_guard)
    app.include_router(processing.jobs_router, prefix=API_PREFIX, dependencies=read_guard)
    app.include_router(processing.trigger_router, prefix=API_PREFIX)
    app.include_router(ops.router)
    docs.install(app)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        error_id = uuid.uuid4().hex[:12]
        log.error("error %s on %s %s", error_id, request.method, request.url.path, exc_info=exc)
        return JSONResponse({"detail": f"internal error (id {error_id})"}, status_code=500)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        # FastAPI's shape, minus `ctx` (it can carry exception objects' text) and `url`.
        errors = [
            {k: v for k, v in e.items() if k in ("type", "loc", "msg", "input")}
            for e in exc.errors()
        ]
        return JSONResponse({"detail": _jsonable_errors(errors)}, status_code=422)

    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(settings.cors_origins),
            allow_credentials=False,  # bearer tokens travel in a header, not cookies
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type"],
            max_age=600,
        )
    app.add_middleware(RequestMetricsMiddleware, metrics=app.state.metrics)
    if not settings.auth_enabled:
        log.warning(
            "API AUTH IS OFF: every /api/v1 read is open to anyone who can reach this port; "
            "the trigger still needs a token with the `trigger` scope"
        )
    return app


def _limit_scope(settings: ApiSettings) -> str:
    return "trigger:" + hashlib.sha256(settings.target.describe().encode()).hexdigest()[:12]


def _jsonable_errors(errors: list[dict]) -> list[dict]:

    try:
        return jsonable_encoder(errors)
    except (TypeError, ValueError):
        return [{k: v for k, v in e.items() if k != "input"} for e in errors]
