"""The raw landing tables: created by the loaders, read by dbt only through its sources.

Raw is append-only. Every row carries `loaded_at` (when its batch committed) and `batch_id`
plus `batch_row` (its position in the batch), so dbt can recompute exactly what a batch
touched and every rejected reading can be traced back to its file row.
"""

from __future__ import annotations

from flows.kernel.warehouse import Warehouse, apply_ddl

READING_COLUMNS = (
    "timestamp",
    "node_id",
    "node_name",
    "flow_rate",
    "pressure",
    "temperature",
    "volume",
    "quality_score",
)
MEASUREMENT_COLUMNS = ("flow_rate", "pressure", "temperature", "volume")
NODE_COLUMNS = (
    "node_id",
    "node_name",
    "node_type",
    "district",
    "latitude",
    "longitude",
    "balance_role",
    "expected_cadence_s",
    "pressure_min_bar",
    "pressure_max_bar",
    "is_bidirectional",
)
NODE_COLUMN_TYPES = {
    "node_id": "varchar",
    "node_name": "varchar",
    "node_type": "varchar",
    "district": "varchar",
    "latitude": "double",
    "longitude": "double",
    "balance_role": "varchar",
    "expected_cadence_s": "integer",
    "pressure_min_bar": "double",
    "pressure_max_bar": "double",
    "is_bidirectional": "boolean",
}
BALANCE_ROLES = ("inlet", "outlet", "consumption", "monitoring")

_DDL = {
    "duckdb": [
        "create schema if not exists raw",
        """create table if not exists raw.sensor_readings (
            "timestamp" timestamptz, node_id varchar, node_name varchar,
            flow_rate double, pressure double, temperature double, volume double,
            quality_score double,
            loaded_at timestamptz not null, batch_id varchar not null, batch_row bigint not null)""",
        """create table if not exists raw.load_batches (
            batch_id varchar primary key, source varchar not null, source_uri varchar,
            content_key varchar not null unique, row_count bigint not null,
            min_timestamp timestamptz, max_timestamp timestamptz,
            loaded_at timestamptz not null)""",
        """create table if not exists raw.node_metadata (
            node_id varchar primary key, node_name varchar, node_type varchar, district varchar,
            latitude double, longitude double, balance_role varchar, expected_cadence_s integer,
            pressure_min_bar double, pressure_max_bar double, is_bidirectional boolean,
            updated_at timestamptz not null)""",
        """create table if not exists raw.extract_watermarks (
            source varchar primary key, watermark timestamptz not null, updated_at timestamptz not null)""",
    ],
    "postgres": [
        "create schema if not exists raw",
        """create table if not exists raw.sensor_readings (
            "timestamp" timestamptz, node_id text, node_name text,
            flow_rate double precision, pressure double precision, temperature double precision,
            volume double precision, quality_score double precision,
            loaded_at timestamptz not null, batch_id text not null, batch_row bigint not null)""",
        "create index if not exists sensor_readings_loaded_at_idx on raw.sensor_readings (loaded_at)",
        'create index if not exists sensor_readings_node_time_idx on raw.sensor_readings (node_id, "timestamp")',
        """create table if not exists raw.load_batches (
            batch_id text primary key, source text not null, source_uri text,
            content_key text not null unique, row_count bigint not null,
            min_timestamp timestamptz, max_timestamp timestamptz,
            loaded_at timestamptz not null)""",
        """create table if not exists raw.node_metadata (
            node_id text primary key, node_name text, node_type text, district text,
            latitude double precision, longitude double precision, balance_role text,
            expected_cadence_s integer, pressure_min_bar double precision,
            pressure_max_bar double precision, is_bidirectional boolean,
            updated_at timestamptz not null)""",
        """create table if not exists raw.extract_watermarks (
            source text primary key, watermark timestamptz not null, updated_at timestamptz not null)""",
    ],
}


def ensure_raw_tables(wh: Warehouse) -> None:
    """Create the raw schema and tables if missing (idempotent, safe to call every run)."""
    apply_ddl(wh, _DDL, "water.raw_ddl")


def lock_raw_writes(wh: Warehouse) -> None:
    """Serialise writers to raw inside the current transaction (PostgreSQL).

    With one writer at a time, a batch's `loaded_at` (taken after the lock) is later than
    every batch committed before it, which is what dbt's ingestion-time watermark relies on.
    DuckDB already allows a single writing process per file.
    """
    if wh.type == "postgres":
        wh.execute("select pg_advisory_xact_lock(hashtext('water.raw_writes'))")


def batch_timestamp(wh: Warehouse):
    """The `loaded_at` for a batch: the database clock, read after taking the write lock."""
    if wh.type == "postgres":
        return wh.scalar("select clock_timestamp()")
    return wh.scalar("select get_current_timestamp()")
