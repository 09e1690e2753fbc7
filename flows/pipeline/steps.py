"""The step runner protocol and its one retry policy.

A step runner has `run(name, fn, *args, retries=None, **kwargs)` and `dbt_build(target, select)`.
`DirectSteps` (CLI, API trigger, tests, demo) runs each step in-process; the Prefect flows
(flows/orchestration/flows.py) run each as a task. Both retry only transient errors
(`is_transient`), `STEP_RETRIES` times with exponential backoff from `STEP_BACKOFF_S`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import psycopg
import redis

from flows.kernel.dbt_runner import DbtOutcome, run_dbt
from flows.kernel.settings import Target
from flows.kernel.warehouse import is_duckdb_busy

log = logging.getLogger("water.cycle")


T = TypeVar("T")


# Per-step limits used by the Prefect tasks (seconds).
STEP_TIMEOUTS_S = {
    "load": 3600,
    "scope": 300,
    "raw_gate": 900,
    "dbt_build": 3600,
    "marts_gate": 900,
    "ml_scoring": 1800,
    "publish": 300,
    "evaluate": 3600,
    "data_tests": 3600,
    "train": 3 * 3600,
}


# Production builds skip dbt unit tests (they test SQL logic on fixed inputs: CI's job, as dbt
# recommends); data tests still run and fail the build.
CYCLE_DBT_ARGS = ("--exclude-resource-type", "unit_test")


def cycle_dbt_args(select: Sequence[str] = ()) -> list[str]:
    return [*(["--select", *select] if select else []), *CYCLE_DBT_ARGS]


# One quick retry of the publish step: a Redis outage must not hold the cycle.
PUBLISH_RETRIES = 1
# The one retry policy of every step runner: transient errors only, delays 2 s, 4 s, 8 s.
STEP_RETRIES = 3
STEP_BACKOFF_S = 2.0


def is_transient(exc: BaseException) -> bool:
    """Worth retrying: a connection dropped or refused, a busy DuckDB file, a deadlock."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, redis.ConnectionError | redis.TimeoutError):
            return True
        if isinstance(
            exc,
            psycopg.OperationalError
            | psycopg.errors.SerializationFailure
            | psycopg.errors.DeadlockDetected,
        ):
            return True
        text = str(exc)
        if is_duckdb_busy(exc) or any(
            marker in text
            for marker in (
                "could not connect to server",
                "Connection refused",
                "server closed the connection unexpectedly",
                "connection to server at",
                "terminating connection due to administrator command",
                "deadlock detected",
            )
        ):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


class DirectSteps:
    """Run steps in this process; retry transient errors with exponential backoff."""

    name = "direct"

    def __init__(self, retries: int = STEP_RETRIES, backoff_s: float = STEP_BACKOFF_S):
        self.retries = retries
        self.backoff_s = backoff_s

    def run(
        self, name: str, fn: Callable[..., T], *args: Any, retries: int | None = None, **kwargs: Any
    ) -> T:
        attempts = (self.retries if retries is None else retries) + 1
        for attempt in range(1, attempts + 1):
            try:
                return fn(*args, **kwargs)
            except Exception as exc:
                if attempt == attempts or not is_transient(exc):
                    raise
                delay = self.backoff_s * 2 ** (attempt - 1)
                log.warning(
                    "step %s: transient error (%s); retry %d/%d in %.0fs",
                    name,
                    one_line(exc),
                    attempt,
                    attempts - 1,
                    delay,
                )
                time.sleep(delay)
        raise AssertionError("unreachable")

    def dbt_build(self, target: Target, select: Sequence[str] = ()) -> DbtOutcome:
        return run_dbt(target, "build", cycle_dbt_args(select))


def one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text[:1000] if text else type(exc).__name__
