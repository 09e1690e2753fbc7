"""`water api`: build the settings (refusing unusable ones), then serve the app with uvicorn."""

from __future__ import annotations

import dataclasses
import gc
import logging
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
) -> None:

    settings = load_api_settings(target_name=target_name, insecure_no_auth=insecure_no_auth)
    if settings.redis_url is None:
        # No REDIS_URL: join (or start) the embedded server the cycles publish to.
        settings = dataclasses.replace(settings, redis_url=embedded_url(redis_endpoint()))
    if not settings.auth_enabled:
        echo("WARNING: API AUTH IS OFF - every read is open to anyone who can reach this port.")
    echo(f"water api on http://{host}:{port} ({settings.describe()}); docs at /docs")
    app = create_app(settings)
    # The ~130k objects alive after start-up (libraries, the app) never become garbage: keep
    # them out of the cyclic collector's full passes (~100 ms each), which stall requests.
    gc.collect()
    gc.freeze()
    # Request counts and latencies are in /metrics; a log line per request is opt-in.
    uvicorn.run(
        app,
        host=host,
        port=port,
        log_level="info",
        access_log=access_log,
        server_header=False,
    )
