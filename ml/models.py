"""The three model types. Each is a small picklable bundle: estimator + what it needs to
serve (feature names, interval quantiles, thresholds, drift reference).

- FlowForecaster: one global HistGradientBoostingRegressor over all nodes predicting flow
  h = 1..24 hours ahead, divided by the node's level; 90 % intervals by split conformal
  prediction per horizon on a calibration block that follows the training block in time.
- WindowAnomalyModel: IsolationForest on hourly window features; thresholds at the
  configured alert rates of the training windows.
- LeakageEstimator: ridge regression of a district's daily water loss on that night's
  flow features (as shares of its trailing system input).
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from datetime import datetime

import numpy as np
import pandas as pd
from sklearn.ensemble import HistGradientBoostingRegressor, IsolationForest
from sklearn.linear_model import Ridge
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler

from flows.kernel.contracts import ANOMALY_COLUMNS  # the anomalies contract, one definition
from ml.features import (
    ANOMALY_FEATURES,
    CATEGORICAL_FEATURES,
    DRIFT_FEATURES,
    FORECAST_FEATURES,
    LEAKAGE_FEATURES,
    anomaly_matrix,
    forecast_matrix,
)
from ml.metrics import ReferenceDistribution

# Residuals are scaled by max(|prediction|, this share of the level): intervals widen with
# the expected flow (noise is multiplicative) without collapsing at night.
_INTERVAL_SCALE_FLOOR = 0.1
_MIN_CALIBRATION_PER_HORIZON = 50


class ModelError(RuntimeError):
    """A model cannot be fitted or applied to the data given."""


@dataclass
class FlowForecaster:
    model_id: str
    estimator: HistGradientBoostingRegressor
    coverage: float
    lower_quantiles: np.ndarray  # by horizon 1..24, in units of the residual scale
    upper_quantiles: np.ndarray
    reference: ReferenceDistribution
    feature_names: tuple[str, ...] = FORECAST_FEATURES
    algorithm: str = "hist_gradient_boosting+split_conformal"
    # Per node type: (lower, upper) residual quantiles by horizon, so that coverage holds for
    # each type (a bulk inlet is smoother than a consumption meter), not only pooled.
    group_quantiles: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    # Calibration residuals in units of the interval half-width: what drift is judged on.
    residual_reference: ReferenceDistribution | None = None

    @classmethod
    def fit(
        cls,
        model_id: str,
        train: pd.DataFrame,
        calibration: pd.DataFrame,
        coverage: float,
        iterations: int,
        seed: int,
    ) -> FlowForecaster:
        train = train.loc[np.isfinite(train["actual"])]
        calibration = calibration.loc[np.isfinite(calibration["actual"])]
        if len(train) < 100 or len(calibration) < 24:
            raise ModelError(
                f"too few rows to train a forecast ({len(train)} training, {len(calibration)} calibration)"
            )
        estimator = HistGradientBoostingRegressor(
            loss="squared_error",
            # Small trees, large leaves: the correction to the baseline is mostly noise, and
            # deeper trees memorise node-specific noise of the training weeks.
            learning_rate=0.05,
            max_iter=iterations,
            max_leaf_nodes=15,
            min_samples_leaf=200,
            l2_regularization=1.0,
            categorical_features=list(CATEGORICAL_FEATURES),
            early_stopping=False,  # its validation split would be random, not time-based
            random_state=seed,
        )
        # The model learns the correction to the baseline (typical value of the hour), in
        # units of the node's level; weighting by level makes the loss match errors in L/s.
        estimator.fit(
            forecast_matrix(train),
            (train["actual"] - train["baseline_flow"]) / train["level"],
            sample_weight=train["level"],
        )
        model = cls(
            model_id=model_id,
            estimator=estimator,
            coverage=coverage,
            lower_quantiles=np.zeros(24),
            upper_quantiles=np.zeros(24),
            reference=ReferenceDistribution.from_frame(train, list(DRIFT_FEATURES)),
        )
        model._calibrate(calibration)
        return model

    def _point(self, design: pd.DataFrame) -> np.ndarray:
        correction = self.estimator.predict(forecast_matrix(design, self.feature_names))
        return design["baseline_flow"].to_numpy() + correction * design["level"].to_numpy()

    def _residual_scale(self, predicted: np.ndarray, level: np.ndarray) -> np.ndarray:
        return np.maximum(np.abs(predicted), _INTERVAL_SCALE_FLOOR * level)

    def _calibrate(self, calibration: pd.DataFrame) -> None:
        predicted = self._point(calibration)
        scale = self._residual_scale(predicted, calibration["level"].to_numpy())
        residual = (calibration["actual"].to_numpy() - predicted) / scale
        horizon = calibration["horizon_hours"].to_numpy()
        alpha = 1 - self.coverage
        pooled = conformal_bounds(residual, alpha)
        for h in range(1, 25):
            r = residual[horizon == h]
            bounds = (
                conformal_bounds(r, alpha) if r.size >= _MIN_CALIBRATION_PER_HORIZON else pooled
            )
            self.lower_quantiles[h - 1], self.upper_quantiles[h - 1] = bounds
        groups = _interval_group(calibration)
        self.group_quantiles = {}
        for group in np.unique(groups):
            in_group = groups == group
            if in_group.sum() < _MIN_CALIBRATION_PER_HORIZON:
                continue  # too few: the pooled per-horizon quantiles serve it
            lower, upper = self.lower_quantiles.copy(), self.upper_quantiles.copy()
            group_pooled = conformal_bounds(residual[in_group], alpha)
            for h in range(1, 25):
                r = residual[in_group & (horizon == h)]
                # few rows of a type at one horizon: the type's own pooled quantiles
                lower[h - 1], upper[h - 1] = (
                    conformal_bounds(r, alpha)
                    if r.size >= _MIN_CALIBRATION_PER_HORIZON
                    else group_pooled
                )
            self.group_quantiles[str(group)] = (lower, upper)
        lower_q, upper_q = self._quantiles(calibration)
        self.residual_reference = ReferenceDistribution.from_frame(
            pd.DataFrame({"interval_residual": interval_residual(residual, lower_q, upper_q)}),
            ["interval_residual"],
        )

    def _quantiles(self, design: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        """Per row: the residual quantiles of its node type (else pooled) at its horizon."""
        h = design["horizon_hours"].to_numpy().astype(int) - 1
        lower, upper = self.lower_quantiles[h].copy(), self.upper_quantiles[h].copy()
        groups = getattr(self, "group_quantiles", None) or {}  # older artifacts have none
        if groups:
            names = _interval_group(design)
            for group, (g_lower, g_upper) in groups.items():
                rows = names == group
                lower[rows], upper[rows] = g_lower[h[rows]], g_upper[h[rows]]
        return lower, upper

    def predict(self, design: pd.DataFrame) -> pd.DataFrame:
        predicted = self._point(design)
        level = design["level"].to_numpy()
        scale = self._residual_scale(predicted, level)
        lower, upper = self._quantiles(design)
        return pd.DataFrame(
            {
                "predicted": predicted,
                "lower": predicted + lower * scale,
                "upper": predicted + upper * scale,
            },
            index=design.index,
        )


def interval_residual(residual: np.ndarray, lower: np.ndarray, upper: np.ndarray) -> np.ndarray:
    """A residual in units of its interval's half-width (comparable across horizons, node
    types and flow levels): about +-1 at the interval's ends whenever the model holds."""
    half = (np.asarray(upper, dtype=float) - np.asarray(lower, dtype=float)) / 2
    return np.asarray(residual, dtype=float) / np.where(half > 0, half, np.nan)


