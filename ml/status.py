"""The ML part of `water status`: the active model of each type and its latest scores."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from flows.kernel.warehouse import Warehouse
from ml.config import MODEL_TYPES
from ml.registry import active_model

# Holdout metrics shown per type (the primary metric first).
_SHOWN = {
    "flow_forecast": ("mase", "mae", "interval_coverage"),
    "anomaly": ("perturbation_auc", "holdout_alert_rate"),
    "leakage": ("mae", "mase"),
}


@dataclass
class MLStatus:
    registry_exists: bool = False
    models_total: int = 0
    active: dict[str, dict[str, Any] | None] = field(default_factory=dict)
    latest_performance: dict[str, dict[str, Any]] = field(default_factory=dict)
    forecast_rows: int = 0
    anomalies_flagged: int = 0


def ml_status(wh: Warehouse) -> MLStatus:
    status = MLStatus()
    if not wh.relation_exists("water_infrastructure", "ml_models"):
        return status
    status.registry_exists = True
    status.models_total = int(wh.scalar("select count(*) from water_infrastructure.ml_models"))
    for model_type in MODEL_TYPES:
        record = active_model(wh, model_type)
        status.active[model_type] = record
        if record is None:
            continue
        rows = wh.query(
            "select evaluation_date, n_predictions, mae, mase, interval_coverage, drift_score,"
            " mase_day_ahead from water_infrastructure.model_performance where model_id = %(m)s"
            " order by evaluation_date desc limit 1",
            {"m": record["model_id"]},
        )
        if rows:
            keys = (
                "evaluation_date",
                "n_predictions",
                "mae",
                "mase",
                "interval_coverage",
                "drift_score",
                "mase_day_ahead",
            )
            status.latest_performance[model_type] = dict(zip(keys, rows[0], strict=True))
    if wh.relation_exists("water_infrastructure", "ml_predictions_cache"):
        status.forecast_rows = int(
            wh.scalar("select count(*) from water_infrastructure.ml_predictions_cache")
        )
    if wh.relation_exists("ml", "anomaly_detections"):
        status.anomalies_flagged = int(wh.scalar("select count(*) from ml.anomaly_detections"))
    return status


def format_ml_status(status: MLStatus | None) -> list[str]:
    if status is None or not status.registry_exists:
        return ["ml models        registry not created yet: run `water cycle`, then `water train`"]
    lines = [
        f"ml models         {status.models_total} registered; {status.forecast_rows:,} cached forecast row(s);"
        f" {status.anomalies_flagged:,} ML anomaly row(s)"
    ]
    for model_type in MODEL_TYPES:
        record = status.active.get(model_type)
        if record is None:
            lines.append(
                f"  {model_type:<14} no active model (`water train --model-type {model_type}`)"
            )
            continue
        metrics = record.get("metrics") or {}
        shown = ", ".join(
            f"{name} {metrics[name]:.3g}"
            for name in _SHOWN[model_type]
            if _finite(metrics.get(name))
        )
        activated = record["activated_at"]
        lines.append(
            f"  {model_type:<14} {record['model_id']} active since"
            f" {activated:%Y-%m-%d %H:%M} UTC; holdout {shown or '-'}"
        )
        latest = status.latest_performance.get(model_type)
        if latest:
            scores = ", ".join(
                f"{name} {latest[name]:.3g}"
                for name in ("mae", "mase", "mase_day_ahead", "interval_coverage", "drift_score")
                if _finite(latest.get(name))
            )
            lines.append(
                f"  {'':<14} latest evaluation {latest['evaluation_date']}:"
                f" {latest['n_predictions']} observed, {scores}"
            )
    return lines


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)
