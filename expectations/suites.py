"""The batches the GX suites check (one query per suite, both engines) and where the GX
project lives. expectations/build_suites.py writes the suites from these; gate.py runs them.
"""

from __future__ import annotations

import logging
import os
import urllib.parse
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from flows.kernel.contracts import STAGING_SCHEMA
from flows.kernel.settings import PROJECT_ROOT, PUBLISHED_SCHEMA, Target

log = logging.getLogger(__name__)


SEVERITIES = ("critical", "warning")


STAGING_READINGS = "stg_raw__sensor_readings"


# `None` as a batch boundary means "everything": a time before any reading.
BEGINNING = datetime(1900, 1, 1, tzinfo=UTC)


# The connection setting the committed PostgreSQL query assets read the boundary from.
PG_SINCE_SETTING = "water.gx_since"


PG_SINCE_SQL = f"cast(current_setting('{PG_SINCE_SETTING}') as timestamptz)"
# The DuckDB session variable the committed DuckDB query assets read the boundary from.
DUCKDB_SINCE_VARIABLE = "water_gx_since"
DUCKDB_SINCE_SQL = f"cast(getvariable('{DUCKDB_SINCE_VARIABLE}') as timestamptz)"


GX_ENGINES = ("duckdb", "postgres")


DATA_DOCS_SITE = "local_site"


class QualityError(RuntimeError):
    """The gate could not run (bad arguments, unsupported target, broken GX project)."""


# -- the batches the suites check ----------------------------------------------------------
# One SELECT per suite, written once: `%(since)s` is replaced by the session's boundary in
# the committed query assets (PG_SINCE_SQL, DUCKDB_SINCE_SQL). Derived columns
# (`*_minus_*`, offsets, gaps) let plain column expectations express row rules on both
# engines; their names say what they measure.
@dataclass(frozen=True)
class SuiteSpec:
    name: str
    stage: str
    relation: tuple[str, str]  # must exist, else the suite is skipped (not failed)
    scope_column: str | None  # the column compared with the batch boundary
    batch_sql: str
    description: str
    counts_rows: bool = True  # its batch counts in GateResult.checked_rows
    optional: bool = False  # a later mart: skipped (not failed) while its table is missing


SUITES: dict[str, SuiteSpec] = {
    spec.name: spec
    for spec in (
        SuiteSpec(
            name="raw_schema",
            stage="raw",
            relation=("raw", "sensor_readings"),
            scope_column=None,
            counts_rows=False,
            description="Columns and types of raw.sensor_readings, read from the catalog.",
            batch_sql="""
select
    column_name,
    lower(data_type) as data_type
from information_schema.columns
where table_schema = 'raw' and table_name = 'sensor_readings'
""",
        ),
        SuiteSpec(
            name="raw_batch",
            stage="raw",
            relation=(STAGING_SCHEMA, STAGING_READINGS),
            scope_column="loaded_at",
            description=(
                "The rows loaded since the previous cycle, as staging reads them "
                "(raw is read only through stg_raw__sensor_readings; NaN is null there)."
            ),
            batch_sql="""
select
    node_id,
    reading_at,
    flow_rate,
    pressure,
    temperature,
    volume,
    quality_score,
    loaded_at,
    batch_id,
    batch_row,
    is_valid,
    extract(epoch from reading_at - loaded_at) as seconds_after_load
from water_staging.stg_raw__sensor_readings
where loaded_at > %(since)s
""",
        ),
        SuiteSpec(
            name="computed_metrics",
            stage="marts",
            relation=(PUBLISHED_SCHEMA, "computed_metrics"),
            scope_column="computed_at",
            description="Windows recomputed since the previous cycle.",
            batch_sql="""
select
    node_id,
    time_window,
    window_start,
    window_end,
    window_seconds,
    window_start_epoch
        - floor(window_start_epoch / nullif(window_seconds, 0)) * window_seconds
        as window_start_offset_s,
    reading_count,
    reading_count - expected_reading_count as excess_reading_count,
    quality_score,
    avg_flow_rate - min_flow_rate as flow_rate_avg_minus_min,
    max_flow_rate - avg_flow_rate as flow_rate_max_minus_avg,
    avg_pressure - min_pressure as pressure_avg_minus_min,
    max_pressure - avg_pressure as pressure_max_minus_avg,
    avg_temperature - min_temperature as temperature_avg_minus_min,
    max_temperature - avg_temperature as temperature_max_minus_avg,
    -- Silence between consecutive windows of a node; only where the node's cadence
    -- puts at least two readings in every window (slower nodes skip windows by design).
    case
        when expected_reading_count >= 2
            then extract(epoch from window_start - lag(window_end) over (
                partition by node_id, time_window order by window_start
            ))
    end as missing_seconds_before,
    computed_at
from (
    select
        *,
        extract(epoch from window_end - window_start) as window_seconds,
        extract(epoch from window_start) as window_start_epoch
    from water_infrastructure.computed_metrics
    where computed_at > %(since)s
) as batch
""",
        ),
        SuiteSpec(
            name="anomalies",
            stage="marts",
            optional=True,
            relation=(PUBLISHED_SCHEMA, "anomalies"),
            scope_column="evaluated_at",
            description="Anomalies (re)evaluated since the previous cycle.",
            batch_sql="""
select
    anomaly_id,
    node_id,
    window_start,
    severity,
    detected_at,
    evaluated_at
from water_infrastructure.anomalies
where evaluated_at > %(since)s
""",
        ),
        SuiteSpec(
            name="network_efficiency",
            stage="marts",
            optional=True,
            relation=(PUBLISHED_SCHEMA, "network_efficiency"),
            scope_column="computed_at",
            description="Water-balance rows recomputed since the previous cycle.",
            batch_sql="""
select
    district,
    time_window,
    window_start,
    water_loss_percent,
    is_complete,
    computed_at
from water_infrastructure.network_efficiency
where computed_at > %(since)s
""",
        ),
        SuiteSpec(
            name="ml_predictions_cache",
            stage="marts",
            optional=True,
            relation=(PUBLISHED_SCHEMA, "ml_predictions_cache"),
            scope_column="created_at",
            description="Forecasts written since the previous cycle.",
            batch_sql="""
select
    node_id,
    model_id,
    prediction_timestamp,
    target_timestamp,
    horizon_hours,
    -- NaN is a missing forecast on both engines (pandas already reads it as null).
    nullif(predicted_flow_rate, cast('NaN' as double precision)) as predicted_flow_rate,
    nullif(flow_rate_lower, cast('NaN' as double precision)) as flow_rate_lower,
    nullif(flow_rate_upper, cast('NaN' as double precision)) as flow_rate_upper,
    predicted_flow_rate - flow_rate_lower as predicted_minus_lower,
    flow_rate_upper - predicted_flow_rate as upper_minus_predicted,
    -- Horizons of each node's newest forecast (older ones are partly overwritten by it).
    case
        when prediction_timestamp = max(prediction_timestamp) over (
            partition by node_id, model_id
        )
            then count(*) over (partition by node_id, model_id, prediction_timestamp)
    end as horizon_count,
    created_at
from water_infrastructure.ml_predictions_cache
where created_at > %(since)s
""",
        ),
    )
}


