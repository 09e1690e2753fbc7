"""Trigger rate limits: one count per client identity, shared by every worker and replica.

`SharedLimiter` keeps the count in Redis with the `limits` library's moving window (a Lua
script: the check and the hit are one atomic step in Redis), so `water api --workers 4` and
several replicas on one Redis allow exactly `count` triggers per period between them, not
`count` per process. With no Redis, or while it is unreachable, the count falls back to
`SlidingWindowLimiter` in this process (logged), so a Redis outage never opens the trigger
to unlimited use but does multiply the limit by the number of processes.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque

from limits import RateLimitItemPerSecond
from limits.storage import RedisStorage
from limits.strategies import MovingWindowRateLimiter

from api.settings import RateLimit

log = logging.getLogger("water.api")

KEY_PREFIX = "water:ratelimit"
REDIS_TIMEOUT_S = 0.5


class SlidingWindowLimiter:
    """The same sliding window, counted in this process only."""

    def __init__(self, limit: RateLimit, clock=time.monotonic):
        self.limit = limit
        self._clock = clock
        self._hits: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def acquire(self, key: str) -> float | None:
        """Record a request; None when allowed, else the seconds until one will be."""
        now = self._clock()
        horizon = now - self.limit.period_s
        with self._lock:
            hits = self._hits.setdefault(key, deque())
            while hits and hits[0] <= horizon:
                hits.popleft()
            if len(hits) >= self.limit.count:
                return max(hits[0] - horizon, 0.001)
            hits.append(now)
            # Forget idle clients so the table cannot grow without bound.
            if len(self._hits) > 10_000:
                for idle in [k for k, v in self._hits.items() if not v or v[-1] <= horizon]:
                    del self._hits[idle]
            return None

    @staticmethod
    def retry_after_header(seconds: float) -> str:
        return str(max(1, math.ceil(seconds)))


class SharedLimiter:
    """A moving window kept in Redis (atomic across processes); this process's count as fallback."""

    def __init__(self, limit: RateLimit, redis_url: str | None, scope: str = "trigger"):
        self.limit = limit
        self.scope = scope
        self._local = SlidingWindowLimiter(limit)
        self._redis = None
        if redis_url:
            storage = RedisStorage(
                redis_url,
                key_prefix=KEY_PREFIX,
                socket_timeout=REDIS_TIMEOUT_S,
                socket_connect_timeout=REDIS_TIMEOUT_S,
            )
            self._item = RateLimitItemPerSecond(limit.count, limit.period_s, namespace=scope)
            self._redis = MovingWindowRateLimiter(storage)
        self.shared = self._redis is not None

    def acquire(self, key: str) -> float | None:
        """Record a request; None when allowed, else the seconds until one will be (blocking I/O)."""
        if self._redis is not None:
            try:
                if self._redis.hit(self._item, key):
                    return None
                reset_at, _remaining = self._redis.get_window_stats(self._item, key)
                return max(reset_at - time.time(), 0.001)
            except Exception as exc:  # noqa: BLE001 - any Redis failure: count locally
                log.warning("trigger rate limit: Redis unavailable (%s); counting in this process",
                            type(exc).__name__)  # fmt: skip
        return self._local.acquire(key)

    retry_after_header = staticmethod(SlidingWindowLimiter.retry_after_header)
