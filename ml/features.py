"""The one feature builder behind training and scoring (no train/serve skew).

The per-hour features are SQL in the dbt model `ml_features` (lags, trailing statistics,
local hour of week, Italian holidays, district temperature); `ml_leakage_features` holds the
daily district water balance. This module only assembles model inputs from those rows, with
the same functions for training, holdout evaluation, scoring and drift:

- `forecast_design(features, pairs)`: one row per (node, origin hour, horizon h). From the
  origin row it takes the node's state (latest value, trailing means); from the target row
  only what is known h hours earlier: calendar and the seasonal lags of 24 h and more
  (h <= 24, so the 24-hour lag of the target is at or before the origin). Flows are divided by
  the node's trailing mean absolute flow (`level`), so one global model serves every node.
- `anomaly_design(features)`: one row per complete hourly window: how far its flow and
  pressure are from the same hour of previous weeks, from yesterday and from the previous
  hour; within-window spread; completeness.
- `leakage_design(daily)`: one row per district and local day, night-flow features scaled by
  the district's trailing system input.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from flows.kernel.warehouse import Warehouse

FEATURES_RELATION = "ml.ml_features"
LEAKAGE_FEATURES_RELATION = "ml.ml_leakage_features"

# Columns of ml_features that are features (the rest is bookkeeping: keys, origin, flags).
FEATURE_COLUMNS = (
    "local_date",
    "local_hour",
    "local_day_of_week",
    "local_hour_of_week",
    "is_holiday",
    "flow_rate",
    "min_flow_rate",
    "max_flow_rate",
    "flow_lag_1h",
    "flow_lag_24h",
    "flow_lag_168h",
    "flow_last_week_local",
    "flow_same_hour_mean_4w",
    "flow_same_hour_weeks",
    "flow_day_type_mean_4w",
    "flow_day_type_days_4w",
    "flow_sunday_mean_4w",
    "flow_mean_24h",
    "flow_std_24h",
    "flow_abs_mean_168h",
    "flow_hours_168h",
    "flow_history_hours",
    "pressure",
    "min_pressure",
    "max_pressure",
    "pressure_lag_24h",
    "pressure_same_hour_mean_4w",
    "pressure_mean_24h",
    "pressure_std_168h",
    "temperature",
    "district_temperature",
    "district_temperature_mean_24h",
    "district_temperature_mean_168h",
    "reading_count",
    "expected_reading_count",
    "quality_score",
)

BALANCE_ROLES = ("inlet", "outlet", "consumption", "monitoring")
# New types go last: the codes of the older ones stay what older models were fitted on.
NODE_TYPES = (
    "bulk_meter",
    "flow_meter",
    "multi_sensor",
    "pressure_logger",
    "unknown",
    "pump",
    "tank",
)

# Known at the origin for a target up to 24 hours ahead (all refer to >= 24 h before it).
TARGET_KNOWN_COLUMNS = (
    "local_hour",
    "local_day_of_week",
    "local_hour_of_week",
    "is_holiday",
    "flow_lag_24h",
    "flow_lag_168h",
    "flow_last_week_local",
    "flow_same_hour_mean_4w",
    "flow_same_hour_weeks",
    "flow_day_type_mean_4w",
    "flow_day_type_days_4w",
    "flow_sunday_mean_4w",
)
ORIGIN_STATE_COLUMNS = (
    "flow_rate",
    "flow_lag_1h",
    "flow_lag_24h",
    "flow_same_hour_mean_4w",
    "flow_day_type_mean_4w",
    "flow_mean_24h",
    "flow_std_24h",
    "flow_abs_mean_168h",
    "flow_hours_168h",
    "flow_history_hours",
    "district_temperature_mean_24h",
    "district_temperature_mean_168h",
    "balance_role",
    "node_type",
)
MAX_HORIZON_HOURS = 24
MIN_LEVEL = 1e-3  # L/s: floor of the scale so an idle node does not divide by zero

FORECAST_FEATURES = (
    "horizon_hours",
    "local_hour",
    "local_day_of_week",
    "local_hour_of_week",
    "is_holiday",
    "target_lag_24h",
    "target_lag_168h",
    "target_same_hour_mean_4w",
    "target_same_hour_weeks",
    "target_day_type_mean_4w",
    "target_day_type_days_4w",
    "target_sunday_mean_4w",
    "baseline",
    "origin_flow",
    "origin_lag_1h",
    "origin_vs_yesterday",
    "origin_vs_typical",
    "origin_vs_day_type",
    "origin_mean_24h",
    "origin_std_24h",
    "temperature_anomaly",
    "balance_role",
    "node_type",
)
CATEGORICAL_FEATURES = ("balance_role", "node_type")
# Inputs whose distribution should not change from one day to the next; calendar, horizon and
# history counts do by construction (one day has one weekday), so drift ignores them.
DRIFT_FEATURES = (
    "target_lag_168h",
    "target_day_type_mean_4w",
    "baseline",
    "origin_flow",
    "origin_vs_yesterday",
    "origin_vs_day_type",
    "origin_mean_24h",
    "origin_std_24h",
    "temperature_anomaly",
)


class FeatureError(RuntimeError):
    """The feature tables are missing or unusable."""


def read_features(wh: Warehouse, where: str = "", params: dict | None = None) -> pd.DataFrame:
    """Rows of ml_features (optionally filtered by a fixed clause with bound parameters)."""
    if not wh.relation_exists("ml", "ml_features"):
        raise FeatureError("ml.ml_features does not exist yet: run `water cycle` first")
    sql = f"select * from {FEATURES_RELATION}"  # noqa: S608 - constant relation, fixed clauses
    if where:
        sql += f" where {where}"
    return normalise_feature_frame(wh.query_df(sql + " order by node_id, hour_index", params))


def read_leakage_features(wh: Warehouse) -> pd.DataFrame:
    if not wh.relation_exists("ml", "ml_leakage_features"):
        raise FeatureError("ml.ml_leakage_features does not exist yet: run `water cycle` first")
    frame = wh.query_df(
        f"select * from {LEAKAGE_FEATURES_RELATION} order by district, local_date"  # noqa: S608
    )
    return normalise_leakage_frame(frame)


def normalise_feature_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """Same dtypes whichever engine (or dbt) produced the frame."""
    frame = frame.copy()
    for column in frame.columns:
        if column in ("node_id", "district", "balance_role", "node_type", "day_type"):
            frame[column] = frame[column].astype(object)
        elif column in ("is_observed", "is_complete", "is_holiday"):
            frame[column] = frame[column].astype("boolean").fillna(False).astype(bool)
        elif column == "window_start":
            frame[column] = pd.to_datetime(frame[column], utc=True)
        elif column == "local_date":
            frame[column] = pd.to_datetime(frame[column]).dt.normalize()
        elif column in ("hour_index", "hours_after_origin"):
            frame[column] = pd.to_numeric(frame[column]).astype("Int64")
        else:
            frame[column] = pd.to_numeric(frame[column], errors="coerce").astype(float)
    return frame


def normalise_leakage_frame(frame: pd.DataFrame) -> pd.DataFrame:
    frame = frame.copy()
    for column in frame.columns:
        if column == "district":
            frame[column] = frame[column].astype(object)
        elif column == "local_date":
            frame[column] = pd.to_datetime(frame[column]).dt.normalize()
        elif column == "is_holiday":
            frame[column] = frame[column].astype("boolean").fillna(False).astype(bool)
        else:
            frame[column] = pd.to_numeric(frame[column], errors="coerce").astype(float)
    return frame


# -- forecast -------------------------------------------------------------------------


def all_pairs(origins: pd.DataFrame, horizons: range | list[int]) -> pd.DataFrame:
    """Every (origin row, horizon) pair: columns node_id, origin_hour_index, horizon_hours."""
    base = origins[["node_id", "hour_index"]].rename(columns={"hour_index": "origin_hour_index"})
    parts = [base.assign(horizon_hours=h) for h in horizons]
    return pd.concat(parts, ignore_index=True) if parts else base.assign(horizon_hours=[])


def forecast_design(features: pd.DataFrame, pairs: pd.DataFrame) -> pd.DataFrame:
    """Model inputs for (node_id, origin_hour_index, horizon_hours) pairs.

    Returns one row per pair whose origin row exists and carries a flow value, with the
    FORECAST_FEATURES, `level` (the scale of the node), keys (node_id, origin_start,
    target_start, target_hour_index) and, where observed, `actual` and `seasonal_naive`."""
    horizons = pairs["horizon_hours"].astype(int)
    if len(pairs) and (horizons.min() < 1 or horizons.max() > MAX_HORIZON_HOURS):
        raise ValueError(
            f"horizons must be 1..{MAX_HORIZON_HOURS}: longer ones would read unknown lags"
        )
    origin_cols = ["node_id", "hour_index", "window_start", *ORIGIN_STATE_COLUMNS]
    origins = features.loc[features["flow_rate"].notna(), origin_cols].rename(
        columns={"hour_index": "origin_hour_index", "window_start": "origin_start"}
        | {c: f"origin__{c}" for c in ORIGIN_STATE_COLUMNS}
    )
    design = pairs[["node_id", "origin_hour_index", "horizon_hours"]].copy()
    design["origin_hour_index"] = design["origin_hour_index"].astype("int64")
    origins["origin_hour_index"] = origins["origin_hour_index"].astype("int64")
    design = design.merge(origins, on=["node_id", "origin_hour_index"], how="inner")
    design["target_hour_index"] = design["origin_hour_index"] + design["horizon_hours"].astype(
        "int64"
    )

    targets = features[
        ["node_id", "hour_index", "window_start", "is_complete", "flow_rate", *TARGET_KNOWN_COLUMNS]
    ]
    targets = targets.rename(
        columns={
            "hour_index": "target_hour_index",
            "window_start": "target_start",
            "flow_rate": "target__flow_rate",
            "is_complete": "target__is_complete",
        }
        | {c: f"target__{c}" for c in TARGET_KNOWN_COLUMNS}
    )
    targets = targets.assign(target_hour_index=targets["target_hour_index"].astype("int64"))
    design = design.merge(targets, on=["node_id", "target_hour_index"], how="left")
    missing_target = design["target_start"].isna()
    if missing_target.any():
        # A target hour without a feature row (a gap in the history) has no known calendar.
        design = design.loc[~missing_target]
    return _forecast_columns(design.reset_index(drop=True))


def _forecast_columns(d: pd.DataFrame) -> pd.DataFrame:
    level = d["origin__flow_abs_mean_168h"].astype(float).clip(lower=MIN_LEVEL).fillna(MIN_LEVEL)
    origin_flow = d["origin__flow_rate"].astype(float)
    # The typical value of the target hour, from the most specific estimate available: the
    # same local hour on days of the same type, the same hour of the week, last week, the
    # origin's 24-hour mean. The model learns the correction to it.
    # A holiday with no past holiday of the node: its recent Sundays are the prior.
    holiday = d["target__is_holiday"].fillna(False).astype(bool)
    holiday_prior = d["target__flow_sunday_mean_4w"].where(holiday)
    baseline = (
        d["target__flow_day_type_mean_4w"]
        .fillna(holiday_prior)
        .fillna(d["target__flow_same_hour_mean_4w"])
        .fillna(d["target__flow_last_week_local"])
        .fillna(d["origin__flow_mean_24h"])
        .astype(float)
    )
    out = pd.DataFrame(
        {
            "node_id": d["node_id"].to_numpy(),
            "origin_hour_index": d["origin_hour_index"].to_numpy(),
            "target_hour_index": d["target_hour_index"].to_numpy(),
            "origin_start": d["origin_start"].to_numpy(),
            "target_start": d["target_start"].to_numpy(),
            "horizon_hours": d["horizon_hours"].astype(int).to_numpy(),
            "local_hour": d["target__local_hour"].astype(float).to_numpy(),
            "local_day_of_week": d["target__local_day_of_week"].astype(float).to_numpy(),
            "local_hour_of_week": d["target__local_hour_of_week"].astype(float).to_numpy(),
            "is_holiday": d["target__is_holiday"].astype(float).to_numpy(),
            "target_lag_24h": (d["target__flow_lag_24h"] / level).to_numpy(),
            "target_lag_168h": (d["target__flow_lag_168h"] / level).to_numpy(),
            "target_same_hour_mean_4w": (d["target__flow_same_hour_mean_4w"] / level).to_numpy(),
            "target_same_hour_weeks": d["target__flow_same_hour_weeks"].astype(float).to_numpy(),
            "target_day_type_mean_4w": (d["target__flow_day_type_mean_4w"] / level).to_numpy(),
            "target_day_type_days_4w": d["target__flow_day_type_days_4w"].astype(float).to_numpy(),
            "target_sunday_mean_4w": (d["target__flow_sunday_mean_4w"] / level).to_numpy(),
            "baseline": (baseline / level).to_numpy(),
            "origin_flow": (origin_flow / level).to_numpy(),
            "origin_lag_1h": (d["origin__flow_lag_1h"] / level).to_numpy(),
            "origin_vs_yesterday": ((origin_flow - d["origin__flow_lag_24h"]) / level).to_numpy(),
            "origin_vs_typical": (
                (origin_flow - d["origin__flow_same_hour_mean_4w"]) / level
            ).to_numpy(),
            "origin_vs_day_type": (
                (origin_flow - d["origin__flow_day_type_mean_4w"]) / level
            ).to_numpy(),
            "origin_mean_24h": (d["origin__flow_mean_24h"] / level).to_numpy(),
            "origin_std_24h": (d["origin__flow_std_24h"] / level).to_numpy(),
            "origin_hours_168h": d["origin__flow_hours_168h"].astype(float).to_numpy(),
            "origin_history_hours": d["origin__flow_history_hours"].astype(float).to_numpy(),
            # Temperature as its departure from the last week: raw degrees drift with the
            # season and would let the trees extrapolate from a colder training period.
            "temperature_anomaly": (
                d["origin__district_temperature_mean_24h"]
                - d["origin__district_temperature_mean_168h"]
            )
            .astype(float)
            .to_numpy(),
            "balance_role": pd.Categorical(d["origin__balance_role"], categories=BALANCE_ROLES),
            "node_type": pd.Categorical(
                d["origin__node_type"].where(d["origin__node_type"].isin(NODE_TYPES), "unknown"),
                categories=NODE_TYPES,
            ),
            "level": level.to_numpy(),
            "baseline_flow": baseline.to_numpy(),
            "actual": d["target__flow_rate"]
            .where(d["target__is_complete"].fillna(False).astype(bool))
            .astype(float)
            .to_numpy(),
            # Seasonal-naive: the same local hour one week earlier (167-169 h across DST).
            "seasonal_naive": d["target__flow_last_week_local"].astype(float).to_numpy(),
        }
    )
    out["origin_start"] = pd.to_datetime(out["origin_start"], utc=True)
    out["target_start"] = pd.to_datetime(out["target_start"], utc=True)
    return out


def forecast_matrix(
    design: pd.DataFrame, feature_names: tuple[str, ...] = FORECAST_FEATURES
) -> pd.DataFrame:
    """The columns a forecast model reads, in its order."""
    missing = [c for c in feature_names if c not in design.columns]
    if missing:
        raise FeatureError(f"forecast design lacks feature(s) {', '.join(missing)}")
    return design[list(feature_names)]


def scoring_pairs(
    features: pd.DataFrame, min_history_hours: int, max_origin_lag_hours: int
) -> tuple[pd.DataFrame, dict[str, int]]:
    """Pairs to forecast now: each node's latest complete hour with the next 24 hours.

    A node is skipped (and counted) when it has no flow, too little history, or its origin
    trails the network's latest complete hour by more than `max_origin_lag_hours`."""
    origin_rows = features.loc[features["hours_after_origin"] == 0]
    skipped = {"no_flow": 0, "short_history": 0, "stale": 0}
    if origin_rows.empty:
        return all_pairs(origin_rows, []), skipped
    network_origin = int(origin_rows["hour_index"].max())
    keep = []
    for row in origin_rows.itertuples(index=False):
        if pd.isna(row.flow_rate):
            skipped["no_flow"] += 1
        elif (
            pd.isna(row.flow_history_hours)
            or row.flow_history_hours < min_history_hours
            or row.flow_hours_168h < 84
        ):
            skipped["short_history"] += 1
        elif network_origin - int(row.hour_index) > max_origin_lag_hours:
            skipped["stale"] += 1
        else:
            keep.append(row.node_id)
    chosen = origin_rows.loc[origin_rows["node_id"].isin(keep)]
    return all_pairs(chosen, range(1, MAX_HORIZON_HOURS + 1)), skipped


