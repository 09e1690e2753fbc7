"""Short-lived connections to the target warehouse, one API for DuckDB and PostgreSQL.

SQL here is written once with psycopg's named placeholders (`%(name)s`); for DuckDB they are
rewritten to its `$name` form. Values always travel as parameters, never interpolated.
Connections are opened per unit of work and closed: DuckDB allows one writing process per
file, and dbt opens the same file while a cycle runs.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import duckdb
import pandas as pd
import psycopg

from flows.kernel.settings import Target

_NAMED = re.compile(r"%\((\w+)\)s")


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
