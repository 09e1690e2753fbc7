"""Scoring with the active models: flow forecasts, ML anomalies, leakage estimates.

Forecasts land in `water_infrastructure.ml_predictions_cache`, one row per (model_id, node_id,
target_timestamp): the latest forecast for that hour (a later origin replaces an earlier one;
the same origin again changes nothing). Columns: prediction_id (md5 of the key),
model_id, node_id, prediction_timestamp (the forecast is as of this instant: the end of the
node's latest complete hour), target_timestamp (start of the forecast hour), horizon_hours
(1..24), predicted_flow_rate, flow_rate_lower, flow_rate_upper (the interval), confidence_score
(its nominal coverage, 0.9), created_at (when this version of the row was written).

On duckdb (and bigquery) that table is the dbt Python model
`models/ml/scoring_python/ml_predictions_cache.py`, which calls `forecast_cache_rows` below;
on postgres `score_latest` calls the same function, writes `ml.flow_forecasts` and runs the
SQL model that publishes it.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pandas as pd

from flows.kernel.dbt_runner import run_dbt
from flows.kernel.settings import Target
from flows.kernel.warehouse import Warehouse, connect
from ml.config import MLConfig
from ml.features import (
    anomaly_design,
    forecast_design,
    leakage_design,
    normalise_feature_frame,
    read_features,
    read_leakage_features,
    scoring_pairs,
)
from ml.registry import active_model, ensure_ml_tables, load_model, verify_artifact
from ml.store import upsert_frame

log = logging.getLogger(__name__)

CACHE_COLUMNS = (
    "prediction_id",
    "model_id",
    "node_id",
    "prediction_timestamp",
    "target_timestamp",
    "horizon_hours",
    "predicted_flow_rate",
    "flow_rate_lower",
    "flow_rate_upper",
    "confidence_score",
    "created_at",
)
CACHE_KEY = ("model_id", "node_id", "target_timestamp")
_CACHE_COMPARED = (
    "prediction_timestamp",
    "predicted_flow_rate",
    "flow_rate_lower",
    "flow_rate_upper",
)
_DECIMALS = 6


@dataclass
class ScoringResult:
    target: str
    forecast_model_id: str | None = None
    forecasts_written: int = 0
    forecasts_current: int = 0
    nodes_forecast: int = 0
    nodes_skipped: dict[str, int] = field(default_factory=dict)
    anomaly_model_id: str | None = None
    windows_scored: int = 0
    anomalies_flagged: int = 0
    leakage_model_id: str | None = None
    leakage_estimates: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def summary(self) -> str:
        skipped = ", ".join(
            f"{v} {k.replace('_', ' ')}" for k, v in self.nodes_skipped.items() if v
        )
        parts = [
            f"forecast: {self.nodes_forecast} node(s), {self.forecasts_current} current row(s),"
            f" {self.forecasts_written} written now"
            + (f" (skipped: {skipped})" if skipped else ""),
            f"anomaly: {self.windows_scored} window(s) scored, {self.anomalies_flagged} flagged",
            f"leakage: {self.leakage_estimates} estimate(s)",
        ]
        text = "; ".join(parts)
        return text + ("; " + "; ".join(self.notes) if self.notes else "")


def empty_cache_frame() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "prediction_id": pd.Series(dtype=str),
            "model_id": pd.Series(dtype=str),
            "node_id": pd.Series(dtype=str),
            "prediction_timestamp": pd.Series(dtype="datetime64[us, UTC]"),
            "target_timestamp": pd.Series(dtype="datetime64[us, UTC]"),
            "horizon_hours": pd.Series(dtype="int32"),
            "predicted_flow_rate": pd.Series(dtype=float),
            "flow_rate_lower": pd.Series(dtype=float),
            "flow_rate_upper": pd.Series(dtype=float),
            "confidence_score": pd.Series(dtype=float),
            "created_at": pd.Series(dtype="datetime64[us, UTC]"),
        }
    )


def forecast_cache_rows(
    features: pd.DataFrame,
    registry: pd.DataFrame | list[dict[str, Any]],
    existing: pd.DataFrame | None = None,
    config: MLConfig | None = None,
    now: datetime | None = None,
) -> pd.DataFrame:
    """Forecast rows for the next 24 hours of every eligible node, with the active model.

    `features`: ml_features rows with hours_after_origin between 0 and 24. `registry`: rows
    of ml_models (the active flow_forecast model is used; none -> no rows). `existing`: rows
    already cached; rows identical to them are dropped, so scoring twice writes nothing."""
    config = config or MLConfig.from_env()
    records = registry.to_dict(orient="records") if isinstance(registry, pd.DataFrame) else registry
    active = [r for r in records if r["model_type"] == "flow_forecast" and r["status"] == "active"]
    if not active or features.empty:
        return empty_cache_frame()
    record = active[0]
    model = load_model(record)
    features = normalise_feature_frame(features)
    pairs, _ = scoring_pairs(features, config.min_history_hours, config.max_origin_lag_hours)
    design = forecast_design(features, pairs)
    if design.empty:
        return empty_cache_frame()
    predicted = model.predict(design)
    target_ts = design["target_start"]
    rows = pd.DataFrame(
        {
            "model_id": record["model_id"],
            "node_id": design["node_id"].astype(object),
            "prediction_timestamp": design["origin_start"] + pd.Timedelta(hours=1),
            "target_timestamp": target_ts,
            "horizon_hours": design["horizon_hours"].astype("int32"),
            "predicted_flow_rate": predicted["predicted"].round(_DECIMALS),
            "flow_rate_lower": predicted["lower"].round(_DECIMALS),
            "flow_rate_upper": predicted["upper"].round(_DECIMALS),
            "confidence_score": float(model.coverage),
        }
    )
    rows.insert(
        0,
        "prediction_id",
        [
            prediction_id(record["model_id"], node, ts)
            for node, ts in zip(rows["node_id"], rows["target_timestamp"], strict=True)
        ],
    )
    rows["created_at"] = pd.Timestamp(now or datetime.now(UTC))
    rows = rows.astype(
        {
            "prediction_timestamp": "datetime64[us, UTC]",
            "target_timestamp": "datetime64[us, UTC]",
            "created_at": "datetime64[us, UTC]",
        }
    )
    if existing is not None and not existing.empty:
        rows = _drop_unchanged(rows, existing)
    return rows[list(CACHE_COLUMNS)].reset_index(drop=True)


def prediction_id(model_id: str, node_id: str, target_timestamp: pd.Timestamp) -> str:
    stamp = pd.Timestamp(target_timestamp).tz_convert("UTC").strftime("%Y-%m-%dT%H:%M:%SZ")
    return hashlib.md5(f"{model_id}|{node_id}|{stamp}".encode(), usedforsecurity=False).hexdigest()


def _drop_unchanged(rows: pd.DataFrame, existing: pd.DataFrame) -> pd.DataFrame:
    old = existing[list(CACHE_KEY + _CACHE_COMPARED)].copy()
    for column in ("target_timestamp", "prediction_timestamp"):
        old[column] = pd.to_datetime(old[column], utc=True).astype("datetime64[us, UTC]")
    old["node_id"] = old["node_id"].astype(object)
    old["model_id"] = old["model_id"].astype(object)
    merged = rows.merge(old, on=list(CACHE_KEY), how="left", suffixes=("", "__old"))
    same = merged["prediction_timestamp"].eq(merged["prediction_timestamp__old"])
    for column in _CACHE_COMPARED[1:]:
        same &= np.isclose(
            merged[column], merged[f"{column}__old"].astype(float), rtol=0, atol=10**-_DECIMALS
        )
    return merged.loc[~same, rows.columns]


# -- score_latest ---------------------------------------------------------------------


def score_latest(target: Target, config: MLConfig | None = None) -> ScoringResult:
    """Forecast the next 24 h for every node with enough history (active forecast model),
    score the recent hourly windows (active anomaly model) and estimate the latest night's
    leakage per district (active leakage model). Without an active model of a type that part
    is a no-op with the reason in `notes`."""
    config = config or MLConfig.from_env()
    result = ScoringResult(target=target.name)
    with connect(target) as wh:
        ensure_ml_tables(wh)
        actives = {t: active_model(wh, t) for t in ("flow_forecast", "anomaly", "leakage")}
        if not wh.relation_exists("ml", "ml_features"):
            result.notes.append("ml_features not built yet: run `water cycle` first")
            return result
        if actives["anomaly"]:
            _score_anomalies(wh, actives["anomaly"], config, result)
        else:
            result.notes.append("no active anomaly model: run `water train`")
        if actives["leakage"]:
            _estimate_leakage(wh, actives["leakage"], result)
        else:
            result.notes.append("no active leakage model: run `water train`")
        forecast = actives["flow_forecast"]
        if forecast is None:
            result.notes.append("no active flow_forecast model: run `water train`")
            return result
        result.forecast_model_id = forecast["model_id"]
        # Fail here with the registry's message rather than deep inside a dbt traceback.
        verify_artifact(forecast["artifact_path"], forecast["artifact_sha256"])
        origin_rows = read_features(wh, "hours_after_origin = 0")
        pairs, result.nodes_skipped = scoring_pairs(
            origin_rows, config.min_history_hours, config.max_origin_lag_hours
        )
        result.nodes_forecast = int(pairs["node_id"].nunique()) if not pairs.empty else 0
        if target.type == "postgres":
            features = read_features(wh, "hours_after_origin between 0 and 24")
            existing = wh.query_df(
                "select * from ml.flow_forecasts where model_id = %(m)s and target_timestamp > %(t)s",
                {"m": forecast["model_id"], "t": features["window_start"].min().to_pydatetime()},
            )
            rows = forecast_cache_rows(features, [forecast], existing, config)
            result.forecasts_written = upsert_frame(
                wh, "ml.flow_forecasts", rows, CACHE_KEY, _CACHE_COMPARED
            )
        started = datetime.now(UTC)
        origins = pairs.drop_duplicates("node_id")
    # dbt opens the warehouse itself: the connection above is closed first.
    _publish_forecasts(target)
    with connect(target) as wh:
        if target.type != "postgres":
            result.forecasts_written = int(
                wh.scalar(
                    "select count(*) from water_infrastructure.ml_predictions_cache"
                    " where created_at >= %(t)s",
                    {"t": started},
                )
            )
        if not origins.empty:
            # Rows of the latest forecast: those issued at the current origin hour.
            latest_origin = _hour_start(int(origins["origin_hour_index"].max())) + timedelta(
                hours=1
            )
            result.forecasts_current = int(
                wh.scalar(
                    "select count(*) from water_infrastructure.ml_predictions_cache"
                    " where model_id = %(m)s and prediction_timestamp >= %(t)s",
                    {
                        "m": forecast["model_id"],
                        "t": latest_origin - timedelta(hours=config.max_origin_lag_hours),
                    },
                )
            )
    return result


def _hour_start(hour_index: int) -> datetime:
    return datetime.fromtimestamp(hour_index * 3600, tz=UTC)


def _publish_forecasts(target: Target) -> None:

    # the cache, then its vintages (ml_forecast_history keeps every cycle's forecast)
    run_dbt(target, "run", ["--select", "ml_predictions_cache", "ml_forecast_history"])


def _score_anomalies(
    wh: Warehouse, record: dict[str, Any], config: MLConfig, result: ScoringResult
) -> None:
    latest = wh.scalar("select max(window_start) from ml.ml_features where is_complete")
    if latest is None:
        return
    since = pd.Timestamp(latest).to_pydatetime() - timedelta(
        hours=config.anomaly_lookback_hours - 1
    )
    features = read_features(wh, "is_complete and window_start >= %(since)s", {"since": since})
    model = load_model(record)
    design = anomaly_design(features)
    detections = model.detections(design, datetime.now(UTC))
    result.anomaly_model_id = record["model_id"]
    result.windows_scored = len(design)
    result.anomalies_flagged = len(detections)
    upsert_frame(
        wh,
        "ml.anomaly_detections",
        detections,
        ("anomaly_id",),
        ("severity", "measurement_type", "actual_value", "expected_value", "detection_method"),
    )


def _estimate_leakage(wh: Warehouse, record: dict[str, Any], result: ScoringResult) -> None:
    daily = read_leakage_features(wh)
    design = leakage_design(daily)
    if design.empty:
        result.notes.append("leakage: no district with a complete balanced night yet")
        return
    latest = design.sort_values("local_date").groupby("district").tail(1)
    model = load_model(record)
    loss = model.predict(latest)
    estimates = pd.DataFrame(
        {
            "model_id": record["model_id"],
            "district": latest["district"].astype(object).to_numpy(),
            "estimate_date": pd.to_datetime(latest["local_date"]).dt.date.to_numpy(),
            "water_loss_ls_estimated": np.round(loss, _DECIMALS),
            "water_loss_m3_estimated": np.round(loss * 86.4, 3),
            "water_loss_percent_estimated": np.round(100 * loss / latest["scale"].to_numpy(), 3),
            "system_input_ls_baseline": latest["scale"].round(_DECIMALS).to_numpy(),
            "minimum_night_flow_ls": latest["minimum_night_flow_ls"].round(_DECIMALS).to_numpy(),
            "night_loss_ls": latest["night_loss_ls"].round(_DECIMALS).to_numpy(),
            "previous_day_loss_ls": latest["previous_day_loss_ls"].round(_DECIMALS).to_numpy(),
            "created_at": pd.Timestamp(datetime.now(UTC)),
        }
    )
    result.leakage_model_id = record["model_id"]
    result.leakage_estimates = len(estimates)
    upsert_frame(
        wh,
        "ml.leakage_estimates",
        estimates,
        ("model_id", "district", "estimate_date"),
        ("water_loss_ls_estimated", "minimum_night_flow_ls", "night_loss_ls"),
    )
