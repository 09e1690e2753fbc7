"""Daily evaluation of served predictions whose targets are now observed.

`evaluate(target)` fills `water_infrastructure.model_performance`, one row per (model_id,
evaluation_date):

- flow_forecast: from the dbt view `ml.ml_forecast_outcomes` (cached forecasts joined with the
  observed hour): RMSE, MAE, MAPE, MASE against seasonal-naive (the same hour one week
  earlier), the 90 % interval's coverage, the mean horizon of the evaluated forecasts (the
  cache keeps the latest forecast per hour, so frequent scoring means short horizons), and
  the drift score: mean PSI of the model's input features over the week ending with that
  day against its training sample. evaluation_date = UTC date of the target hour.
- leakage: from `ml.ml_leakage_outcomes` (estimates joined with the day's water balance):
  RMSE, MAE, MAPE, MASE against persistence (yesterday's loss); evaluation_date = the local day.

A day is (re)evaluated when its number of observed predictions differs from the stored row,
so late data updates the figures and a second run with nothing new writes nothing.
The anomaly model has no labels in production: its quality is the perturbation AUC measured
at training (ml_models.metrics).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

import numpy as np
import pandas as pd

from flows.kernel.settings import Target
from flows.kernel.warehouse import Warehouse, connect
from ml.features import all_pairs, forecast_design, normalise_feature_frame
from ml.metrics import point_metrics
from ml.models import interval_residual
from ml.registry import ensure_ml_tables, get_model, load_model
from ml.store import upsert_frame

MIN_DRIFT_SAMPLE = 200  # fewer rows than this make PSI on deciles noise
DRIFT_WINDOW_DAYS = 7
DRIFT_HORIZONS = (1, 9, 17)
PERFORMANCE_COLUMNS = (
    "model_id",
    "model_type",
    "evaluation_date",
    "n_predictions",
    "rmse",
    "mae",
    "mape",
    "mase",
    "interval_coverage",
    "drift_score",
    "mean_horizon_hours",
    "mase_day_ahead",
    "interval_coverage_day_ahead",
    "details",
    "evaluated_at",
)
# Horizons reported apart; the day-ahead figures are the forecasts made 24 hours before.
REPORTED_HORIZONS = (1, 6, 12, 24)
DAY_AHEAD_HOURS = 24


@dataclass
class EvaluationResult:
    target: str
    rows_written: int = 0
    models: list[str] = field(default_factory=list)
    days: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def summary(self) -> str:
        text = (
            f"{self.rows_written} model_performance row(s) written for {len(self.models)} model(s)"
            f" over {self.days} day(s)"
        )
        return text + ("; " + "; ".join(self.notes) if self.notes else "")


def forecast_day_metrics(outcomes: pd.DataFrame) -> dict[str, Any]:
    """Metrics of one model-day of forecast outcomes (columns of ml_forecast_outcomes)."""
    metrics = point_metrics(
        outcomes["flow_rate_actual"].to_numpy(dtype=float),
        outcomes["flow_rate_predicted"].to_numpy(dtype=float),
        naive=outcomes["flow_rate_seasonal_naive"].to_numpy(dtype=float),
        lower=outcomes["flow_rate_lower"].to_numpy(dtype=float),
        upper=outcomes["flow_rate_upper"].to_numpy(dtype=float),
    )
    # MASE needs the naive forecast; the other figures use every observed prediction.
    everything = point_metrics(
        outcomes["flow_rate_actual"].to_numpy(dtype=float),
        outcomes["flow_rate_predicted"].to_numpy(dtype=float),
        lower=outcomes["flow_rate_lower"].to_numpy(dtype=float),
        upper=outcomes["flow_rate_upper"].to_numpy(dtype=float),
    )
    return {
        "n_predictions": int(everything["n"]),
        "rmse": everything["rmse"],
        "mae": everything["mae"],
        "mape": everything["mape"],
        "mase": metrics["mase"],
        "interval_coverage": everything.get("interval_coverage", math.nan),
        "mean_horizon_hours": float(outcomes["horizon_hours"].mean()),
        "naive_compared": int(metrics["n"]),
    }


def forecast_breakdown(outcomes: pd.DataFrame) -> dict[str, Any]:
    """MASE, coverage and count per reported horizon and per node type (vintages make every
    horizon observable): `by_horizon` {"1": {...}, "24": {...}}, `by_node_type`."""

    def brief(rows: pd.DataFrame) -> dict[str, Any]:
        m = forecast_day_metrics(rows)
        return {
            "n": m["n_predictions"],
            "mase": _num(m["mase"]),
            "interval_coverage": _num(m["interval_coverage"]),
        }

    horizons = outcomes["horizon_hours"].astype(int)
    out: dict[str, Any] = {
        "by_horizon": {
            str(h): brief(outcomes.loc[horizons == h])
            for h in REPORTED_HORIZONS
            if (horizons == h).any()
        }
    }
    if "node_type" in outcomes.columns:
        out["by_node_type"] = {
            str(t): brief(rows) for t, rows in outcomes.groupby("node_type", sort=True)
        }
    return out


def evaluate(target: Target) -> EvaluationResult:
    result = EvaluationResult(target=target.name)
    with connect(target) as wh:
        ensure_ml_tables(wh)
        if wh.relation_exists("ml", "ml_forecast_outcomes"):
            _evaluate_forecasts(wh, result)
        else:
            result.notes.append("no forecast outcomes yet (run `water cycle` after training)")
        if wh.relation_exists("ml", "ml_leakage_outcomes"):
            _evaluate_leakage(wh, result)
    return result


def _stored_counts(wh: Warehouse, model_type: str) -> dict[tuple[str, date], int]:
    rows = wh.query(
        "select model_id, evaluation_date, n_predictions from water_infrastructure.model_performance"
        " where model_type = %(t)s",
        {"t": model_type},
    )
    return {(m, pd.Timestamp(d).date()): int(n) for m, d, n in rows}


def _evaluate_forecasts(wh: Warehouse, result: EvaluationResult) -> None:
    outcomes = wh.query_df("select * from ml.ml_forecast_outcomes")
    if outcomes.empty:
        result.notes.append("no forecast has an observed target yet")
        return
    outcomes["target_timestamp"] = pd.to_datetime(outcomes["target_timestamp"], utc=True)
    outcomes["prediction_timestamp"] = pd.to_datetime(outcomes["prediction_timestamp"], utc=True)
    outcomes["evaluation_date"] = outcomes["target_timestamp"].dt.date
    stored = _stored_counts(wh, "flow_forecast")
    counts = outcomes.groupby(["model_id", "evaluation_date"]).size()
    todo = [key for key, n in counts.items() if stored.get(key) != int(n)]
    if not todo:
        return
    rows = []
    now = datetime.now(UTC)
    for model_id in sorted({m for m, _ in todo}):
        record = get_model(wh, model_id)
        model = load_model(record) if record else None
        days = [d for m, d in todo if m == model_id]
        subset = outcomes.loc[
            (outcomes["model_id"] == model_id) & outcomes["evaluation_date"].isin(days)
        ]
        drift = _forecast_drift(wh, model, subset) if model is not None else {}
        for day, group in subset.groupby("evaluation_date"):
            metrics = forecast_day_metrics(group)
            breakdown = forecast_breakdown(group)
            day_ahead = breakdown["by_horizon"].get(str(DAY_AHEAD_HOURS), {})
            score, per_feature = drift.get(day, (math.nan, {}))
            top = sorted(per_feature.items(), key=lambda kv: -kv[1])[:3]
            rows.append(
                {
                    "model_id": model_id,
                    "model_type": "flow_forecast",
                    "evaluation_date": day,
                    "n_predictions": metrics["n_predictions"],
                    "rmse": _num(metrics["rmse"]),
                    "mae": _num(metrics["mae"]),
                    "mape": _num(metrics["mape"]),
                    "mase": _num(metrics["mase"]),
                    "interval_coverage": _num(metrics["interval_coverage"]),
                    "drift_score": _num(score),
                    "mean_horizon_hours": _num(metrics["mean_horizon_hours"]),
                    "mase_day_ahead": day_ahead.get("mase"),
                    "interval_coverage_day_ahead": day_ahead.get("interval_coverage"),
                    "details": json.dumps(
                        {
                            "naive_compared": metrics["naive_compared"],
                            "nodes": int(group["node_id"].nunique()),
                            "drift_top_features": {k: round(v, 4) for k, v in top},
                            **breakdown,
                        },
                        sort_keys=True,
                    ),
                    "evaluated_at": now,
                }
            )
        result.models.append(model_id)
    _write(wh, rows, result)


def _forecast_drift(
    wh: Warehouse, model, outcomes: pd.DataFrame
) -> dict[date, tuple[float, dict[str, float]]]:
    """Per evaluated day D: drift of the model's inputs over the week ending with D against its
    training sample. The inputs are rebuilt with the same feature builder for every complete
    hour of those 7 days as a forecast origin (horizons 1, 9 and 17 h, so target hours cover
    the week too), on the nodes the model forecast. A whole week, because one day alone has a
    single day type and its own mix of flows even when nothing drifts; and every origin,
    because the served forecasts come from a few origins a day."""
    days = sorted(outcomes["evaluation_date"].unique())
    first = datetime.combine(days[0], datetime.min.time(), UTC) - timedelta(
        days=DRIFT_WINDOW_DAYS - 1
    )
    last = datetime.combine(days[-1], datetime.min.time(), UTC) + timedelta(days=2)
    features = normalise_feature_frame(
        wh.query_df(
            "select * from ml.ml_features where window_start >= %(first)s and window_start < %(last)s"
            " and node_id in (select distinct node_id from ml.ml_forecast_outcomes where model_id = %(m)s)",
            {"first": first, "last": last, "m": model.model_id},
        )
    )
    origins = features.loc[features["is_complete"] & features["flow_rate"].notna()]
    design = forecast_design(features, all_pairs(origins, DRIFT_HORIZONS))
    if design.empty:
        return {}
    reference = getattr(model, "residual_reference", None)
    if reference is not None:
        # Season-aware: what drifts is the model's error, not its inputs. Inputs follow the
        # season (temperature cools, demand shifts) on a network where the model still holds;
        # residuals in units of the interval half-width keep their calibration distribution
        # as long as the model does, and move when it no longer fits (a level shift, a leak).
        design = design.loc[np.isfinite(design["actual"])]
        predicted = model.predict(design)
        design = pd.DataFrame(
            {
                "origin_start": design["origin_start"],
                "interval_residual": interval_residual(
                    design["actual"].to_numpy() - predicted["predicted"].to_numpy(),
                    predicted["lower"].to_numpy() - predicted["predicted"].to_numpy(),
                    predicted["upper"].to_numpy() - predicted["predicted"].to_numpy(),
                ),
            }
        )
    else:  # models trained before issue 16: input drift against the training sample
        reference = model.reference
    origin_day = design["origin_start"].dt.date
    drift = {}
    for day in days:
        window = design.loc[
            (origin_day <= day) & (origin_day > day - timedelta(days=DRIFT_WINDOW_DAYS))
        ]
        drift[day] = (
            reference.drift_score(window) if len(window) >= MIN_DRIFT_SAMPLE else (math.nan, {})
        )
    return drift


def _evaluate_leakage(wh: Warehouse, result: EvaluationResult) -> None:
    outcomes = wh.query_df("select * from ml.ml_leakage_outcomes")
    if outcomes.empty:
        return
    outcomes["evaluation_date"] = pd.to_datetime(outcomes["estimate_date"]).dt.date
    stored = _stored_counts(wh, "leakage")
    counts = outcomes.groupby(["model_id", "evaluation_date"]).size()
    todo = {key for key, n in counts.items() if stored.get(key) != int(n)}
    if not todo:
        return
    rows = []
    now = datetime.now(UTC)
    for (model_id, day), group in outcomes.groupby(["model_id", "evaluation_date"]):
        if (model_id, day) not in todo:
            continue
        metrics = point_metrics(
            group["water_loss_ls_actual"].to_numpy(dtype=float),
            group["water_loss_ls_estimated"].to_numpy(dtype=float),
            naive=group["previous_day_loss_ls"].to_numpy(dtype=float),
        )
        plain = point_metrics(
            group["water_loss_ls_actual"].to_numpy(dtype=float),
            group["water_loss_ls_estimated"].to_numpy(dtype=float),
        )
        rows.append(
            {
                "model_id": model_id,
                "model_type": "leakage",
                "evaluation_date": day,
                "n_predictions": int(plain["n"]),
                "rmse": _num(plain["rmse"]),
                "mae": _num(plain["mae"]),
                "mape": _num(plain["mape"]),
                "mase": _num(metrics["mase"]),
                "interval_coverage": None,
                "drift_score": None,
                "mean_horizon_hours": None,
                "mase_day_ahead": None,
                "interval_coverage_day_ahead": None,
                "details": json.dumps({"districts": int(group["district"].nunique())}),
                "evaluated_at": now,
            }
        )
        if model_id not in result.models:
            result.models.append(model_id)
    _write(wh, rows, result)


def _write(wh: Warehouse, rows: list[dict[str, Any]], result: EvaluationResult) -> None:
    if not rows:
        return
    frame = pd.DataFrame(rows, columns=list(PERFORMANCE_COLUMNS))
    frame["evaluated_at"] = pd.to_datetime(frame["evaluated_at"], utc=True)
    result.rows_written += upsert_frame(
        wh,
        "water_infrastructure.model_performance",
        frame,
        ("model_id", "evaluation_date"),
        (
            "n_predictions",
            "rmse",
            "mae",
            "mase",
            "interval_coverage",
            "drift_score",
            "mase_day_ahead",
        ),
    )
    result.days += int(frame["evaluation_date"].nunique())


def _num(value: Any) -> float | None:
    if value is None:
        return None
    value = float(value)
    return value if np.isfinite(value) else None
