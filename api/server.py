"""`water api`: build the settings (refusing unusable ones), then serve the app with uvicorn.

With `--workers N` uvicorn starts N processes on one socket; each builds the app from the
environment (`app_from_environment`), into which the command's options are written first, so
every worker serves the same target, auth mode and Redis.
"""

from __future__ import annotations

import dataclasses
import gc
import logging
import os
from collections.abc import Callable

import uvicorn

from api.app import create_app
from api.settings import load_api_settings
from flows.kernel.redis_conn import embedded_url, redis_endpoint

log = logging.getLogger("water.api")


def serve(
    host: str = "127.0.0.1",
    port: int = 8000,
    target_name: str | None = None,
    insecure_no_auth: bool = False,
    access_log: bool = False,
    echo: Callable[[str], None] = print,
    workers: int = 1,
) -> None:

    settings = load_api_settings(target_name=target_name, insecure_no_auth=insecure_no_auth)
    if settings.redis_url is None:
        # No REDIS_URL: join (or start) the embedded server the cycles publish to.
        settings = dataclasses.replace(settings, redis_url=embedded_url(redis_endpoint()))
    if not settings.auth_enabled:
        echo("WARNING: API AUTH IS OFF - every read is open to anyone who can reach this port.")
    echo(
        f"water api on http://{host}:{port} ({settings.describe()}"
        f"{f'; {workers} workers' if workers > 1 else ''}); docs at /docs"
    )
    options = dict(
        host=host, port=port, log_level="info", access_log=access_log, server_header=False
    )
    if workers > 1:
        # The workers are fresh processes: hand them the resolved options via the environment.
        os.environ.update(settings.target.dbt_env())
        os.environ["REDIS_URL"] = settings.redis_url
        if insecure_no_auth:
            os.environ["WATER_API_AUTH"] = "off"
        uvicorn.run("api.server:app_from_environment", factory=True, workers=workers, **options)
        return
    app = create_app(settings)
    _freeze_startup_objects()
    # Request counts and latencies are in /metrics; a log line per request is opt-in.
    uvicorn.run(app, **options)


def app_from_environment():
    """The app of one `water api --workers N` worker."""
    app = create_app(load_api_settings())
    _freeze_startup_objects()
    return app


def _freeze_startup_objects() -> None:
    # The ~130k objects alive after start-up (libraries, the app) never become garbage: keep
    # them out of the cyclic collector's full passes (~100 ms each), which stall requests.
    gc.collect()
    gc.freeze()