def _interval_group(design: pd.DataFrame) -> np.ndarray:
    """The group an interval is calibrated in: the node type (with its balance role, since
    an inlet bulk meter and a consumption flow meter of one type behave differently)."""
    return (
        design["node_type"].astype(str).to_numpy()
        + "|"
        + design["balance_role"].astype(str).to_numpy()
    )


def conformal_bounds(residuals: np.ndarray, alpha: float) -> tuple[float, float]:
    """Split-conformal lower/upper residual quantiles with the finite-sample correction:
    the ceil((n + 1)(1 - alpha/2))-th smallest residual and its mirror."""
    r = np.sort(residuals[np.isfinite(residuals)])
    n = r.size
    if n == 0:
        raise ModelError("no calibration residuals")
    k_hi = min(n, math.ceil((n + 1) * (1 - alpha / 2)))
    k_lo = max(1, math.floor((n + 1) * (alpha / 2)))
    return float(r[k_lo - 1]), float(r[k_hi - 1])


# Inputs of the deviation score: every window feature but the has_* indicators.
_DEVIATION_FEATURES = tuple(c for c in ANOMALY_FEATURES if not c.startswith("has_"))


@dataclass
class WindowAnomalyModel:
    """Scores hourly windows by their largest robust deviation: for each window feature, the
    distance from its training median in units of the training's 99th-percentile distance;
    the window's score is the largest of them. Thresholds are calibrated on the training
    windows to the alarm budget (`fit`).

    Why not the IsolationForest this model used before: its score saturates (a point far
    outside the data is isolated no faster than one just outside it), so at an alarm budget of
    1 window in 2,400 it caught 0.1 % of the injected faults on the realistic network, the
    deviation score 13 % (AUC 0.91 against 0.84). Artifacts of the older isolation_forest
    models still load and score as before."""

    model_id: str
    estimator: IsolationForest | None
    warning_threshold: float
    critical_threshold: float
    feature_scale: dict[str, float]
    reference: ReferenceDistribution
    feature_names: tuple[str, ...] = ANOMALY_FEATURES
    algorithm: str = "isolation_forest"
    info_threshold: float | None = None
    deviation_center: np.ndarray | None = None
    deviation_scale: np.ndarray | None = None

    @classmethod
    def fit(
        cls,
        model_id: str,
        design: pd.DataFrame,
        alarm_budget_per_node_day: float,
        critical_share: float,
        info_rate: float,
        seed: int,
    ) -> WindowAnomalyModel:
        """Fit on (clean) history; thresholds so that at most `alarm_budget_per_node_day`
        windows per node-day of that history score above warning (hourly windows: 24 per
        node-day), a `critical_share` of those above critical, `info_rate` above info.
        (`seed` is kept for the interface: the deviation score is deterministic.)"""
        if len(design) < 200:
            raise ModelError(f"too few windows to train an anomaly model ({len(design)})")
        x = design[list(_DEVIATION_FEATURES)].to_numpy(dtype=float)
        center = np.median(x, axis=0)
        scale = np.quantile(np.abs(x - center), 0.99, axis=0)
        scale = np.where(scale > 1e-6, scale, 1e-3)  # a constant feature: any change counts
        model = cls(
            model_id=model_id,
            estimator=None,
            warning_threshold=math.inf,
            critical_threshold=math.inf,
            feature_scale={
                c: float(design[c].std() or 1.0) for c in ("flow_vs_typical", "pressure_vs_typical")
            },
            reference=ReferenceDistribution.from_frame(design, list(ANOMALY_FEATURES)),
            algorithm="robust_deviation",
            deviation_center=center,
            deviation_scale=scale,
        )
        scores = model.score(design)
        warning_rate = alarm_budget_per_node_day / 24.0

        def above(rate: float) -> float:
            # "higher": a score of the history, so strictly fewer than rate x n lie above it
            return float(np.quantile(scores, 1 - rate, method="higher"))

        model.warning_threshold = above(warning_rate)
        model.critical_threshold = max(
            above(warning_rate * critical_share), model.warning_threshold
        )
        model.info_threshold = min(above(info_rate), model.warning_threshold)
        return model

    def severities(self, scores: np.ndarray) -> np.ndarray:
        """critical / warning above their thresholds (strictly), info above the info
        threshold, '' below. Models trained before issue 16 have no info threshold."""
        info = getattr(self, "info_threshold", None)
        info = self.warning_threshold if info is None else info
        return np.select(
            [
                scores > self.critical_threshold,
                scores > self.warning_threshold,
                scores >= info,
            ],
            ["critical", "warning", "info"],
            "",
        )

    def score(self, design: pd.DataFrame) -> np.ndarray:
        """Higher = more anomalous."""
        if design.empty:
            return np.empty(0)
        if getattr(self, "deviation_scale", None) is None:  # an isolation_forest artifact
            return -self.estimator.score_samples(anomaly_matrix(design))
        x = design[list(_DEVIATION_FEATURES)].to_numpy(dtype=float)
        return (np.abs(x - self.deviation_center) / self.deviation_scale).max(axis=1)

    @property
    def detection_method(self) -> str:
        return f"{self.algorithm}:{self.model_id}"

    def detections(self, design: pd.DataFrame, detected_at: datetime) -> pd.DataFrame:
        """Rows in the anomalies contract for the windows at or beyond the info threshold."""
        scores = self.score(design)
        severity = self.severities(scores)
        flagged = design.assign(score=scores, severity=severity).loc[severity != ""]
        rows = []
        for w in flagged.itertuples(index=False):
            flow_z = abs(w.flow_vs_typical) / max(self.feature_scale["flow_vs_typical"], 1e-9)
            pressure_z = abs(w.pressure_vs_typical) / max(
                self.feature_scale["pressure_vs_typical"], 1e-9
            )
            use_pressure = w.has_pressure > 0 and (w.has_flow == 0 or pressure_z > flow_z)
            measurement = "pressure" if use_pressure else "flow_rate"
            actual = w.pressure_actual if use_pressure else w.flow_actual
            expected = w.pressure_expected if use_pressure else w.flow_expected
            deviation = (
                100.0 * (actual - expected) / abs(expected)
                if _finite(actual) and _finite(expected) and abs(expected) > 1e-9
                else None
            )
            leading = sorted(
                (
                    (c, float(getattr(w, c)))
                    for c in ANOMALY_FEATURES
                    if c not in ("has_flow", "has_pressure")
                ),
                key=lambda item: -abs(item[1]),
            )[:3]
            window_start = pd.Timestamp(w.window_start)
            rows.append(
                {
                    "anomaly_id": anomaly_id(w.node_id, window_start, "ml_outlier"),
                    "node_id": w.node_id,
                    "district": w.district,
                    "window_start": window_start,
                    "detected_at": detected_at,
                    "anomaly_type": "ml_outlier",
                    "severity": w.severity,
                    "measurement_type": measurement,
                    "actual_value": _or_none(actual),
                    "expected_value": _or_none(expected),
                    "deviation_percentage": _or_none(deviation),
                    "detection_method": self.detection_method,
                    "details": json.dumps(
                        {
                            "window": "1hour",
                            "score": round(float(w.score), 6),
                            "warning_threshold": round(self.warning_threshold, 6),
                            "info_threshold": round(
                                float(
                                    getattr(self, "info_threshold", None) or self.warning_threshold
                                ),
                                6,
                            ),
                            "critical_threshold": round(self.critical_threshold, 6),
                            "leading_features": {name: round(value, 4) for name, value in leading},
                        },
                        sort_keys=True,
                    ),
                }
            )
        return pd.DataFrame(rows, columns=list(ANOMALY_COLUMNS))


