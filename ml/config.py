"""Settings of the ML stage: time splits, history rules, promotion margin, alert rates.

Defaults suit hourly data with weeks of history; every field can be overridden with an
environment variable `WATER_ML_<FIELD NAME IN CAPITALS>` (for example
`WATER_ML_PROMOTION_MARGIN=0.05`), and tests pass a smaller config directly.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields

from flows.kernel.settings import ConfigError

MODEL_TYPES = ("flow_forecast", "anomaly", "leakage")


@dataclass(frozen=True)
class MLConfig:
    # Time-based splits, newest last: train | calibration | holdout (by target time).
    holdout_hours: int = 168
    calibration_hours: int = 168
    min_training_hours: int = 168
    horizon_hours: int = 24
    interval_coverage: float = 0.90
    # A node is forecast only with this many observed flow hours up to the origin, and at
    # least half of the last week observed; its origin may trail the network's by a few hours.
    min_history_hours: int = 168
    max_origin_lag_hours: int = 3
    # Training pairs (origin, horizon) are sampled down to this many rows; evaluation too.
    max_training_rows: int = 250_000
    max_evaluation_rows: int = 300_000
    gradient_boosting_iterations: int = 150
    # Champion/challenger on the same held-out rows: the challenger's mean loss must be lower
    # by this relative margin AND by this many (block-robust) standard errors.
    promotion_margin: float = 0.02
    promotion_z: float = 2.0
    # Gates a first model must pass to become active at all.
    max_forecast_mase: float = 1.0
    min_interval_coverage: float = 0.80
    min_anomaly_auc: float = 0.70
    max_leakage_mase: float = 1.0
    # Anomaly model: windows scored per run. Its warning threshold is calibrated on the
    # training windows to the operators' alarm budget (the rule-based detectors' own: at most
    # 0.01 warning-or-worse per node-day; an hourly window is 1/24 of a node-day); criticals
    # are a tenth of that. Windows above the info rate but below the warning threshold are
    # published as `info` evidence, never as alarms.
    anomaly_lookback_hours: int = 24
    anomaly_alarm_budget_per_node_day: float = 0.01
    anomaly_critical_share: float = 0.1
    anomaly_info_rate: float = 0.005
    # Leakage estimate: held-out local days, and the least balanced days to train on.
    leakage_holdout_days: int = 7
    min_leakage_training_days: int = 7
    random_seed: int = 20_240_601

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> MLConfig:
        env = dict(os.environ) if env is None else env
        values = {}
        for f in fields(cls):
            raw = env.get(f"WATER_ML_{f.name.upper()}")
            if raw is None or raw == "":
                continue
            try:
                values[f.name] = float(raw) if f.type == "float" else int(raw)
            except ValueError:
                raise ConfigError(
                    f"WATER_ML_{f.name.upper()} must be a {f.type}, got {raw!r}"
                ) from None
        config = cls(**values)
        config.validate()
        return config

    def validate(self) -> None:
        if not 0 < self.interval_coverage < 1:
            raise ConfigError("WATER_ML_INTERVAL_COVERAGE must be between 0 and 1")
        if self.promotion_margin < 0:
            raise ConfigError("WATER_ML_PROMOTION_MARGIN must be >= 0")
        if self.promotion_z < 0:
            raise ConfigError("WATER_ML_PROMOTION_Z must be >= 0")
        if not 1 <= self.horizon_hours <= 24:
            # Target-side seasonal lags (24 h) are only known in advance up to 24 hours ahead.
            raise ConfigError("WATER_ML_HORIZON_HOURS must be between 1 and 24")
        for name in ("holdout_hours", "calibration_hours", "min_training_hours"):
            if getattr(self, name) < 24:
                raise ConfigError(f"WATER_ML_{name.upper()} must be at least 24")
