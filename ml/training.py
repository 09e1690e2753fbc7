"""Training: time-based splits, holdout metrics, registration, champion/challenger.

For every model type the newest data is the held-out window (by target time) and nothing
from it is used to fit the challenger. The active model (champion) is scored on exactly the
same held-out rows; the challenger becomes active only if it wins the paired comparison
(`ml.registry.decide_promotion`: skill by a margin and in standard errors, calibration no
worse), otherwise it stays `validated` with the reason and the evidence.

flow_forecast: train | calibration | holdout blocks of target hours (default 168 h each for the
last two); pairs (origin, horizon 1..24) are sampled from the training block; intervals are
calibrated on the calibration block; the artifact is exactly the model measured on the holdout.
anomaly: windows before the holdout block train the IsolationForest; on the holdout windows
known faults are injected (burst, pressure drop, stuck sensor, reverse flow, missing readings)
and the ROC AUC of perturbed vs untouched windows is the primary metric.
leakage: the last `leakage_holdout_days` local days are held out; MAE (L/s) is the primary
metric, MASE against persistence (yesterday's loss) the gate.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score

from flows.kernel import progress
from flows.kernel.settings import Target
from flows.kernel.warehouse import connect
from ml.config import MODEL_TYPES, MLConfig
from ml.features import (
    MAX_HORIZON_HOURS,
    anomaly_design,
    forecast_design,
    leakage_design,
    read_features,
    read_leakage_features,
)
from ml.metrics import interval_score, point_metrics
from ml.models import FlowForecaster, LeakageEstimator, ModelError, WindowAnomalyModel
from ml.registry import (
    HoldoutLosses,
    active_model,
    decide_promotion,
    ensure_ml_tables,
    get_model,
    load_model,
    new_model_id,
    next_version,
    promotion_rules,
    record_decision,
    register_model,
    save_artifact,
)

log = logging.getLogger(__name__)


class TrainingError(RuntimeError):
    """Training cannot run (unknown type, no feature tables)."""


@dataclass
class TrainingResult:
    model_type: str
    status: str  # active | validated | created | skipped
    model_id: str | None = None
    version: int | None = None
    promoted: bool = False
    metrics: dict[str, Any] = field(default_factory=dict)
    champion_id: str | None = None
    champion_metrics: dict[str, Any] | None = None
    reason: str = ""
    training_rows: int = 0
    seconds: float = 0.0

    @property
    def summary(self) -> str:
        if self.status == "skipped":
            return f"{self.model_type}: skipped ({self.reason})"
        key = {
            "flow_forecast": ("mase", "mae", "interval_coverage"),
            "anomaly": ("perturbation_auc", "holdout_alert_rate"),
            "leakage": ("mae", "mase"),
        }[self.model_type]
        shown = ", ".join(f"{k} {self.metrics[k]:.4g}" for k in key if _finite(self.metrics.get(k)))
        return (
            f"{self.model_type}: {self.model_id} {self.status}"
            f" ({shown}; {self.training_rows:,} training rows, {self.seconds:.1f}s) - {self.reason}"
        )


def train(
    target: Target, model_type: str | None = None, config: MLConfig | None = None
) -> list[TrainingResult]:
    """Train the given model type (default: all), register it, and promote it if it wins."""
    config = config or MLConfig.from_env()
    types = [model_type] if model_type else list(MODEL_TYPES)
    unknown = [t for t in types if t not in MODEL_TYPES]
    if unknown:
        raise TrainingError(
            f"unknown model type {unknown[0]!r}: expected one of {', '.join(MODEL_TYPES)}"
        )
    if target.type not in ("duckdb", "postgres"):
        raise TrainingError(
            f"training reads the warehouse directly: target {target.type} is not supported"
        )
    with connect(target) as wh:
        ensure_ml_tables(wh)
        features = read_features(wh, "is_observed")
        daily = read_leakage_features(wh) if "leakage" in types else None
    # The warehouse is closed while fitting (DuckDB allows one writer; a cycle may need it).
    results = []
    for kind in types:
        started = time.perf_counter()
        trainer = {
            "flow_forecast": _train_forecast,
            "anomaly": _train_anomaly,
            "leakage": _train_leakage,
        }[kind]
        with progress.step(f"train {kind}"):
            result = trainer(target, features if kind != "leakage" else daily, config)
        result.seconds = time.perf_counter() - started
        log.info("%s", result.summary)
        results.append(result)
    return results


# -- shared ----------------------------------------------------------------------------


def _register_and_decide(
    target: Target,
    model_type: str,
    build,
    evaluate_on_holdout,
    window: dict[str, Any],
    config: MLConfig,
) -> TrainingResult:
    """Fit (build(model_id) -> (model, training_rows)), evaluate challenger and champion on the
    same holdout, register, decide."""
    with connect(target) as wh:
        version = next_version(wh, model_type)
        champion_record = active_model(wh, model_type)
    model_id = new_model_id(model_type, version)
    model, training_rows = build(model_id)
    metrics, losses = evaluate_on_holdout(model)
    champion_metrics = champion_losses = None
    if champion_record is not None:
        champion = load_model(champion_record)  # a changed artifact fails loudly here
        champion_metrics, champion_losses = evaluate_on_holdout(champion)
    rule = promotion_rules(config)[model_type]
    decision = decide_promotion(metrics, champion_metrics, rule, config, losses, champion_losses)
    artifact_path, sha256 = save_artifact(model, model_type, model_id)
    with connect(target) as wh:
        register_model(
            wh,
            model_id=model_id,
            model_type=model_type,
            version=version,
            algorithm=model.algorithm,
            artifact_path=artifact_path,
            artifact_sha256=sha256,
            training_rows=training_rows,
            **window,
        )
        if champion_record is not None:
            metrics_note = dict(champion_metrics or {})
            metrics_note["champion_model_id"] = champion_record["model_id"]
            champion_metrics = metrics_note
        record_decision(wh, model_id, metrics, champion_metrics, rule.primary_metric, decision)
        status = get_model(wh, model_id)["status"]
    return TrainingResult(
        model_type=model_type,
        status=status,
        model_id=model_id,
        version=version,
        promoted=decision.promote,
        metrics=metrics,
        champion_id=champion_record["model_id"] if champion_record else None,
        champion_metrics=champion_metrics,
        reason=decision.reason,
        training_rows=training_rows,
    )


def _skip(model_type: str, reason: str) -> TrainingResult:
    return TrainingResult(model_type=model_type, status="skipped", reason=reason)


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)


def _hour(index: int) -> datetime:
    return pd.Timestamp(int(index) * 3600, unit="s", tz="UTC").to_pydatetime()


# -- flow forecast ---------------------------------------------------------------------


@dataclass(frozen=True)
class ForecastSplit:
    """Target-hour boundaries (hour_index, half-open): train < calibration_start <= calibration
    < holdout_start <= holdout < end."""

    first: int
    calibration_start: int
    holdout_start: int
    end: int


def forecast_split(observed_hours: pd.Series, config: MLConfig) -> ForecastSplit | str:
    """The split, or why there is not enough history."""
    if observed_hours.empty:
        return "no complete hour with a flow value"
    first, end = int(observed_hours.min()), int(observed_hours.max()) + 1
    holdout_start = end - config.holdout_hours
    calibration_start = holdout_start - config.calibration_hours
    # Training targets need a week of history for their seasonal lags.
    usable = calibration_start - (first + 168)
    if usable < config.min_training_hours:
        need = 168 + config.min_training_hours + config.calibration_hours + config.holdout_hours
        return f"{end - first} hours of history; the forecast needs at least {need}"
    return ForecastSplit(first, calibration_start, holdout_start, end)


def sample_pairs(
    origins: pd.DataFrame,
    first_target: int,
    end_target: int,
    max_rows: int,
    rng: np.random.Generator,
) -> pd.DataFrame:
    """(node, origin, horizon) pairs whose target hour is in [first_target, end_target),
    uniformly sampled down to `max_rows` (sampling within a time block; the split is by time)."""
    hours = origins["hour_index"].to_numpy(dtype="int64")
    nodes = origins["node_id"].to_numpy()
    horizons = np.arange(1, MAX_HORIZON_HOURS + 1)
    target = hours[:, None] + horizons[None, :]
    valid = (target >= first_target) & (target < end_target)
    flat = np.flatnonzero(valid.ravel())
    if flat.size > max_rows:
        flat = np.sort(rng.choice(flat, size=max_rows, replace=False))
    row, col = np.divmod(flat, MAX_HORIZON_HOURS)
    return pd.DataFrame(
        {"node_id": nodes[row], "origin_hour_index": hours[row], "horizon_hours": horizons[col]}
    )


def _train_forecast(target: Target, features: pd.DataFrame, config: MLConfig) -> TrainingResult:
    observed = features.loc[features["is_complete"] & features["flow_rate"].notna()]
    split = forecast_split(observed["hour_index"].astype("int64"), config)
    if isinstance(split, str):
        return _skip("flow_forecast", split)
    rng = np.random.default_rng(config.random_seed)
    origins = observed[["node_id", "hour_index"]]
    train_design = forecast_design(
        features,
        sample_pairs(
            origins, split.first + 168, split.calibration_start, config.max_training_rows, rng
        ),
    )
    calibration_design = forecast_design(
        features,
        sample_pairs(
            origins, split.calibration_start, split.holdout_start, config.max_evaluation_rows, rng
        ),
    )
    holdout_design = forecast_design(
        features,
        sample_pairs(origins, split.holdout_start, split.end, config.max_evaluation_rows, rng),
    )
    train_design = train_design.loc[train_design["actual"].notna()]
    holdout_design = holdout_design.loc[holdout_design["actual"].notna()]

    def build(model_id: str):
        model = FlowForecaster.fit(
            model_id,
            train_design,
            calibration_design,
            coverage=config.interval_coverage,
            iterations=config.gradient_boosting_iterations,
            seed=config.random_seed,
        )
        return model, len(train_design)

    def evaluate_on_holdout(model) -> tuple[dict[str, Any], HoldoutLosses]:
        return forecast_holdout_metrics(model, holdout_design, with_losses=True)

    window = {
        "training_start": _hour(split.first + 168),
        "training_end": _hour(split.calibration_start),
        "holdout_start": _hour(split.holdout_start),
        "holdout_end": _hour(split.end),
    }
    try:
        return _register_and_decide(
            target, "flow_forecast", build, evaluate_on_holdout, window, config
        )
    except ModelError as exc:
        return _skip("flow_forecast", str(exc))


def forecast_holdout_metrics(
    model: FlowForecaster, holdout: pd.DataFrame, with_losses: bool = False
):
    """Holdout metrics (and, with `with_losses`, the per-row losses for the paired
    champion/challenger test: blocks are a node's UTC day of target hours)."""
    predicted = model.predict(holdout)
    metrics = point_metrics(
        holdout["actual"].to_numpy(),
        predicted["predicted"].to_numpy(),
        naive=holdout["seasonal_naive"].to_numpy(),
        lower=predicted["lower"].to_numpy(),
        upper=predicted["upper"].to_numpy(),
    )
    by_horizon = {}
    for h in (1, 6, 12, 24):
        rows = holdout["horizon_hours"].to_numpy() == h
        if rows.any():
            m = point_metrics(
                holdout["actual"].to_numpy()[rows],
                predicted["predicted"].to_numpy()[rows],
                naive=holdout["seasonal_naive"].to_numpy()[rows],
            )
            by_horizon[str(h)] = {"mae": m["mae"], "mase": m["mase"]}
    metrics["by_horizon"] = by_horizon
    metrics["nodes"] = int(holdout["node_id"].nunique())
    if not with_losses:
        return metrics
    actual = holdout["actual"].to_numpy(dtype=float)
    lower, upper = predicted["lower"].to_numpy(), predicted["upper"].to_numpy()
    losses = HoldoutLosses(
        blocks=(
            holdout["node_id"].astype(str)
            + "|"
            + (holdout["target_hour_index"].to_numpy() // 24).astype(str)
        ).to_numpy(),
        skill=np.abs(predicted["predicted"].to_numpy() - actual),
        interval=interval_score(actual, lower, upper, model.coverage),
        covered=(actual >= lower) & (actual <= upper),
    )
    return metrics, losses


# -- anomaly ---------------------------------------------------------------------------

PERTURBATIONS = ("burst", "pressure_drop", "stuck", "reverse_flow", "missing_readings")


def perturb_windows(features: pd.DataFrame, rng: np.random.Generator) -> pd.DataFrame:
    """A copy of the complete windows, each with one known fault injected into its own
    measurements (its history columns stay as they were)."""
    w = features.loc[features["is_complete"]].copy().reset_index(drop=True)
    kinds = rng.choice(len(PERTURBATIONS), size=len(w))
    level = w["flow_abs_mean_168h"].clip(lower=1e-3).fillna(1e-3)
    has_flow = w["flow_rate"].notna()
    has_pressure = w["pressure"].notna()
    # Windows without the measurement a fault needs get a reading gap instead.
    wants_flow = np.isin(kinds, [0, 2, 3])
    kinds = np.where(wants_flow & ~has_flow.to_numpy(), 4, kinds)
    kinds = np.where((kinds == 1) & ~has_pressure.to_numpy(), 4, kinds)
    burst, drop, stuck, reverse, gap = (kinds == i for i in range(5))
    for column in ("flow_rate", "min_flow_rate", "max_flow_rate"):
        w.loc[burst, column] = w.loc[burst, column] + 1.0 * level[burst]
        w.loc[reverse, column] = -w.loc[reverse, column].abs()
    for column in ("pressure", "min_pressure", "max_pressure"):
        w.loc[drop, column] = (w.loc[drop, column] - 1.0).clip(lower=0)
    w.loc[stuck, "min_flow_rate"] = w.loc[stuck, "flow_rate"]
    w.loc[stuck, "max_flow_rate"] = w.loc[stuck, "flow_rate"]
    w.loc[stuck & has_pressure, "min_pressure"] = w.loc[stuck & has_pressure, "pressure"]
    w.loc[stuck & has_pressure, "max_pressure"] = w.loc[stuck & has_pressure, "pressure"]
    w.loc[gap, "reading_count"] = np.ceil(w.loc[gap, "reading_count"] * 0.3)
    return w


def anomaly_holdout_metrics(
    model: WindowAnomalyModel, clean: pd.DataFrame, perturbed: pd.DataFrame
) -> tuple[dict[str, Any], HoldoutLosses]:
    clean_scores = model.score(clean)
    perturbed_scores = model.score(perturbed)
    labels = np.concatenate([np.zeros(len(clean_scores)), np.ones(len(perturbed_scores))])
    scores = np.concatenate([clean_scores, perturbed_scores])
    auc = (
        float(roc_auc_score(labels, scores))
        if len(clean_scores) and len(perturbed_scores)
        else math.nan
    )
    clean_alarms = model.severities(clean_scores) if len(clean_scores) else np.empty(0)
    perturbed_alarms = model.severities(perturbed_scores) if len(perturbed_scores) else np.empty(0)
    node_days = len(clean_scores) / 24.0
    metrics = {
        "perturbation_auc": auc,
        # Untouched held-out windows at warning or worse: the false alarms the budget caps.
        "holdout_alert_rate": float(np.isin(clean_alarms, ["warning", "critical"]).mean())
        if len(clean_scores)
        else math.nan,
        "holdout_false_alarms_per_node_day": float(
            np.isin(clean_alarms, ["warning", "critical"]).sum() / node_days
        )
        if len(clean_scores)
        else math.nan,
        "holdout_info_rate": float((clean_alarms == "info").mean())
        if len(clean_scores)
        else math.nan,
        # Recall of the injected faults at that budget.
        "perturbed_detection_rate": float(np.isin(perturbed_alarms, ["warning", "critical"]).mean())
        if len(perturbed_scores)
        else math.nan,
        "holdout_windows": len(clean_scores),
    }
    # Each injected fault's rank loss: the share of untouched windows scoring at least as
    # high (ties half). Its mean is 1 - AUC; per fault it pairs challenger and champion.
    ordered = np.sort(clean_scores)
    above = len(ordered) - np.searchsorted(ordered, perturbed_scores, side="right")
    ties = np.searchsorted(ordered, perturbed_scores, side="right") - np.searchsorted(
        ordered, perturbed_scores, side="left"
    )
    rank_loss = (above + 0.5 * ties) / max(len(ordered), 1)
    losses = HoldoutLosses(blocks=perturbed["node_id"].astype(str).to_numpy(), skill=rank_loss)
    return metrics, losses


def _train_anomaly(target: Target, features: pd.DataFrame, config: MLConfig) -> TrainingResult:
    complete = features.loc[features["is_complete"]]
    if complete.empty:
        return _skip("anomaly", "no complete hourly window")
    end = int(complete["hour_index"].max()) + 1
    holdout_start = end - config.holdout_hours
    train_windows = complete.loc[complete["hour_index"] < holdout_start]
    holdout_windows = complete.loc[complete["hour_index"] >= holdout_start]
    if train_windows["hour_index"].nunique() < config.min_training_hours:
        return _skip(
            "anomaly",
            f"{complete['hour_index'].nunique()} hours of history; the anomaly model needs at least "
            f"{config.min_training_hours + config.holdout_hours}",
        )
    rng = np.random.default_rng(config.random_seed)
    train_design = anomaly_design(train_windows)
    if len(train_design) > config.max_training_rows:
        train_design = train_design.sample(
            n=config.max_training_rows, random_state=config.random_seed
        )
    clean = anomaly_design(holdout_windows)
    perturbed = anomaly_design(perturb_windows(holdout_windows, rng))

    def build(model_id: str):
        model = WindowAnomalyModel.fit(
            model_id,
            train_design,
            config.anomaly_alarm_budget_per_node_day,
            config.anomaly_critical_share,
            config.anomaly_info_rate,
            config.random_seed,
        )
        return model, len(train_design)

    window = {
        "training_start": _hour(int(train_windows["hour_index"].min())),
        "training_end": _hour(holdout_start),
        "holdout_start": _hour(holdout_start),
        "holdout_end": _hour(end),
    }
    try:
        return _register_and_decide(
            target,
            "anomaly",
            build,
            lambda m: anomaly_holdout_metrics(m, clean, perturbed),
            window,
            config,
        )
    except ModelError as exc:
        return _skip("anomaly", str(exc))


# -- leakage ---------------------------------------------------------------------------


def leakage_holdout_metrics(
    model: LeakageEstimator, holdout: pd.DataFrame
) -> tuple[dict[str, Any], HoldoutLosses]:
    estimate = model.predict(holdout)
    actual = holdout["actual_loss_ls"].to_numpy()
    metrics = point_metrics(actual, estimate, naive=holdout["previous_day_loss_ls"].to_numpy())
    night_rule = point_metrics(actual, holdout["night_loss_ls"].to_numpy())
    metrics["night_loss_rule_mae"] = night_rule["mae"]
    metrics["districts"] = int(holdout["district"].nunique())
    losses = HoldoutLosses(
        blocks=holdout["district"].astype(str).to_numpy(), skill=np.abs(estimate - actual)
    )
    return metrics, losses


def _train_leakage(target: Target, daily: pd.DataFrame, config: MLConfig) -> TrainingResult:
    design = leakage_design(daily)
    labelled = design.loc[design["actual_loss_ls"].notna()]
    if labelled.empty:
        return _skip("leakage", "no district-day with a complete water balance and a metered night")
    dates = np.sort(labelled["local_date"].unique())
    if len(dates) < config.leakage_holdout_days + config.min_leakage_training_days:
        return _skip(
            "leakage",
            f"{len(dates)} balanced day(s); the leakage model needs at least "
            f"{config.leakage_holdout_days + config.min_leakage_training_days}",
        )
    holdout_first = dates[-config.leakage_holdout_days]
    train_rows = labelled.loc[labelled["local_date"] < holdout_first]
    holdout_rows = labelled.loc[labelled["local_date"] >= holdout_first]

    def build(model_id: str):
        return LeakageEstimator.fit(model_id, train_rows), len(train_rows)

    def day(value) -> datetime:
        return pd.Timestamp(value).tz_localize("UTC").to_pydatetime()

    window = {
        "training_start": day(train_rows["local_date"].min()),
        "training_end": day(holdout_first),
        "holdout_start": day(holdout_first),
        "holdout_end": day(dates[-1]) + pd.Timedelta(days=1),
    }
    try:
        return _register_and_decide(
            target,
            "leakage",
            build,
            lambda m: leakage_holdout_metrics(m, holdout_rows),
            window,
            config,
        )
    except ModelError as exc:
        return _skip("leakage", str(exc))