# -- anomaly --------------------------------------------------------------------------

ANOMALY_FEATURES = (
    "has_flow",
    "has_pressure",
    "flow_vs_typical",
    "flow_vs_yesterday",
    "flow_vs_previous_hour",
    "flow_spread",
    "reverse_flow",
    "pressure_vs_typical",
    "pressure_vs_yesterday",
    "pressure_spread",
    "pressure_z",
    "completeness",
)
ANOMALY_INPUT_COLUMNS = (
    "flow_rate",
    "min_flow_rate",
    "max_flow_rate",
    "pressure",
    "min_pressure",
    "max_pressure",
    "reading_count",
)


def anomaly_design(features: pd.DataFrame) -> pd.DataFrame:
    """Window features of complete observed hours; missing measurements read as 'normal' (0)
    with an indicator, since IsolationForest takes no NaN."""
    w = features.loc[features["is_complete"]].reset_index(drop=True)
    level = w["flow_abs_mean_168h"].astype(float).clip(lower=MIN_LEVEL).fillna(MIN_LEVEL)
    flow = w["flow_rate"].astype(float)
    pressure = w["pressure"].astype(float)
    expected_readings = w["expected_reading_count"].astype(float).where(lambda s: s > 0)
    # A holiday is judged against past holidays (or recent Sundays), not the same weekday.
    holiday = w["is_holiday"].astype(bool)
    holiday_typical = w["flow_day_type_mean_4w"].fillna(w["flow_sunday_mean_4w"]).where(holiday)
    typical_flow = holiday_typical.fillna(w["flow_same_hour_mean_4w"]).fillna(w["flow_lag_24h"])
    typical_pressure = w["pressure_same_hour_mean_4w"].fillna(w["pressure_lag_24h"])
    out = pd.DataFrame(
        {
            "node_id": w["node_id"],
            "district": w["district"],
            "window_start": w["window_start"],
            "hour_index": w["hour_index"].astype("int64"),
            "flow_actual": flow,
            "flow_expected": typical_flow,
            "pressure_actual": pressure,
            "pressure_expected": typical_pressure,
            "has_flow": flow.notna().astype(float),
            "has_pressure": pressure.notna().astype(float),
            "flow_vs_typical": (flow - typical_flow) / level,
            "flow_vs_yesterday": (flow - w["flow_lag_24h"]) / level,
            "flow_vs_previous_hour": (flow - w["flow_lag_1h"]) / level,
            "flow_spread": (w["max_flow_rate"] - w["min_flow_rate"]) / level,
            "reverse_flow": (-w["min_flow_rate"]).clip(lower=0) / level,
            "pressure_vs_typical": pressure - typical_pressure,
            "pressure_vs_yesterday": pressure - w["pressure_lag_24h"],
            "pressure_spread": w["max_pressure"] - w["min_pressure"],
            "pressure_z": (pressure - w["pressure_mean_24h"])
            / (w["pressure_std_168h"].fillna(0) + 0.05),
            "completeness": (w["reading_count"] / expected_readings).clip(upper=1.5),
        }
    )
    for column in ANOMALY_FEATURES:
        out[column] = out[column].astype(float).fillna(0.0 if column != "completeness" else 1.0)
    return out


