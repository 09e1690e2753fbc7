"""Reads of the Redis hot cache (layout: the Redis contract in docs/api.md and the README).

A cycle publishes one snapshot atomically; `water:status` marks that a snapshot exists. Reads
that need several keys use MGET or MULTI/EXEC so they see one snapshot. When Redis is down
the reader fails fast (short timeouts, no retry storm) and stays out of the way for a few
seconds, so requests go straight to the database fallback instead of waiting on Redis.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from flows.kernel.contracts import ANOMALIES_KEY, STATUS_KEY

log = logging.getLogger(__name__)

# After a failure, skip Redis for this long before trying again.
BACKOFF_S = 5.0


class CacheUnavailable(RuntimeError):
    """Redis is not configured, unreachable, or holds no snapshot."""


@dataclass(frozen=True)
class Snapshot:
    """`water:status` of the snapshot a read came from."""

    raw: bytes
    info: dict[str, Any]

    @property
    def cycle_id(self) -> str | None:
        return self.info.get("cycle_id")

    @property
    def published_at(self) -> str | None:
        return self.info.get("published_at")


class Cache:
    def __init__(self, url: str | None):
        self.url = url
        self.configured = url is not None
        self._redis: aioredis.Redis | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._down_until = 0.0

    def _connection(self) -> aioredis.Redis:
        """The client for the running event loop (asyncio connections belong to one loop; test
        clients and servers each run their own)."""
        assert self.url is not None
        loop = asyncio.get_running_loop()
        if self._redis is None or self._loop is not loop:
            self._redis = aioredis.from_url(
                self.url,
                socket_connect_timeout=0.5,
                socket_timeout=0.5,
                retry=Retry(NoBackoff(), 0),
                max_connections=64,
                health_check_interval=30,
            )
            self._loop = loop
        return self._redis

    async def close(self) -> None:
        if self._redis is not None and self._loop is asyncio.get_running_loop():
            await self._redis.aclose()
        self._redis = None

    def _client(self) -> aioredis.Redis:
        if not self.configured:
            raise CacheUnavailable("redis is not configured (REDIS_URL)")
        if time.monotonic() < self._down_until:
            raise CacheUnavailable("redis was unreachable moments ago")
        return self._connection()

    def _failed(self, exc: RedisError) -> CacheUnavailable:
        self._down_until = time.monotonic() + BACKOFF_S
        log.warning(
            "redis unavailable, using the database for %.0fs: %s", BACKOFF_S, type(exc).__name__
        )
        return CacheUnavailable("redis is unreachable")

    async def ping(self) -> bool:
        if not self.configured:
            return False
        try:
            return bool(await self._connection().ping())
        except RedisError:
            return False

    async def mget(self, *keys: str) -> list[bytes | None]:
        """Values of `water:status` and `keys` read atomically; CacheUnavailable when no snapshot."""
        pool = self._client().connection_pool
        try:
            # The hot path: one MGET on a pooled connection, without the client's per-command
            # retry and instrumentation layers (this reader does not retry anyway).
            connection = await pool.get_connection()
            try:
                await connection.send_command("MGET", STATUS_KEY, *keys)
                values = await connection.read_response()
            except BaseException:
                await connection.disconnect()  # never reuse a connection mid-reply
                raise
            finally:
                await pool.release(connection)
        except RedisError as exc:
            raise self._failed(exc) from None
        if values[0] is None:
            raise CacheUnavailable("redis holds no published snapshot")
        return values

    async def get_json(self, *keys: str) -> tuple[Snapshot, list[Any]]:
        status, *values = await self.mget(*keys)
        snapshot = Snapshot(status, json.loads(status))
        return snapshot, [None if v is None else json.loads(v) for v in values]

    async def snapshot(self) -> Snapshot:
        snapshot, _ = await self.get_json()
        return snapshot

    async def anomalies_between(
        self, min_score: float, max_score: float
    ) -> tuple[Snapshot, list[bytes]]:
        """Anomaly members with min_score <= window_start epoch <= max_score, newest first."""
        client = self._client()
        try:
            async with client.pipeline(transaction=True) as pipe:
                pipe.get(STATUS_KEY)
                pipe.zrevrangebyscore(ANOMALIES_KEY, max_score, min_score)
                status, members = await pipe.execute()
        except RedisError as exc:
            raise self._failed(exc) from None
        if status is None:
            raise CacheUnavailable("redis holds no published snapshot")
        return Snapshot(status, json.loads(status)), members

    async def oldest_anomaly_score(self) -> float | None:
        client = self._client()
        try:
            first = await client.zrange(ANOMALIES_KEY, 0, 0, withscores=True)
        except RedisError as exc:
            raise self._failed(exc) from None
        return first[0][1] if first else None
