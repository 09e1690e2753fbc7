"""An independent pandas implementation of DESIGN.md's staging and windowed metrics.

Written from the contract, not from the dbt SQL, so that the tests compare two
implementations: validation -> de-duplication -> totaliser deltas -> windows.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

WIDTHS = {"5min": 300, "1hour": 3600, "1day": 86400}
MAX_GAP_S = 900
RESET_RATIO = 0.5
DEFAULT_CADENCE_S = 60
# dbt var window_close_grace_s: an open window of a silent node closes this long after its end.
WINDOW_CLOSE_GRACE = pd.Timedelta(seconds=7200)
MEASURES = ["flow_rate", "pressure", "temperature", "volume"]


def validate(raw: pd.DataFrame) -> pd.DataFrame:
    """Raw rows (with loaded_at, batch_id, batch_row) plus `is_valid`."""
    df = raw.copy()
    df["node_id"] = df["node_id"].astype("string").str.strip().replace("", pd.NA)
    for column in [*MEASURES, "quality_score"]:
        values = pd.to_numeric(df[column], errors="coerce").astype("float64")
        df[column] = values.where(~np.isnan(values), np.nan)  # NaN = missing
    ts = pd.to_datetime(df["timestamp"], utc=True)
    loaded = pd.to_datetime(df["loaded_at"], utc=True)
    finite = {c: np.isfinite(df[c]) | df[c].isna() for c in [*MEASURES, "quality_score"]}
    ok = df["node_id"].notna() & ts.notna()
    ok &= ts >= pd.Timestamp("2000-01-01", tz="UTC")
    ok &= ts <= loaded + pd.Timedelta(seconds=300)
    ok &= df[MEASURES].notna().any(axis=1)
    ok &= finite["flow_rate"] & ~(df["flow_rate"].abs() > 10000)
    ok &= finite["pressure"] & ~((df["pressure"] < 0) | (df["pressure"] > 25))
    ok &= finite["temperature"] & ~((df["temperature"] < -20) | (df["temperature"] > 60))
    ok &= finite["volume"] & ~(df["volume"] < 0)
    ok &= finite["quality_score"] & ~((df["quality_score"] < 0) | (df["quality_score"] > 1))
    df["timestamp"] = ts
    df["loaded_at"] = loaded
    df["is_valid"] = ok.fillna(False).astype(bool)
    return df


def deduplicate(valid: pd.DataFrame) -> pd.DataFrame:
    """One reading per (node_id, timestamp): highest quality, then first loaded."""
    ranked = valid.assign(_q=valid["quality_score"].fillna(-1.0)).sort_values(
        ["node_id", "timestamp", "_q", "loaded_at", "batch_id", "batch_row"],
        ascending=[True, True, False, True, True, True],
    )
    return ranked.drop_duplicates(["node_id", "timestamp"], keep="first").drop(columns="_q")


def volume_deltas(readings: pd.DataFrame) -> pd.Series:
    out = pd.Series(np.nan, index=readings.index)
    with_volume = readings[readings["volume"].notna()].sort_values(["node_id", "timestamp"])
    for _, group in with_volume.groupby("node_id", sort=False):
        volume = group["volume"].to_numpy()
        seconds = _epoch_seconds(group["timestamp"]).to_numpy()
        for i in range(1, len(group)):
            if seconds[i] - seconds[i - 1] > MAX_GAP_S:
                continue
            prev, cur = volume[i - 1], volume[i]
            if cur >= prev:
                delta = cur - prev
            elif cur < prev * RESET_RATIO:
                delta = cur
            else:
                delta = 0.0
            out[group.index[i]] = delta
    return out


def _epoch_seconds(timestamps: pd.Series) -> pd.Series:
    """Seconds since 1970 as floats, whatever the datetime resolution."""
    return (timestamps - pd.Timestamp(0, tz="UTC")) / pd.Timedelta(seconds=1)


def reference_metrics(
    raw: pd.DataFrame, cadence_by_node: dict[str, int] | None = None
) -> pd.DataFrame:
    """computed_metrics rows (subset of columns) for every node, width and window.

    5-minute windows appear as soon as they hold a reading; 1hour and 1day windows once they
    are closed: the node has reported at or after their end, or the newest reading of any
    node is WINDOW_CLOSE_GRACE past it.
    """
    cadence_by_node = cadence_by_node or {}
    checked = validate(raw)
    readings = deduplicate(checked[checked["is_valid"]]).copy()
    readings["volume_delta"] = volume_deltas(readings)
    epoch_s = np.floor(_epoch_seconds(readings["timestamp"])).astype("int64")
    frames = []
    for name, width in WIDTHS.items():
        start_s = (epoch_s // width) * width  # floor division: correct before 1970 too
        grouped = readings.assign(window_start_s=start_s).groupby(["node_id", "window_start_s"])
        frame = grouped.agg(
            reading_count=("timestamp", "size"),
            avg_flow_rate=("flow_rate", "mean"),
            min_flow_rate=("flow_rate", "min"),
            max_flow_rate=("flow_rate", "max"),
            avg_pressure=("pressure", "mean"),
            min_pressure=("pressure", "min"),
            max_pressure=("pressure", "max"),
            avg_temperature=("temperature", "mean"),
            delta_count=("volume_delta", "count"),
            delta_sum=("volume_delta", "sum"),
            sensor_quality=("quality_score", "mean"),
        ).reset_index()
        frame["total_volume"] = frame["delta_sum"].where(frame["delta_count"] > 0)
        cadence = frame["node_id"].map(lambda n: cadence_by_node.get(n, DEFAULT_CADENCE_S))
        completeness = np.minimum(1.0, frame["reading_count"] * cadence / width)
        frame["quality_score"] = (completeness * frame["sensor_quality"].fillna(1.0)).round(6)
        frame["time_window"] = name
        frame["window_start"] = pd.to_datetime(frame["window_start_s"], unit="s", utc=True)
        frame["window_end"] = frame["window_start"] + pd.Timedelta(seconds=width)
        frames.append(
            frame.drop(columns=["window_start_s", "delta_count", "delta_sum", "sensor_quality"])
        )
    metrics = pd.concat(frames, ignore_index=True)
    node_clock = metrics["node_id"].map(readings.groupby("node_id")["timestamp"].max())
    network_close = readings["timestamp"].max() - WINDOW_CLOSE_GRACE
    closed = (
        (metrics["time_window"] == "5min")
        | (metrics["window_end"] <= node_clock)
        | (metrics["window_end"] <= network_close)
    )
    return metrics[closed].reset_index(drop=True)


def row_accounting(raw: pd.DataFrame) -> dict[str, int]:
    checked = validate(raw)
    valid = checked[checked["is_valid"]]
    kept = deduplicate(valid)
    return {
        "input": len(raw),
        "valid": len(kept),
        "rejected": int((~checked["is_valid"]).sum()),
        "repeats": len(valid) - len(kept),
    }
