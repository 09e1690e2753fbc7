"""Idempotent writes of ML outputs (DataFrames) into the warehouse.

`upsert_frame` inserts new keys and updates a row only when one of its compared values
changed, so writing the same frame twice changes nothing (not even timestamps). Table and
column names come from this package's constants, never from input; values are bound.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import pandas as pd

from flows.kernel.warehouse import Warehouse


def upsert_frame(
    wh: Warehouse,
    table: str,
    frame: pd.DataFrame,
    key_columns: Sequence[str],
    compare_columns: Sequence[str],
) -> int:
    """Insert or update `frame` into `table`; returns the number of rows given."""
    if frame.empty:
        return 0
    columns = list(frame.columns)
    updates = [c for c in columns if c not in key_columns]
    changed = " or ".join(f"{table}.{c} is distinct from excluded.{c}" for c in compare_columns)
    set_clause = ", ".join(f"{c} = excluded.{c}" for c in updates)
    conflict = f"on conflict ({', '.join(key_columns)}) do update set {set_clause} where {changed}"
    if wh.type == "duckdb":
        con = wh.raw_connection
        con.register("ml_incoming_rows", frame)
        try:
            wh.execute(
                f"insert into {table} ({', '.join(columns)}) "  # noqa: S608 - constant identifiers
                f"select {', '.join(columns)} from ml_incoming_rows {conflict}"
            )
        finally:
            con.unregister("ml_incoming_rows")
    else:
        placeholders = ", ".join(f"%({c})s" for c in columns)
        sql = f"insert into {table} ({', '.join(columns)}) values ({placeholders}) {conflict}"  # noqa: S608
        records = [
            {k: _plain(v) for k, v in row.items()} for row in frame.to_dict(orient="records")
        ]
        with wh.transaction(), wh.raw_connection.cursor() as cur:
            cur.executemany(sql, records)
    return len(frame)


def _plain(value):
    """pandas/numpy scalars to what psycopg binds (NaN/NaT -> NULL)."""
    if value is None:
        return None
    if isinstance(value, pd.Timestamp):
        return None if pd.isna(value) else value.to_pydatetime()
    if isinstance(value, float) and math.isnan(value):
        return None
    if value is pd.NaT:
        return None
    if hasattr(value, "item"):
        value = value.item()
        if isinstance(value, float) and math.isnan(value):
            return None
    return value
