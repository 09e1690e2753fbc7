"""Short-lived connections to the target warehouse, one API for DuckDB and PostgreSQL.

SQL here is written once with psycopg's named placeholders (`%(name)s`); for DuckDB they are
rewritten to its `$name` form. Values always travel as parameters, never interpolated.
Connections are opened per unit of work and closed: DuckDB allows one writing process per
file, and dbt opens the same file while a cycle runs.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import duckdb
import pandas as pd
import psycopg

from flows.kernel.settings import Target

_NAMED = re.compile(r"%\((\w+)\)s")
# DuckDB lets one process at a time open the file; another writer is transient, so wait.
DUCKDB_BUSY_WAIT_S = float(os.environ.get("WATER_DUCKDB_BUSY_WAIT_S", "60"))


class WarehouseError(RuntimeError):
    """The warehouse could not be reached or refused a statement."""


class Warehouse:
    """A connection to one target. Use as a context manager; `transaction()` for atomic work."""

    def __init__(
        self, target: Target, read_only: bool = False, statement_timeout_ms: int | None = None
    ):
        """`read_only`: never takes DuckDB's write lock and refuses writes on PostgreSQL (readers
        such as the API); `statement_timeout_ms` bounds each PostgreSQL statement."""
        self.target = target
        self.type = target.type
        if self.type == "duckdb":
            assert target.duckdb_path is not None
            if read_only and not target.duckdb_path.exists():
                raise WarehouseError(
                    f"{target.describe()} does not exist yet: load data and run a cycle"
                )
            target.duckdb_path.parent.mkdir(parents=True, exist_ok=True)
            try:
                self._con = duckdb.connect(str(target.duckdb_path), read_only=read_only)
                self._con.execute("set TimeZone = 'UTC'")
            except duckdb.Error as exc:
                raise WarehouseError(f"cannot open {target.describe()}: {first_line(exc)}") from exc
        elif self.type == "postgres":
            options = "-c timezone=UTC"
            if read_only:
                options += " -c default_transaction_read_only=on"
            if statement_timeout_ms:
                options += f" -c statement_timeout={int(statement_timeout_ms)}"
            try:
                self._con = psycopg.connect(
                    autocommit=True,
                    options=options,
                    connect_timeout=3 if read_only else 10,
                    application_name="water-readonly" if read_only else "water",
                    **target.pg_dsn_parts,
                )
            except psycopg.Error as exc:
                raise WarehouseError(
                    f"cannot connect to {target.describe()}: {first_line(exc)}"
                ) from exc
        else:
            raise WarehouseError(
                f"target {self.type} has no direct connection here; it is reached through dbt"
            )

    # -- lifecycle -------------------------------------------------------------
    def close(self) -> None:
        self._con.close()

    def __enter__(self) -> Warehouse:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def raw_connection(self) -> Any:
        return self._con

    @contextmanager
    def transaction(self) -> Iterator[Warehouse]:
        """All statements inside commit together or not at all."""
        if self.type == "duckdb":
            self._con.execute("begin transaction")
            try:
                yield self
            except BaseException:
                self._con.execute("rollback")
                raise
            self._con.execute("commit")
        else:
            with self._con.transaction():
                yield self

    # -- statements ------------------------------------------------------------
    def _sql(self, sql: str) -> str:
        return _NAMED.sub(r"$\1", sql) if self.type == "duckdb" else sql

    def execute(self, sql: str, params: Mapping[str, Any] | None = None) -> None:
        try:
            if self.type == "duckdb":
                self._con.execute(self._sql(sql), dict(params) if params else None)
            else:
                self._con.execute(sql, params)
        except (duckdb.Error, psycopg.Error) as exc:
            raise WarehouseError(first_line(exc)) from exc

    def query(self, sql: str, params: Mapping[str, Any] | None = None) -> list[tuple]:
        try:
            if self.type == "duckdb":
                return self._con.execute(
                    self._sql(sql), dict(params) if params else None
                ).fetchall()
            with self._con.cursor() as cur:
                cur.execute(sql, params)
                return cur.fetchall() if cur.description else []
        except (duckdb.Error, psycopg.Error) as exc:
            raise WarehouseError(first_line(exc)) from exc

    def query_df(self, sql: str, params: Mapping[str, Any] | None = None) -> pd.DataFrame:
        try:
            if self.type == "duckdb":
                return self._con.execute(self._sql(sql), dict(params) if params else None).df()
            with self._con.cursor() as cur:
                cur.execute(sql, params)
                columns = [d.name for d in cur.description]
                return pd.DataFrame(cur.fetchall(), columns=columns)
        except (duckdb.Error, psycopg.Error) as exc:
            raise WarehouseError(first_line(exc)) from exc

    def scalar(self, sql: str, params: Mapping[str, Any] | None = None) -> Any:
        rows = self.query(sql, params)
        return rows[0][0] if rows else None

    def relation_exists(self, schema: str, name: str) -> bool:
        return bool(
            self.scalar(
                "select count(*) from information_schema.tables "
                "where table_schema = %(schema)s and table_name = %(name)s",
                {"schema": schema, "name": name},
            )
        )


def connect(target: Target) -> Warehouse:
    return Warehouse(target)


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def is_duckdb_busy(exc: BaseException) -> bool:
    """DuckDB refused to open the file because another process holds it."""
    text = str(exc)
    return "Could not set lock on file" in text or "Conflicting lock" in text


@contextmanager
def open_warehouse(target: Target, busy_wait_s: float | None = None) -> Iterator[Warehouse]:
    """`connect(target)` that waits (with backoff) while another process holds a DuckDB file."""
    if target.type not in ("duckdb", "postgres"):
        raise WarehouseError(
            f"job tracking and the run lock need a duckdb or postgres target, not {target.type}"
        )
    deadline = time.monotonic() + (DUCKDB_BUSY_WAIT_S if busy_wait_s is None else busy_wait_s)
    delay = 0.05
    while True:
        try:
            wh = connect(target)
            break
        except WarehouseError as exc:
            if not is_duckdb_busy(exc) or time.monotonic() + delay > deadline:
                raise
            time.sleep(delay)
            delay = min(delay * 2, 1.0)
    try:
        yield wh
    finally:
        wh.close()


def in_list(column: str, param: str, engine: str) -> str:
    """SQL for "column is one of the strings in list parameter `param`", per engine."""
    if engine == "postgres":
        return f"{column} = any(cast(%({param})s as text[]))"
    return f"list_contains(%({param})s, {column})"


def apply_ddl(wh: Warehouse, ddl: Mapping[str, Sequence[str]], lock_name: str) -> None:
    """Run the engine's idempotent DDL statements. PostgreSQL: in one transaction under an
    advisory lock named `lock_name`, because concurrent first runs collide on the catalog."""
    if wh.type == "postgres":
        with wh.transaction():
            wh.execute("select pg_advisory_xact_lock(hashtext(%(k)s))", {"k": lock_name})
            for statement in ddl["postgres"]:
                wh.execute(statement)
        return
    for statement in ddl[wh.type]:
        wh.execute(statement)