def anomaly_id(node_id: str, window_start: pd.Timestamp, anomaly_type: str) -> str:
    """Deterministic: the same window flagged again (by any model version) keeps its id."""
    stamp = pd.Timestamp(window_start).tz_convert("UTC").strftime("%Y-%m-%dT%H:%M:%SZ")
    return hashlib.md5(
        f"ml|{node_id}|{stamp}|{anomaly_type}".encode(), usedforsecurity=False
    ).hexdigest()


def _finite(value) -> bool:
    return value is not None and not pd.isna(value) and math.isfinite(float(value))


def _or_none(value):
    return float(value) if _finite(value) else None


@dataclass
class LeakageEstimator:
    model_id: str
    estimator: Pipeline
    reference: ReferenceDistribution
    feature_names: tuple[str, ...] = LEAKAGE_FEATURES
    residual_quantiles: tuple[float, float] = field(default=(0.0, 0.0))
    algorithm: str = "ridge_night_flow"

    @classmethod
    def fit(cls, model_id: str, design: pd.DataFrame) -> LeakageEstimator:
        rows = design.loc[np.isfinite(design["actual_loss_ls"])]
        if len(rows) < 5:
            raise ModelError(
                f"too few balanced district-days to train a leakage model ({len(rows)})"
            )
        # Standardised inputs: the shares are ~0.1, so an unscaled ridge penalty would swamp them.
        estimator = make_pipeline(StandardScaler(), Ridge(alpha=1.0))
        estimator.fit(
            rows[list(LEAKAGE_FEATURES)].to_numpy(dtype=float),
            rows["actual_loss_ls"] / rows["scale"],
        )
        return cls(
            model_id=model_id,
            estimator=estimator,
            reference=ReferenceDistribution.from_frame(rows, list(LEAKAGE_FEATURES)),
        )

    def predict(self, design: pd.DataFrame) -> np.ndarray:
        """Estimated mean water loss of the day, L/s."""
        if design.empty:
            return np.empty(0)
        x = design[list(self.feature_names)].to_numpy(dtype=float)
        return self.estimator.predict(x) * design["scale"].to_numpy()
