"""Write the GX file context under expectations/gx/ from code (the source of truth).

    python expectations/build_suites.py          # write/refresh the committed JSON + YAML
    python expectations/build_suites.py --check  # exit 1 if the committed files are stale

The gates (expectations/gate.py) only read what this writes: suites (JSON), one validation
definition and one checkpoint per suite and engine, the pandas datasource DuckDB
batches go through, and the PostgreSQL datasource whose connection string has only
`${...}` placeholders (credentials are substituted at run time, never written).
Writing needs a reachable PostgreSQL (GX tests the datasource's connection when adding
it); any database will do, nothing is read from it.

Every expectation names itself in `meta.check` and carries a severity, both as GX's own
`severity` field and as `meta.severity`: `critical` stops the cycle before publishing,
`warning` is recorded and the cycle goes on. The rule used here: critical when the data
is structurally wrong or mathematically impossible (would break consumers), warning
when it is suspicious but possible in a real network.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

os.environ["GX_ANALYTICS_ENABLED"] = "false"

import great_expectations as gx  # noqa: E402
import great_expectations.expectations as gxe  # noqa: E402
from great_expectations.data_context.types.base import ProgressBarsConfig
from great_expectations.expectations.row_conditions import Column  # noqa: E402

from expectations.suites import (  # noqa: E402
    DATA_DOCS_SITE,
    GX_ENGINES,
    SUITES,
    checkpoint_name,
    engine_batch_sql,
    gx_project_root,
    postgres_runtime_environment,
)
from flows.kernel.settings import DBT_PROJECT_DIR, ConfigError, load_settings  # noqa: E402

DATASOURCES = {"duckdb": "water_duckdb", "postgres": "water_postgres"}
# Removed by this builder if present: DuckDB batches used to arrive as pandas DataFrames.
RETIRED_DATASOURCES = ("water_duckdb_batches",)
BATCH_DEFINITION = "new_rows"
# Credentials and the batch boundary only as placeholders (see expectations.gate).
DUCKDB_CONNECTION_STRING = "duckdb:///${WATER_GX_DUCKDB_PATH}"
POSTGRES_CONNECTION_STRING = (
    "postgresql+psycopg2://${PGUSER}:${PGPASSWORD}@${PGHOST}:${PGPORT}/${PGDATABASE}"
    "?options=${WATER_GX_PG_OPTIONS}"
)
# A reading jittered across a window edge puts one more reading in a window than
# its width / cadence; more than that means the node reports faster than registered.
JITTER_READINGS = 1
WARN_REJECTED_SHARE = 0.01
CRITICAL_REJECTED_SHARE = 0.20
RANGE_MOSTLY = 0.99
WINDOW_SECONDS = {"5min": 300, "1hour": 3600, "1day": 86400}
ANOMALY_SEVERITIES = ["info", "warning", "critical"]
WATER_LOSS_PERCENT_RANGE = (-10, 80)
FORECAST_HORIZON_HOURS = 24
RAW_COLUMN_TYPES = {
    # column: the type names DuckDB and PostgreSQL report (lower case) that are accepted
    "timestamp": ["timestamp with time zone"],
    "node_id": ["varchar", "text", "character varying"],
    "node_name": ["varchar", "text", "character varying"],
    "flow_rate": ["double", "double precision"],
    "pressure": ["double", "double precision"],
    "temperature": ["double", "double precision"],
    "volume": ["double", "double precision"],
    "quality_score": ["double", "double precision"],
    "loaded_at": ["timestamp with time zone"],
    "batch_id": ["varchar", "text", "character varying"],
    "batch_row": ["bigint"],
}


def dbt_vars() -> dict[str, Any]:
    """Validation bounds are dbt vars; the raw suite reads the same values."""
    with open(DBT_PROJECT_DIR / "dbt_project.yml") as handle:
        return yaml.safe_load(handle)["vars"]


def expect(cls: type, check: str, severity: str, description: str, **kwargs: Any):
    return cls(
        severity=severity,
        description=description,
        meta={"check": check, "severity": severity},
        **kwargs,
    )


def critical(cls: type, check: str, description: str, **kwargs: Any):
    return expect(cls, check, "critical", description, **kwargs)


def warning(cls: type, check: str, description: str, **kwargs: Any):
    return expect(cls, check, "warning", description, **kwargs)


def not_null(columns: list[str], suffix: str = "present") -> list:
    """Critical not-null checks; `not_nan` for measures (batches read NaN as null)."""
    rule = "is a number (never null or NaN)" if suffix == "not_nan" else "is never null"
    return [
        critical(
            gxe.ExpectColumnValuesToNotBeNull,
            f"{column}_{suffix}",
            f"`{column}` {rule}.",
            column=column,
        )
        for column in columns
    ]


def ordered(measure: str, slack: float) -> list:
    """min <= avg <= max for one measurement (null statistics are skipped).

    `slack` is the dbt var `rounding_slack` (a mean of identical values may differ from them
    in the last bits): one value for the GX gate and the dbt tests."""
    return [
        critical(
            gxe.ExpectColumnValuesToBeBetween,
            f"{measure}_min_le_avg",
            f"min_{measure} <= avg_{measure} (within {slack:g} for rounding).",
            column=f"{measure}_avg_minus_min",
            min_value=-slack,
        ),
        critical(
            gxe.ExpectColumnValuesToBeBetween,
            f"{measure}_avg_le_max",
            f"avg_{measure} <= max_{measure} (within {slack:g} for rounding).",
            column=f"{measure}_max_minus_avg",
            min_value=-slack,
        ),
    ]


def suite_expectations(v: dict[str, Any]) -> dict[str, list]:
    flow_max = float(v["flow_rate_abs_max"])
    return {
        "raw_schema": [
            critical(
                gxe.ExpectColumnDistinctValuesToContainSet,
                "raw_columns_complete",
                "raw.sensor_readings has every column of the contract.",
                column="column_name",
                value_set=sorted(RAW_COLUMN_TYPES),
            ),
            critical(
                gxe.ExpectColumnValuesToBeInSet,
                "raw_columns_known",
                "raw.sensor_readings has no column outside the contract.",
                column="column_name",
                value_set=sorted(RAW_COLUMN_TYPES),
            ),
            critical(
                gxe.ExpectColumnPairValuesToBeInSet,
                "raw_column_types_match_contract",
                "Each raw column has its contract type (DuckDB or PostgreSQL spelling).",
                column_A="column_name",
                column_B="data_type",
                value_pairs_set=[
                    [column, kind] for column, kinds in RAW_COLUMN_TYPES.items() for kind in kinds
                ],
            ),
        ],
        "raw_batch": [
            warning(
                gxe.ExpectTableRowCountToBeBetween,
                "batch_not_empty",
                "Something new was loaded since the previous cycle.",
                min_value=1,
            ),
            *not_null(["loaded_at", "batch_id", "batch_row"]),
            warning(
                gxe.ExpectColumnValuesToNotBeNull,
                "node_id_present",
                f"At least {RANGE_MOSTLY:.0%} of rows name their node.",
                column="node_id",
                mostly=RANGE_MOSTLY,
            ),
            warning(
                gxe.ExpectColumnValuesToNotBeNull,
                "timestamp_present",
                f"At least {RANGE_MOSTLY:.0%} of rows have a timestamp.",
                column="reading_at",
                mostly=RANGE_MOSTLY,
            ),
            warning(
                gxe.ExpectColumnValuesToBeBetween,
                "flow_rate_in_range",
                f"|flow_rate| <= {flow_max:g} L/s for at least {RANGE_MOSTLY:.0%} of rows.",
                column="flow_rate",
                min_value=-flow_max,
                max_value=flow_max,
                mostly=RANGE_MOSTLY,
            ),
            warning(
                gxe.ExpectColumnValuesToBeBetween,
                "pressure_in_range",
                f"Pressure within {v['pressure_min_bar']}..{v['pressure_max_bar']} bar"
                f" for at least {RANGE_MOSTLY:.0%} of rows.",
                column="pressure",
                min_value=float(v["pressure_min_bar"]),
                max_value=float(v["pressure_max_bar"]),
                mostly=RANGE_MOSTLY,
            ),
            warning(
                gxe.ExpectColumnValuesToBeBetween,
                "temperature_in_range",
                f"Temperature within {v['temperature_min_c']}..{v['temperature_max_c']} °C"
                f" for at least {RANGE_MOSTLY:.0%} of rows.",
                column="temperature",
                min_value=float(v["temperature_min_c"]),
                max_value=float(v["temperature_max_c"]),
                mostly=RANGE_MOSTLY,
            ),
            warning(
                gxe.ExpectColumnValuesToBeBetween,
                "volume_not_negative",
                f"Totaliser volume >= 0 for at least {RANGE_MOSTLY:.0%} of rows.",
                column="volume",
                min_value=0.0,
                mostly=RANGE_MOSTLY,
            ),
            warning(
                gxe.ExpectColumnValuesToBeBetween,
                "quality_score_in_range",
                f"quality_score within 0..1 for at least {RANGE_MOSTLY:.0%} of rows.",
                column="quality_score",
                min_value=0.0,
                max_value=1.0,
                mostly=RANGE_MOSTLY,
            ),
            warning(
                gxe.ExpectColumnValuesToBeBetween,
                "timestamp_not_in_future",
                f"Readings are at most {v['max_future_seconds']} s ahead of their load time"
                f" for at least {RANGE_MOSTLY:.0%} of rows.",
                column="seconds_after_load",
                max_value=float(v["max_future_seconds"]),
                mostly=RANGE_MOSTLY,
            ),
            warning(
                gxe.ExpectColumnValuesToBeInSet,
                "rejected_share_below_warning",
                f"Staging rejects at most {WARN_REJECTED_SHARE:.0%} of the batch.",
                column="is_valid",
                value_set=[True],
                mostly=1 - WARN_REJECTED_SHARE,
            ),
            critical(
                gxe.ExpectColumnValuesToBeInSet,
                "rejected_share_below_limit",
                f"Staging rejects at most {CRITICAL_REJECTED_SHARE:.0%} of the batch:"
                " more means a broken source, not a few bad readings.",
                column="is_valid",
                value_set=[True],
                mostly=1 - CRITICAL_REJECTED_SHARE,
            ),
        ],
        "computed_metrics": [
            warning(
                gxe.ExpectTableRowCountToBeBetween,
                "windows_computed",
                "The cycle recomputed at least one window.",
                min_value=1,
            ),
            *not_null(["node_id", "time_window", "window_start", "window_end", "computed_at"]),
            critical(
                gxe.ExpectColumnValuesToBeInSet,
                "time_window_known",
                "time_window is 5min, 1hour or 1day.",
                column="time_window",
                value_set=list(WINDOW_SECONDS),
            ),
            # One check per width: a row condition works on pandas and SQL alike (a column
            # pair set is evaluated row by row in Python on pandas: ~60x slower).
            *(
                critical(
                    gxe.ExpectColumnValuesToBeInSet,
                    f"window_width_{name}",
                    f"A {name} window is {seconds} s long (window_end - window_start).",
                    column="window_seconds",
                    value_set=[seconds],
                    row_condition=Column("time_window") == name,
                )
                for name, seconds in WINDOW_SECONDS.items()
            ),
            critical(
                gxe.ExpectColumnValuesToBeInSet,
                "window_start_aligned",
                "window_start is a multiple of the width since 1970-01-01 UTC.",
                column="window_start_offset_s",
                value_set=[0],
            ),
            critical(
                gxe.ExpectColumnValuesToBeBetween,
                "reading_count_positive",
                "A published window has at least one valid reading.",
                column="reading_count",
                min_value=1,
            ),
            warning(
                gxe.ExpectColumnValuesToBeBetween,
                "reading_count_within_expected",
                f"reading_count <= expected_reading_count + {JITTER_READINGS}"
                " (one reading may cross a window edge by jitter).",
                column="excess_reading_count",
                max_value=JITTER_READINGS,
            ),
            critical(
                gxe.ExpectColumnValuesToBeBetween,
                "quality_score_in_unit_range",
                "quality_score is within 0..1.",
                column="quality_score",
                min_value=0.0,
                max_value=1.0,
            ),
            *not_null(["quality_score"]),
            *ordered("flow_rate", float(v["rounding_slack"])),
            *ordered("pressure", float(v["rounding_slack"])),
            *ordered("temperature", float(v["rounding_slack"])),
            warning(
                gxe.ExpectColumnValuesToBeBetween,
                "no_missing_windows",
                "Nodes that report in this batch have no empty window between two"
                " of their windows (checked where the cadence gives >= 2 readings per window).",
                column="missing_seconds_before",
                max_value=0,
            ),
        ],
        "anomalies": [
            *not_null(["anomaly_id", "node_id", "window_start", "severity", "detected_at"]),
            critical(
                gxe.ExpectColumnValuesToBeInSet,
                "severity_known",
                "severity is info, warning or critical.",
                column="severity",
                value_set=ANOMALY_SEVERITIES,
            ),
        ],
        "network_efficiency": [
            *not_null(["district", "time_window", "window_start", "computed_at"]),
            critical(
                gxe.ExpectColumnValuesToBeInSet,
                "time_window_known",
                "time_window is 1hour or 1day.",
                column="time_window",
                value_set=["1hour", "1day"],
            ),
            warning(
                gxe.ExpectColumnValuesToBeBetween,
                "water_loss_percent_plausible",
                f"Water loss within {WATER_LOSS_PERCENT_RANGE[0]}..{WATER_LOSS_PERCENT_RANGE[1]}"
                " % of system input; outside is a metering or balance problem, not a leak.",
                column="water_loss_percent",
                min_value=float(WATER_LOSS_PERCENT_RANGE[0]),
                max_value=float(WATER_LOSS_PERCENT_RANGE[1]),
            ),
        ],
        "ml_predictions_cache": [
            *not_null(["node_id", "model_id", "prediction_timestamp", "target_timestamp"]),
            *not_null(["predicted_flow_rate", "flow_rate_lower", "flow_rate_upper"], "not_nan"),
            critical(
                gxe.ExpectColumnValuesToBeBetween,
                "horizon_in_range",
                f"horizon_hours is within 1..{FORECAST_HORIZON_HOURS}.",
                column="horizon_hours",
                min_value=1,
                max_value=FORECAST_HORIZON_HOURS,
            ),
            critical(
                gxe.ExpectColumnValuesToBeBetween,
                "lower_le_predicted",
                "flow_rate_lower <= predicted_flow_rate.",
                column="predicted_minus_lower",
                min_value=0.0,
            ),
            critical(
                gxe.ExpectColumnValuesToBeBetween,
                "predicted_le_upper",
                "predicted_flow_rate <= flow_rate_upper.",
                column="upper_minus_predicted",
                min_value=0.0,
            ),
            critical(
                gxe.ExpectColumnValuesToBeInSet,
                "full_horizon",
                f"Each node's newest forecast covers all {FORECAST_HORIZON_HOURS} hours ahead.",
                column="horizon_count",
                value_set=[FORECAST_HORIZON_HOURS],
            ),
        ],
    }


# -- comparing and writing ------------------------------------------------------------------
def _normalise(expectation: Any) -> dict[str, Any]:
    """What a reviewer cares about in an expectation (ids and rendering left out)."""
    config = expectation.configuration if hasattr(expectation, "configuration") else expectation
    data = json.loads(json.dumps(config.to_json_dict(), default=str))
    for key in ("id", "rendered_content"):
        data.pop(key, None)
    return data


def _sync_suite(context: Any, name: str, desired: list) -> bool:
    """Create or update one suite, keeping the ids of unchanged expectations."""
    try:
        suite = context.suites.get(name)
    except Exception:  # noqa: BLE001 - GX raises DataContextError for a missing suite
        suite = context.suites.add(gx.ExpectationSuite(name=name))
    existing = {e.meta.get("check"): e for e in suite.expectations}
    if [_normalise(e) for e in suite.expectations] == [_normalise(e) for e in desired]:
        return False
    suite.expectations = []
    for expectation in desired:
        added = suite.add_expectation(expectation)
        previous = existing.get(expectation.meta["check"])
        if previous is not None:
            added.id = previous.id  # unchanged checks keep their id: smaller diffs
    suite.save()
    return True


def _sync_asset(context: Any, engine: str, name: str) -> tuple[Any, list[str]]:
    """The suite's query asset in the engine's SQL datasource: the engine computes every
    metric where the data is. A changed query is updated in place (ids kept)."""
    datasource = context.data_sources.get(DATASOURCES[engine])
    query = engine_batch_sql(SUITES[name], engine)
    if name in datasource.get_asset_names():
        asset = datasource.get_asset(name)
        if asset.query != query:
            asset.query = query
            context.update_datasource(datasource)
            return asset, [f"query {DATASOURCES[engine]}.{name}"]
        return asset, []
    asset = datasource.add_query_asset(name, query=query)
    asset.add_batch_definition_whole_table(BATCH_DEFINITION)
    return asset, [f"asset {DATASOURCES[engine]}.{name}"]


def _result_format(name: str) -> dict[str, Any]:
    # Row keys in failure examples, where the batch has them.
    keys = {
        "raw_batch": ["batch_id", "batch_row"],
        "computed_metrics": ["node_id", "time_window", "window_start"],
        "anomalies": ["anomaly_id"],
        "network_efficiency": ["district", "time_window", "window_start"],
        "ml_predictions_cache": ["node_id", "model_id", "target_timestamp"],
    }.get(name)
    fmt: dict[str, Any] = {"result_format": "SUMMARY", "partial_unexpected_count": 5}
    if keys:
        fmt["unexpected_index_column_names"] = keys
    return fmt


def _sync_settings(context: Any) -> list[str]:

    changes = []
    progress_bars = context.variables.progress_bars
    if isinstance(progress_bars, dict):  # read back from the YAML as a plain dict
        progress_bars = ProgressBarsConfig(**progress_bars)
    if getattr(progress_bars, "globally", None) is not False:
        context.variables.progress_bars = ProgressBarsConfig(globally=False)
        changes.append("progress bars off")
    sites = context.variables.data_docs_sites
    if sites[DATA_DOCS_SITE].get("show_how_to_buttons", True):
        sites[DATA_DOCS_SITE]["show_how_to_buttons"] = False
        context.variables.data_docs_sites = sites
        changes.append("data docs without how-to buttons")
    if changes:
        context.variables.save()
    return changes


def _sync_datasources(context: Any) -> list[str]:
    existing = context.data_sources.all()
    changes = []
    for retired in RETIRED_DATASOURCES:
        if retired in existing:
            context.data_sources.delete(retired)
            changes.append(f"datasource {retired} removed")
    if DATASOURCES["duckdb"] not in existing:
        context.data_sources.add_sql(
            DATASOURCES["duckdb"], connection_string=DUCKDB_CONNECTION_STRING
        )
        changes.append(f"datasource {DATASOURCES['duckdb']}")
    if DATASOURCES["postgres"] not in existing:
        context.data_sources.add_postgres(
            DATASOURCES["postgres"], connection_string=POSTGRES_CONNECTION_STRING
        )
        changes.append(f"datasource {DATASOURCES['postgres']}")
    return changes


def _sync_validation(context: Any, name: str, engine: str) -> list[str]:
    """One validation definition and one checkpoint (with a Data Docs update) per suite
    and engine, named `<suite>.<engine>`."""
    asset, changes = _sync_asset(context, engine, name)
    label = checkpoint_name(name, engine)
    batch_definition = asset.get_batch_definition(BATCH_DEFINITION)
    try:
        definition = context.validation_definitions.get(label)
        fresh = (
            definition.suite.name == name
            and definition.data.data_asset.name == name
            and definition.data.data_asset.datasource.name == DATASOURCES[engine]
        )
    except Exception:  # noqa: BLE001 - GX raises several types for a missing file
        definition, fresh = None, False
    if not fresh:
        if definition is not None:
            context.validation_definitions.delete(label)
        definition = context.validation_definitions.add(
            gx.ValidationDefinition(
                name=label, data=batch_definition, suite=context.suites.get(name)
            )
        )
        changes.append(f"validation definition {label}")
    wanted = gx.Checkpoint(
        name=label,
        validation_definitions=[definition],
        actions=[
            gx.checkpoint.UpdateDataDocsAction(name="update_data_docs", site_names=[DATA_DOCS_SITE])
        ],
        result_format=_result_format(name),
    )
    try:
        checkpoint = context.checkpoints.get(label)
        fresh = (
            fresh
            and checkpoint.result_format == wanted.result_format
            and [v.id for v in checkpoint.validation_definitions] == [definition.id]
        )
    except Exception:  # noqa: BLE001 - missing checkpoint
        checkpoint, fresh = None, False
    if not fresh:
        if checkpoint is not None:
            context.checkpoints.delete(label)
        context.checkpoints.add(wanted)
        changes.append(f"checkpoint {label}")
    return changes


def build(root: Path) -> list[str]:
    """Bring the file context under `root` in line with this file; return what changed."""
    pg_target = load_settings().target("postgres")
    runtime = {
        **postgres_runtime_environment(pg_target, since=datetime.now(UTC)),
        # GX opens a datasource when adding it: an empty in-memory database will do.
        "WATER_GX_DUCKDB_PATH": ":memory:",
    }
    context = gx.get_context(mode="file", project_root_dir=str(root), runtime_environment=runtime)
    changes = _sync_settings(context) + _sync_datasources(context)
    desired = suite_expectations(dbt_vars())
    missing = set(SUITES) ^ set(desired)
    if missing:
        raise SystemExit(f"suites without expectations or spec: {sorted(missing)}")
    for name, expectations in desired.items():
        if _sync_suite(context, name, expectations):
            changes.append(f"suite {name}")
        for engine in GX_ENGINES:
            changes += _sync_validation(context, name, engine)
    return changes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only report stale files")
    args = parser.parse_args(argv)
    root = gx_project_root()
    try:
        if args.check:
            # Build on a copy: whatever would change there is stale here.
            with tempfile.TemporaryDirectory() as scratch:
                copy = Path(scratch)
                if (root / "gx").is_dir():
                    shutil.copytree(
                        root / "gx", copy / "gx", ignore=shutil.ignore_patterns("uncommitted")
                    )
                changes = build(copy)
        else:
            changes = build(root)
    except ConfigError as exc:
        print(f"build_suites: {exc}", file=sys.stderr)
        return 1
    for change in changes:
        print(("stale: " if args.check else "wrote: ") + change)
    print(f"{len(changes)} change(s) for {root / 'gx'}")
    return 1 if args.check and changes else 0


if __name__ == "__main__":
    sys.exit(main())
