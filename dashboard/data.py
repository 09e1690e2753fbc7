"""What the dashboard reads: the published tables, through the API's read-only warehouse.

Every function takes an open `api.store.ReadOnlyWarehouse` (DuckDB opened read-only,
PostgreSQL sessions read-only with a statement timeout) and returns a DataFrame or plain values;
nothing here writes. Where the API already answers the question (node status, the model
registry, the newest forecast) its query function is reused, so the dashboard and the API
cannot disagree. A table that a later stage builds and that does not exist yet gives an empty
frame, which the pages show as "not built yet".
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import pandas as pd

from api import models_registry, queries
from api.store import ReadOnlyWarehouse
from expectations.results import run_verdict
from flows.kernel.contracts import NETWORK_DISTRICT, SERIES_COLUMNS
from flows.kernel.settings import PUBLISHED_SCHEMA
from ml.metrics import point_metrics

S = PUBLISHED_SCHEMA
ML_SCHEMA = "ml"  # dbt's ml/ models (forecast outcomes) live beside the ML source tables

NODE_COLUMNS = (
    "node_id",
    "node_name",
    "node_type",
    "district",
    "latitude",
    "longitude",
    "balance_role",
    "last_reading_at",
)
EFFICIENCY_COLUMNS = (
    "district",
    "window_start",
    "local_date",
    "system_input_volume_m3",
    "metered_consumption_m3",
    "water_loss_m3",
    "water_loss_percent",
    "efficiency_percent",
    "min_night_flow_lps",
    "min_night_flow_baseline_lps",
    "min_night_flow_change_percent",
    "is_complete",
    "incomplete_reasons",
)
QUALITY_COLUMNS = (
    "node_id",
    "window_start",
    "completeness",
    "validity",
    "consistency",
    "timeliness",
    "overall_score",
    "received_count",
    "rejected_count",
    "quality_notes",
)
JOB_COLUMNS = (
    "job_id",
    "job_type",
    "status",
    "started_at",
    "completed_at",
    "duration_seconds",
    "triggered_by",
    "rows_in",
    "rows_rejected",
    "error_message",
)


def _frame(rows: list[dict[str, Any]] | None, columns: tuple[str, ...] = ()) -> pd.DataFrame:
    frame = pd.DataFrame(rows or [])
    return frame if len(frame) else pd.DataFrame(columns=list(columns))


def _select(
    wh: ReadOnlyWarehouse,
    table: str,
    columns: tuple[str, ...],
    where: str,
    params: dict[str, Any] | None,
    schema: str = S,
) -> pd.DataFrame:
    """`select columns from table where …` (constant fragments, bound values), or an empty
    frame with those columns while the table does not exist. Columns a table lacks (an older
    warehouse) are left out rather than failing the page."""
    if not wh.relation_exists(schema, table):
        return pd.DataFrame(columns=list(columns))
    present = wh.columns(schema, table)
    chosen = [c for c in columns if c in present]
    return wh.query_df(f"select {', '.join(chosen)} from {schema}.{table} {where}", params)


def data_end(wh: ReadOnlyWarehouse) -> datetime | None:
    """The newest 5-minute window end: the dashboard's "now" for its look-back spans, so a
    warehouse of historical data shows its last day, not an empty today."""
    return queries.latest_window_end(wh, "5min")


# -- network overview ------------------------------------------------------------------------
def nodes(wh: ReadOnlyWarehouse, now: datetime) -> pd.DataFrame:
    """Every node with its metadata and the API's status (ok / stale / anomaly / no_data)."""
    status = _frame(queries.nodes(wh, now), ("node_id", "status"))
    meta = _select(wh, "nodes", NODE_COLUMNS, "order by node_id", None)
    if not len(meta):
        return meta.assign(status=pd.Series(dtype=str))
    return meta.merge(status[["node_id", "status"]], on="node_id", how="left")


EVENT_COLUMNS = (
    "event_id",
    "status",
    "severity",
    "anomaly_type",
    "measurement_type",
    "subject",
    "district",
    "started_at",
    "last_seen_at",
    "ended_at",
    "window_count",
    "peak_actual_value",
    "peak_expected_value",
)


def events(wh: ReadOnlyWarehouse, since: datetime) -> pd.DataFrame:
    """Incidents from the `anomaly_events` mart that are still open or were seen since
    `since`, warnings and criticals only (shorter conditions stay `info` there), newest first."""
    frame = _select(
        wh,
        "anomaly_events",
        EVENT_COLUMNS,
        "where severity in ('critical', 'warning') and (status = 'open' or last_seen_at >= %(since)s)"
        " order by last_seen_at desc",
        {"since": since},
    )
    for column in ("started_at", "last_seen_at", "ended_at"):
        frame[column] = pd.to_datetime(frame[column], utc=True)
    return frame


