"""A sliding-window rate limit, kept in the API process (one limit per client identity)."""

from __future__ import annotations

import math
import threading
import time
from collections import deque

from api.settings import RateLimit


class SlidingWindowLimiter:
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