STAGES: dict[str, tuple[str, ...]] = {
    stage: tuple(name for name, spec in SUITES.items() if spec.stage == stage)
    for stage in ("raw", "marts")
}


def engine_batch_sql(spec: SuiteSpec, engine: str) -> str:
    """The committed query of one engine: the boundary comes from the session."""
    since = {"postgres": PG_SINCE_SQL, "duckdb": DUCKDB_SINCE_SQL}[engine]
    return spec.batch_sql.replace("%(since)s", since).strip()


# -- the GX project ------------------------------------------------------------------------
def gx_project_root() -> Path:
    """Folder holding the GX file context `gx/` (WATER_GX_ROOT, default `expectations/`)."""
    return Path(os.environ.get("WATER_GX_ROOT") or PROJECT_ROOT / "expectations")


def data_docs_index() -> Path:
    return gx_project_root() / "gx" / "uncommitted" / "data_docs" / DATA_DOCS_SITE / "index.html"


def checkpoint_name(suite: str, engine: str) -> str:
    return f"{suite}.{engine}"


def postgres_runtime_environment(target: Target, since: datetime) -> dict[str, str]:
    """Values for the `${...}` placeholders of the committed PostgreSQL datasource.

    Kept in memory only: GX substitutes them when it connects; nothing is written.
    """
    parts = target.pg_dsn_parts
    options = f"-c timezone=UTC -c {PG_SINCE_SETTING}={since.astimezone(UTC).isoformat()}"
    return {
        "PGHOST": parts.get("host", "127.0.0.1"),
        "PGPORT": str(parts.get("port", "5432")),
        "PGUSER": urllib.parse.quote(parts.get("user", "postgres"), safe=""),
        "PGDATABASE": urllib.parse.quote(parts.get("dbname", "postgres"), safe=""),
        "PGPASSWORD": urllib.parse.quote(os.environ.get("PGPASSWORD", ""), safe=""),
        "WATER_GX_PG_OPTIONS": urllib.parse.quote(options, safe=""),
    }


def duckdb_runtime_environment(target: Target) -> dict[str, str]:
    """The value of the committed DuckDB datasource's `${WATER_GX_DUCKDB_PATH}`."""
    return {"WATER_GX_DUCKDB_PATH": str(target.duckdb_path or "")}