def anomalies(
    wh: ReadOnlyWarehouse,
    since: datetime,
    until: datetime | None = None,
    node_id: str | None = None,
    severity: str | None = None,
    limit: int = 500,
) -> pd.DataFrame:
    """Anomalies with window_start in [since, until), newest first (the API's query)."""
    rows = queries.anomalies(wh, since, node_id, severity, None, limit) or []
    frame = _frame(rows, ("anomaly_id", "node_id", "window_start", "anomaly_type", "severity"))
    if len(frame):
        frame["window_start"] = pd.to_datetime(frame["window_start"], utc=True)
        if until is not None:
            frame = frame[frame["window_start"] < pd.Timestamp(until)]
    return frame.reset_index(drop=True)


# -- node ------------------------------------------------------------------------------------
def node_series(
    wh: ReadOnlyWarehouse, node_id: str, window: str, start: datetime, end: datetime
) -> pd.DataFrame:
    """The node's windows in [start, end), oldest first (the API's history query)."""
    rows = queries.metrics_history(wh, node_id, window, start, end, None, 5000)
    frame = _frame(rows, SERIES_COLUMNS)
    for column in ("window_start", "window_end"):
        frame[column] = pd.to_datetime(frame[column], utc=True)
    return frame


def forecast(wh: ReadOnlyWarehouse, node_id: str) -> pd.DataFrame:
    """The active model's newest 24-hour forecast with its interval (the API's query)."""
    frame = _frame(
        queries.predictions(wh, node_id),
        ("target_timestamp", "flow_rate_predicted", "flow_rate_lower", "flow_rate_upper"),
    )
    frame["target_timestamp"] = pd.to_datetime(frame["target_timestamp"], utc=True)
    return frame


def forecast_outcomes(wh: ReadOnlyWarehouse, node_id: str | None, since: datetime) -> pd.DataFrame:
    """Past forecasts against what then happened (dbt model `ml_forecast_outcomes`)."""
    columns = (
        "node_id",
        "target_timestamp",
        "horizon_hours",
        "flow_rate_predicted",
        "flow_rate_lower",
        "flow_rate_upper",
        "flow_rate_actual",
        "flow_rate_seasonal_naive",
    )
    where = "where target_timestamp >= %(since)s"
    params: dict[str, Any] = {"since": since}
    if node_id is not None:
        where += " and node_id = %(n)s"
        params["n"] = node_id
    frame = _select(
        wh, "ml_forecast_outcomes", columns, where + " order by target_timestamp", params, ML_SCHEMA
    )
    frame["target_timestamp"] = pd.to_datetime(frame["target_timestamp"], utc=True)
    return frame


def skill_by_horizon(outcomes: pd.DataFrame) -> pd.DataFrame:
    """MAE, MASE (vs seasonal-naive) and interval coverage per forecast horizon, with the
    evaluation's own maths (ml.metrics.point_metrics)."""
    out = []
    for horizon, group in outcomes.groupby("horizon_hours", sort=True):
        m = point_metrics(
            group["flow_rate_actual"].to_numpy(dtype=float),
            group["flow_rate_predicted"].to_numpy(dtype=float),
            naive=group["flow_rate_seasonal_naive"].to_numpy(dtype=float),
            lower=group["flow_rate_lower"].to_numpy(dtype=float),
            upper=group["flow_rate_upper"].to_numpy(dtype=float),
        )
        out.append(
            {
                "horizon_hours": int(horizon),
                "n": int(m["n"]),
                "mae": m["mae"],
                "mase": m["mase"],
                "interval_coverage": m.get("interval_coverage"),
            }
        )
    return pd.DataFrame(
        out, columns=["horizon_hours", "n", "mae", "mase", "interval_coverage"]
    ).query("n > 0")


# -- district --------------------------------------------------------------------------------
def districts(wh: ReadOnlyWarehouse) -> list[str]:
    """Districts with a water balance, the whole network first."""
    if not wh.relation_exists(S, "network_efficiency"):
        return []
    names = sorted(
        str(r[0]) for r in wh.query(f"select distinct district from {S}.network_efficiency")
    )
    return sorted(names, key=lambda d: d != NETWORK_DISTRICT)


def daily_balance(wh: ReadOnlyWarehouse, district: str) -> pd.DataFrame:
    """The district's daily water balance rows (local days), oldest first."""
    frame = _select(
        wh,
        "network_efficiency",
        EFFICIENCY_COLUMNS,
        "where district = %(d)s and time_window = '1day' order by window_start",
        {"d": district},
    )
    frame["window_start"] = pd.to_datetime(frame["window_start"], utc=True)
    return frame


