"""Reads of the ML model registry (`ml_models`, `model_performance`) for the API.

Records come from `ml.registry.list_models` (the registry's own reader); each model gets its
latest daily evaluation from `model_performance`, when there is one. Before the registry
tables exist the reads return None ("not available"), never an invented model.
"""

from __future__ import annotations

from typing import Any

from api.store import ReadOnlyWarehouse
from flows.kernel.jsonable import jsonable
from flows.kernel.settings import PUBLISHED_SCHEMA
from ml.registry import list_models

S = PUBLISHED_SCHEMA
EVALUATION_SCORES = (
    "rmse",
    "mae",
    "mape",
    "mase",
    "interval_coverage",
    "drift_score",
    "mase_day_ahead",  # forecasts made 24 h before (ml_forecast_history keeps every vintage)
    "interval_coverage_day_ahead",
)


def _latest_evaluations(wh: ReadOnlyWarehouse) -> dict[str, dict[str, Any]]:
    if not wh.relation_exists(S, "model_performance"):
        return {}
    rows = wh.records(
        "select * from (select p.*, row_number() over (partition by model_id"
        f" order by evaluation_date desc, evaluated_at desc) as latest_rank from {S}.model_performance as p)"
        " as ranked where latest_rank = 1"
    )
    out = {}
    for row in rows:
        row.pop("latest_rank", None)
        row.pop("details", None)
        out[str(row["model_id"])] = {k: jsonable(v) for k, v in row.items()}
    return out


def models(wh: ReadOnlyWarehouse) -> list[dict[str, Any]] | None:
    """Every registered model, active first, with `latest_evaluation` and numeric `scores`:
    the latest daily evaluation's scores, else the holdout metrics from training."""
    if not wh.relation_exists(S, "ml_models"):
        return None

    evaluations = _latest_evaluations(wh)
    out = []
    for record in list_models(wh):
        model = {k: jsonable(v) for k, v in record.items() if k != "artifact_path"}
        model["is_active"] = record["status"] == "active"
        evaluation = evaluations.get(str(record["model_id"]))
        model["latest_evaluation"] = evaluation
        if evaluation is not None:
            model["scores"] = {
                k: evaluation[k]
                for k in EVALUATION_SCORES
                if isinstance(evaluation.get(k), int | float)
            }
            model["scores_basis"] = "evaluation"
        else:
            metrics = record.get("metrics") or {}
            model["scores"] = {
                str(k): jsonable(v)
                for k, v in metrics.items()
                if isinstance(jsonable(v), int | float) and not isinstance(v, bool)
            }
            model["scores_basis"] = "holdout"
        out.append(model)
    out.sort(key=lambda m: (not m["is_active"], str(m["model_type"]), -int(m["version"])))
    return out


def active_models(wh: ReadOnlyWarehouse) -> list[dict[str, Any]]:
    return [m for m in models(wh) or [] if m["is_active"]]
