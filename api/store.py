"""Read-only, short-lived warehouse connections for the API (the database fallback).

The API never writes to the warehouse and never opens the live DuckDB file: it opens the read
snapshot the last run left beside it (flows/kernel/read_snapshot.py), read-only, per request, so reads
never block a cycle (the live file is only read before the first run has left a snapshot);
PostgreSQL sessions are read-only with a statement timeout. SQL uses bound parameters only.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import duckdb
import psycopg

from flows.kernel.read_snapshot import read_target
from flows.kernel.settings import Target
from flows.kernel.warehouse import Warehouse, WarehouseError, first_line

STATEMENT_TIMEOUT_MS = 5000


class ReadOnlyWarehouse(Warehouse):
    """flows.kernel.warehouse.Warehouse in read-only mode, plus the API's row helpers."""

    def __init__(self, target: Target):
        if target.type not in ("duckdb", "postgres"):
            raise WarehouseError(
                f"the API reads duckdb or postgres; target {target.type} is served through one of them"
            )
        # DuckDB: the read snapshot the last run left, never the file a cycle writes.
        super().__init__(
            read_target(target), read_only=True, statement_timeout_ms=STATEMENT_TIMEOUT_MS
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
            raise WarehouseError(first_line(exc)) from exc

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