def night_flow_alarms(wh: ReadOnlyWarehouse, district: str, since: datetime) -> pd.DataFrame:
    """The district's night-flow anomalies (the leak onsets the detector reported)."""
    frame = _select(
        wh,
        "anomalies",
        ("window_start", "anomaly_type", "severity", "actual_value", "expected_value"),
        "where district = %(d)s and window_start >= %(since)s and anomaly_type like %(t)s"
        " order by window_start",
        {"d": district, "since": since, "t": "%night%"},
    )
    frame["window_start"] = pd.to_datetime(frame["window_start"], utc=True)
    return frame


# -- data quality ----------------------------------------------------------------------------
def quality_daily(wh: ReadOnlyWarehouse, since: datetime) -> pd.DataFrame:
    """data_quality_metrics per node and UTC day since `since`."""
    frame = _select(
        wh,
        "data_quality_metrics",
        QUALITY_COLUMNS,
        "where time_window = '1day' and window_start >= %(since)s order by node_id, window_start",
        {"since": since},
    )
    frame["window_start"] = pd.to_datetime(frame["window_start"], utc=True)
    return frame


def gate_runs(wh: ReadOnlyWarehouse, limit: int = 20) -> pd.DataFrame:
    """The latest quality-gate runs with the platform's verdict: a failed `warning`
    expectation is recorded but the run passed; only a `critical` failure fails it."""
    columns = ["run_id", "checked_at", "stages", "checks", "critical_failed", "warning_failed"]
    if not wh.relation_exists(S, "quality_checks"):
        return pd.DataFrame(columns=[*columns, "verdict"])
    frame = wh.query_df(
        "select run_id, max(checked_at) as checked_at, string_agg(distinct stage, '+') as stages,"
        " count(*) as checks,"
        " sum(case when status = 'failed' and severity = 'critical' then 1 else 0 end) as critical_failed,"
        " sum(case when status = 'failed' and severity = 'warning' then 1 else 0 end) as warning_failed"
        f" from {S}.quality_checks group by run_id order by max(checked_at) desc limit %(limit)s",
        {"limit": limit},
    )
    for column in ("checks", "critical_failed", "warning_failed"):
        frame[column] = frame[column].astype(int)
    frame["verdict"] = [
        run_verdict(c, w)
        for c, w in zip(frame["critical_failed"], frame["warning_failed"], strict=True)
    ]
    return frame


def gate_failures(wh: ReadOnlyWarehouse, run_id: str) -> pd.DataFrame:
    """The failed expectations of one gate run, critical first."""
    return _select(
        wh,
        "quality_checks",
        (
            "stage",
            "suite",
            "expectation",
            "severity",
            "status",
            "observed_value",
            "unexpected_count",
        ),
        "where run_id = %(r)s and status <> 'passed'"
        " order by case severity when 'critical' then 0 else 1 end, suite, expectation",
        {"r": run_id},
    )


# -- pipeline health -------------------------------------------------------------------------
def jobs(wh: ReadOnlyWarehouse, limit: int = 50) -> pd.DataFrame:
    """The newest processing_jobs rows (cycles, backfills, evaluations, retraining)."""
    if not wh.relation_exists(S, "processing_jobs"):
        return pd.DataFrame(columns=list(JOB_COLUMNS))
    columns = ", ".join(("cast(job_id as varchar) as job_id", *JOB_COLUMNS[1:]))
    frame = wh.query_df(
        f"select {columns} from {S}.processing_jobs"
        " order by started_at desc nulls last, created_at desc limit %(limit)s",
        {"limit": limit},
    )
    frame["started_at"] = pd.to_datetime(frame["started_at"], utc=True)
    return frame


def models(wh: ReadOnlyWarehouse) -> pd.DataFrame:
    """The model registry with each model's latest scores (the API's /models/status rows)."""
    rows = models_registry.models(wh) or []
    flat = [
        {
            "model_type": m["model_type"],
            "version": m["version"],
            "status": m["status"],
            "created_at": m.get("created_at"),
            "scores_basis": m["scores_basis"],
            # One text column: each model type has its own scores (MASE, AUC, alert rate…).
            "scores": ", ".join(f"{k} {v:.4g}" for k, v in sorted(m["scores"].items())),
        }
        for m in rows
    ]
    return _frame(flat, ("model_type", "version", "status", "created_at", "scores_basis", "scores"))


def since(end: datetime | None, span: timedelta) -> datetime | None:
    return None if end is None else end - span