def anomaly_matrix(design: pd.DataFrame) -> np.ndarray:
    return design[list(ANOMALY_FEATURES)].to_numpy(dtype=float)


# -- leakage --------------------------------------------------------------------------

LEAKAGE_FEATURES = (
    "night_loss_share",
    "night_flow_share",
    "night_consumption_share",
    "previous_day_loss_share",
    "loss_share_7d",
    "night_pressure_vs_7d",
    "is_weekend_or_holiday",
)
MIN_BALANCED_HOURS = 20
NIGHT_HOURS = 3


def leakage_design(daily: pd.DataFrame) -> pd.DataFrame:
    """One row per district and local day with a fully balanced night.

    Shares are relative to the district's mean system input over the 7 previous local days
    (balanced days only), so districts of any size share one model. `actual_loss_ls` is set
    for complete days (>= 20 balanced hours); the previous-day and 7-day values come strictly
    from earlier days."""
    d = daily.loc[daily["consumption_meters"] > 0].copy()
    if d.empty:
        return pd.DataFrame(
            columns=["district", "local_date", *LEAKAGE_FEATURES, "scale", "actual_loss_ls"]
        )
    complete = d["hours_balanced"] >= MIN_BALANCED_HOURS
    d["complete_loss"] = d["water_loss_ls"].where(complete)
    d["complete_input"] = d["system_input_ls"].where(complete)
    d = d.sort_values(["district", "local_date"]).reset_index(drop=True)
    parts = []
    for _, group in d.groupby("district", sort=True):
        g = group.set_index("local_date").asfreq("D")  # calendar days; missing days become NaN rows
        g["district"] = group["district"].iloc[0]
        past = g[["complete_loss", "complete_input", "night_pressure_bar"]].shift(1)
        g["previous_day_loss"] = past["complete_loss"]
        g["loss_7d"] = past["complete_loss"].rolling(7, min_periods=3).mean()
        g["input_7d"] = past["complete_input"].rolling(7, min_periods=3).mean()
        g["night_pressure_7d"] = past["night_pressure_bar"].rolling(7, min_periods=3).mean()
        parts.append(g.reset_index())
    d = pd.concat(parts, ignore_index=True)
    d = d.loc[(d["night_hours_balanced"] >= NIGHT_HOURS) & d["input_7d"].gt(0)].copy()
    scale = d["input_7d"]
    out = pd.DataFrame(
        {
            "district": d["district"],
            "local_date": d["local_date"],
            "night_loss_share": d["night_loss_ls"] / scale,
            "night_flow_share": d["minimum_night_flow_ls"] / scale,
            "night_consumption_share": d["night_consumption_ls"] / scale,
            "previous_day_loss_share": (d["previous_day_loss"] / scale).fillna(
                d["loss_7d"] / scale
            ),
            "loss_share_7d": d["loss_7d"] / scale,
            "night_pressure_vs_7d": (d["night_pressure_bar"] - d["night_pressure_7d"]).fillna(0.0),
            "is_weekend_or_holiday": (
                (d["local_day_of_week"] >= 6)
                | d["is_holiday"].astype("boolean").fillna(False).astype(bool)
            ).astype(float),
            "scale": scale,
            "system_input_ls_baseline": scale,
            "minimum_night_flow_ls": d["minimum_night_flow_ls"],
            "night_loss_ls": d["night_loss_ls"],
            "previous_day_loss_ls": d["previous_day_loss"],
            "actual_loss_ls": d["complete_loss"],
        }
    )
    out = out.dropna(subset=["night_loss_share", "loss_share_7d"])
    return out.reset_index(drop=True)
