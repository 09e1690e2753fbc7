"""Read-only, short-lived warehouse connections for the API (the database fallback).

The API never writes to the warehouse and never holds DuckDB's write lock: a DuckDB file is
opened read-only per request (a cycle that holds the file answers 503 "busy" for that moment),
PostgreSQL sessions are read-only with a statement timeout. SQL uses bound parameters only.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import duckdb
import psycopg

from flows.config import Target
from flows.warehouse import Warehouse, WarehouseError

STATEMENT_TIMEOUT_MS = 5000


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


class ReadOnlyWarehouse(Warehouse):
    """flows.warehouse.Warehouse's query API over a read-only connection."""

    # Not calling super().__init__: it opens a writable connection.
    def __init__(self, target: Target):
        self.target = target
        self.type = target.type
        if self.type == "duckdb":
            path = target.duckdb_path
            if path is None or not path.exists():
                raise WarehouseError(
                    f"{target.describe()} does not exist yet: load data and run a cycle"
                )
            try:
                self._con = duckdb.connect(str(path), read_only=True)
                self._con.execute("set TimeZone = 'UTC'")
            except duckdb.Error as exc:
                raise WarehouseError(
                    f"cannot open {target.describe()}: {_first_line(exc)}"
                ) from exc
        elif self.type == "postgres":
            try:
                self._con = psycopg.connect(
                    autocommit=True,
                    options=(
                        "-c timezone=UTC -c default_transaction_read_only=on "
                        f"-c statement_timeout={STATEMENT_TIMEOUT_MS}"
                    ),
                    connect_timeout=3,
                    application_name="water-api",
                    **target.pg_dsn_parts,
                )
            except psycopg.Error as exc:
                raise WarehouseError(
                    f"cannot connect to {target.describe()}: {_first_line(exc)}"
                ) from exc
        else:
            raise WarehouseError(
                f"the API reads duckdb or postgres; target {self.type} is served through one of them"
            )

    def records(self, sql: str, params: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
        """Rows as dicts keyed by column name."""
        try:
            if self.type == "duckdb":
                cur = self._con.execute(self._sql(sql), dict(params) if params else None)
                names = [d[0] for d in cur.description]
                return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]
            with self._con.cursor() as cur:
                cur.execute(sql, params)
                if not cur.description:
                    return []
                names = [d.name for d in cur.description]
                return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]
        except (duckdb.Error, psycopg.Error) as exc:
            raise WarehouseError(_first_line(exc)) from exc

    def columns(self, schema: str, name: str) -> set[str]:
        return {
            r[0]
            for r in self.query(
                "select column_name from information_schema.columns "
                "where table_schema = %(schema)s and table_name = %(name)s",
                {"schema": schema, "name": name},
            )
        }


def open_readonly(target: Target) -> ReadOnlyWarehouse:
    return ReadOnlyWarehouse(target)
