"""The run lock: jobs that must not overlap share one, and the OS or the server frees it when
the process dies (even on SIGKILL).

PostgreSQL: a session advisory lock on a dedicated connection. DuckDB: an flock on a file
beside the DuckDB file, whose content says who holds it and which step it is in.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from pathlib import Path
from typing import Any

import psycopg

from flows.kernel.runtime import runner_id, utcnow
from flows.kernel.settings import Target
from flows.kernel.warehouse import WarehouseError

# Jobs that must not overlap share a lock. Cycles and backfills both load raw and run dbt.
LOCK_FOR_JOB = {
    "cycle": "warehouse",
    "backfill": "warehouse",
    "evaluation": "models",
    "retraining": "models",
    # Backups never overlap each other; a DuckDB copy and any restore also take "warehouse".
    "backup": "backup",
    "restore": "backup",
}


class LockError(RuntimeError):
    """No run lock exists for this target type."""


class RunLock:
    """An exclusive lock named per job family, released by the OS if the process dies.

    PostgreSQL: a session-level advisory lock on a dedicated connection. DuckDB: `flock` on
    `<warehouse file>.<name>.lock`, whose content tells `water status` who holds it and
    which step it is in.
    """

    def __init__(self, target: Target, name: str):
        self.target = target
        self.name = name
        self._conn: psycopg.Connection | None = None
        self._fd: int | None = None
        self.held = False

    @property
    def path(self) -> Path:
        assert self.target.duckdb_path is not None
        return self.target.duckdb_path.with_name(f"{self.target.duckdb_path.name}.{self.name}.lock")

    def acquire(self, wait_s: float = 0.0) -> bool:
        deadline = time.monotonic() + wait_s
        while True:
            if self._try_acquire():
                self.held = True
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(min(0.5, max(0.05, deadline - time.monotonic())))

    def _try_acquire(self) -> bool:
        if self.target.type == "postgres":
            if self._conn is None:
                try:
                    self._conn = psycopg.connect(
                        autocommit=True,
                        connect_timeout=10,
                        application_name=f"water {self.name} lock",
                        # A host that vanishes is noticed within ~1 min, freeing the lock.
                        keepalives=1,
                        keepalives_idle=20,
                        keepalives_interval=5,
                        keepalives_count=6,
                        **self.target.pg_dsn_parts,
                    )
                except psycopg.Error as exc:
                    raise WarehouseError(
                        f"cannot connect to {self.target.describe()}: {str(exc).strip().splitlines()[0]}"
                    ) from exc
            row = self._conn.execute(
                "select pg_try_advisory_lock(hashtext(%(k)s))", {"k": f"water.run.{self.name}"}
            ).fetchone()
            return bool(row and row[0])
        if self.target.type == "duckdb":
            if self._fd is None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False
            return True
        raise LockError(f"no run lock for target {self.target.type}")

    def note(self, **info: Any) -> None:
        """DuckDB: record who holds the lock and what it is doing (read by status/tests)."""
        if self._fd is None or not self.held:
            return
        payload = json.dumps(
            {"runner": runner_id(), "at": utcnow().isoformat(), **info}, default=str
        )
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, payload.encode(), 0)

    def release(self) -> None:
        if self._conn is not None:
            try:
                if self.held:
                    self._conn.execute(
                        "select pg_advisory_unlock(hashtext(%(k)s))",
                        {"k": f"water.run.{self.name}"},
                    )
            except psycopg.Error:
                pass  # closing the session below releases it anyway
            finally:
                self._conn.close()
                self._conn = None
        if self._fd is not None:
            if self.held:
                os.ftruncate(self._fd, 0)
                fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
        self.held = False

    def __enter__(self) -> RunLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def lock_holder_note(target: Target, name: str) -> dict[str, Any] | None:
    """DuckDB: what the current lock holder last noted (None when free or unknown)."""
    if target.type != "duckdb":
        return None
    probe = RunLock(target, name)
    if not probe.path.exists():
        return None
    try:
        if probe.acquire(0):
            return None
        text = probe.path.read_text()
        return json.loads(text) if text.strip() else {}
    except (OSError, ValueError):
        return {}
    finally:
        probe.release()


def lock_is_free(target: Target, name: str) -> bool:
    """True when nobody holds the lock right now (probe: take and release it)."""
    probe = RunLock(target, name)
    try:
        return probe.acquire(0)
    finally:
        probe.release()
