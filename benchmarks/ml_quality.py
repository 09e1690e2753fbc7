"""ML quality bar (issue 16) on the realistic generated network, with a public holiday.

    .venv/bin/python benchmarks/ml_quality.py [--nodes 60] [--days 93] [--seed 5]

1. Generates the *realistic* network (flows/loaders/synthetic_realistic.py: pump stations
   switching by tank level and night tariff, tanks, deadband meters, 5/15-minute cadences,
   Italian public holidays with Sunday-like demand), clean (no incidents, no glitches), from
   2025-08-04 to 2025-11-05: the held-out last week contains All Saints' Day (Saturday
   1 November 2025) and the Sunday after it; training contains Ferragosto (15 August).
   Each node's readings are aggregated to 1-hour windows exactly as `computed_metrics`
   defines them and written straight into `computed_metrics` / `nodes` of a fresh DuckDB
   file (skipping the raw rows through the whole dbt project); the ML dbt models are built on
   top (`ml_features`, the holiday seed).
2. `ml.training.train` (flow_forecast, anomaly) holds out that last week.
3. Forecast, fed cycle by cycle: every complete hour of the held-out week is a forecast
   origin with its 24 horizons, i.e. every vintage hourly cycles would have written to
   `ml_forecast_history`. (The features of an hour read only that hour and earlier ones -
   tests/test_ml_pipeline.py::test_future_rows_cannot_change_past_features - and the model
   is fixed during the week, so building them once for the week gives the same rows as 168
   cycles would.) Bar: MASE against seasonal-naive (same local hour last week) < 0.85 at
   horizons 1, 6, 12 and 24 h; 90 % interval coverage within 85-95 % overall and per node
   type. Reported also: the holiday itself and the day after.
4. ML anomalies on the clean held-out week: warning-or-worse windows per node-day (bar
   <= 0.01) and the recall of injected faults at that budget.
5. Drift on the clean week: the season-aware score (residuals in units of the interval
   half-width against calibration) against the previous input-PSI score (bar < 0.2).
Promotion is covered by tests/test_ml_registry.py (crafted champions and challengers).

Figures are printed and written to benchmarks/out/ml_quality.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from flows.kernel.dbt_runner import run_dbt  # noqa: E402
from flows.kernel.settings import Target  # noqa: E402
from flows.kernel.warehouse import connect  # noqa: E402
from flows.loaders.synthetic import SyntheticConfig, iter_batches, node_metadata  # noqa: E402
from ml.config import MLConfig  # noqa: E402
from ml.evaluation import DRIFT_HORIZONS  # noqa: E402
from ml.features import all_pairs, forecast_design, read_features  # noqa: E402
from ml.metrics import point_metrics  # noqa: E402
from ml.models import interval_residual  # noqa: E402
from ml.registry import active_model, ensure_ml_tables, get_model, load_model  # noqa: E402
from ml.training import train  # noqa: E402

HORIZONS = (1, 6, 12, 24)
START = datetime(2025, 8, 4, tzinfo=UTC)  # a Monday; 93 days end on 5 November
HOLIDAY = pd.Timestamp("2025-11-01")  # All Saints' Day (local date)


def hourly_windows(batch: pa.RecordBatch, cadence: dict[str, int]) -> pd.DataFrame:
    """One node's readings -> its 1-hour windows (the computed_metrics statistics ML reads)."""
    frame = batch.to_pandas()
    frame["window_start"] = frame["timestamp"].dt.floor("1h")
    grouped = frame.groupby(["node_id", "window_start"], sort=True)
    out = grouped.agg(
        avg_flow_rate=("flow_rate", "mean"),
        min_flow_rate=("flow_rate", "min"),
        max_flow_rate=("flow_rate", "max"),
        avg_pressure=("pressure", "mean"),
        min_pressure=("pressure", "min"),
        max_pressure=("pressure", "max"),
        avg_temperature=("temperature", "mean"),
        reading_count=("timestamp", "size"),
        last_reading_at=("timestamp", "max"),
        avg_sensor_quality=("quality_score", "mean"),
    ).reset_index()
    out["time_window"] = "1hour"
    out["window_end"] = out["window_start"] + pd.Timedelta(hours=1)
    out["expected_reading_count"] = out["node_id"].map(lambda n: 3600 // cadence[n])
    out["quality_score"] = (out["reading_count"] / out["expected_reading_count"]).clip(
        upper=1
    ) * out["avg_sensor_quality"].fillna(1.0)
    return out.drop(columns=["avg_sensor_quality"])


def build_warehouse(target: Target, config: SyntheticConfig) -> dict[str, float]:
    t0 = time.perf_counter()
    meta = node_metadata(config)
    cadence = dict(zip(meta["node_id"], meta["expected_cadence_s"].astype(int), strict=True))
    parts = [hourly_windows(batch, cadence) for batch in iter_batches(config) if batch.num_rows]
    hourly = pd.concat(parts, ignore_index=True)
    # ml_features reads the data clock (the newest reading) from the 5-minute windows.
    clock = hourly.loc[[hourly["last_reading_at"].idxmax()]].assign(time_window="5min")
    hourly = pd.concat([hourly, clock], ignore_index=True)
    nodes = meta[["node_id", "node_name", "node_type", "district", "balance_role"]]
    generated = time.perf_counter() - t0
    with connect(target) as wh:
        ensure_ml_tables(wh)
        con = wh.raw_connection
        con.register("hourly_frame", hourly)
        con.register("nodes_frame", nodes)
        wh.execute("create schema if not exists water_infrastructure")
        wh.execute(
            "create or replace table water_infrastructure.computed_metrics as select * from hourly_frame"
        )
        wh.execute(
            "create or replace table water_infrastructure.nodes as select * from nodes_frame"
        )
    t1 = time.perf_counter()
    run_dbt(target, "build", ["--select", "italian_public_holidays", "ml_features"])
    return {
        "hourly_rows": float(len(hourly)),
        "generate_and_aggregate_s": generated,
        "ml_features_dbt_s": time.perf_counter() - t1,
    }


def _brief(rows: pd.DataFrame) -> dict[str, float]:
    m = point_metrics(
        rows["actual"].to_numpy(),
        rows["predicted"].to_numpy(),
        naive=rows["seasonal_naive"].to_numpy(),
        lower=rows["lower"].to_numpy(),
        upper=rows["upper"].to_numpy(),
    )
    covered = (rows["actual"] >= rows["lower"]) & (rows["actual"] <= rows["upper"])
    return {
        "n": int(m["n"]),
        "mase": round(m["mase"], 4),
        "coverage": round(float(covered.mean()), 4),
    }


def forecast_week(target: Target, model_id: str, holdout_start: datetime) -> dict:
    """Every vintage of the held-out week: all complete origins x horizons 1..24."""
    with connect(target) as wh:
        record = get_model(wh, model_id)
        features = read_features(wh)
    model = load_model(record)
    hour0 = int(pd.Timestamp(holdout_start).timestamp() // 3600)
    observed = features.loc[features["is_complete"] & features["flow_rate"].notna()]
    # Origins from 24 h before the week so that every target hour of it has all 24 vintages.
    origins = observed.loc[observed["hour_index"].astype("int64") >= hour0 - 24]
    design = forecast_design(features, all_pairs(origins, range(1, 25)))
    design = design.loc[
        (design["target_hour_index"] >= hour0) & np.isfinite(design["actual"])
    ].reset_index(drop=True)
    predicted = model.predict(design)
    rows = design[["node_id", "target_start", "horizon_hours", "actual", "seasonal_naive"]].assign(
        predicted=predicted["predicted"].to_numpy(),
        lower=predicted["lower"].to_numpy(),
        upper=predicted["upper"].to_numpy(),
        node_type=design["node_type"].astype(str).to_numpy(),
        local_date=design["target_start"]
        .dt.tz_convert("Europe/Rome")
        .dt.tz_localize(None)
        .dt.normalize(),
    )
    report = {
        "vintages": int(len(rows)),
        "overall": _brief(rows),
        "by_horizon": {str(h): _brief(rows.loc[rows["horizon_hours"] == h]) for h in HORIZONS},
        "by_node_type": {t: _brief(g) for t, g in rows.groupby("node_type")},
        "holiday": _brief(rows.loc[rows["local_date"] == HOLIDAY]),
        "day_after_holiday": _brief(rows.loc[rows["local_date"] == HOLIDAY + pd.Timedelta(days=1)]),
    }
    # Drift on this clean week: residuals against calibration (now) vs inputs (before).
    drift_pairs = design.loc[design["horizon_hours"].isin(DRIFT_HORIZONS)]
    drift_pred = predicted.loc[drift_pairs.index]
    residuals = pd.DataFrame(
        {
            "interval_residual": interval_residual(
                drift_pairs["actual"].to_numpy() - drift_pred["predicted"].to_numpy(),
                (drift_pred["lower"] - drift_pred["predicted"]).to_numpy(),
                (drift_pred["upper"] - drift_pred["predicted"]).to_numpy(),
            )
        }
    )
    report["drift_residual_score"] = round(model.residual_reference.drift_score(residuals)[0], 4)
    report["drift_input_score"] = round(model.reference.drift_score(drift_pairs)[0], 4)
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=60)
    parser.add_argument("--days", type=float, default=93)
    parser.add_argument("--seed", type=int, default=5)
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="ml-quality-"))
    workdir.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("WATER_ARTIFACTS_DIR", str(workdir / "artifacts"))
    os.environ.setdefault("WATER_DBT_TARGET_ROOT", str(workdir / "dbt-target"))
    os.environ.setdefault("DBT_LOG_PATH", str(workdir / "dbt-logs"))
    config = SyntheticConfig(
        nodes=args.nodes,
        days=args.days,
        cadence_s=300,
        seed=args.seed,
        start=START,
        profile="realistic",
        incidents=False,
        glitches=False,
    )
    ml_config = MLConfig.from_env()
    load_before = os.getloadavg()
    started = time.perf_counter()
    target = Target("duckdb", duckdb_path=workdir / "ml-quality.duckdb")
    target.duckdb_path.unlink(missing_ok=True)
    print(f"[realistic] {args.nodes} nodes x {args.days:g} days from {START:%Y-%m-%d}, clean")
    figures = build_warehouse(target, config)
    print(
        f"  {figures['hourly_rows']:,.0f} hourly windows in {figures['generate_and_aggregate_s']:.1f}s;"
        f" ml_features built in {figures['ml_features_dbt_s']:.1f}s"
    )
    results, seconds = {}, {}
    for model_type in ("flow_forecast", "anomaly"):
        t = time.perf_counter()
        (results[model_type],) = train(target, model_type=model_type, config=ml_config)
        seconds[model_type] = time.perf_counter() - t
        print(f"  train {model_type} ({seconds[model_type]:.1f}s): {results[model_type].summary}")

    with connect(target) as wh:
        record = active_model(wh, "flow_forecast")
    week = forecast_week(target, record["model_id"], record["holdout_start"])
    print(
        f"  held-out week ({record['holdout_start']:%Y-%m-%d} ...), {week['vintages']:,} vintages:"
    )
    for h, m in week["by_horizon"].items():
        print(f"    h={h:>2}: MASE {m['mase']:.3f}, coverage {m['coverage']:.1%}")
    for t, m in week["by_node_type"].items():
        print(f"    {t:<14} MASE {m['mase']:.3f}, coverage {m['coverage']:.1%} ({m['n']:,})")
    print(
        f"    holiday {HOLIDAY:%d %b}: MASE {week['holiday']['mase']:.3f}, coverage"
        f" {week['holiday']['coverage']:.1%}; the day after: MASE {week['day_after_holiday']['mase']:.3f},"
        f" coverage {week['day_after_holiday']['coverage']:.1%}"
    )
    print(
        f"    drift on the clean week: residual score {week['drift_residual_score']:.3f}"
        f" (input PSI, before: {week['drift_input_score']:.3f}); line 0.2"
    )
    anomaly = results["anomaly"].metrics
    print(
        f"  ML anomalies, clean held-out week: {anomaly['holdout_false_alarms_per_node_day']:.4f}"
        f" warning-or-worse per node-day; recall of injected faults"
        f" {anomaly['perturbed_detection_rate']:.1%}; AUC {anomaly['perturbation_auc']:.3f}"
    )

    bars = {
        "mase_below_0_85_at_1_6_12_24h": all(m["mase"] < 0.85 for m in week["by_horizon"].values()),
        "coverage_85_to_95_overall": 0.85 <= week["overall"]["coverage"] <= 0.95,
        "coverage_85_to_95_per_node_type": all(
            0.85 <= m["coverage"] <= 0.95 for m in week["by_node_type"].values()
        ),
        "ml_false_alarms_per_node_day_le_0_01": anomaly["holdout_false_alarms_per_node_day"]
        <= 0.01,
        "drift_below_0_2_on_clean_week": week["drift_residual_score"] < 0.2,
    }
    report = {
        "nodes": args.nodes,
        "days": args.days,
        "start": START.isoformat(),
        "cpu_count": os.cpu_count(),
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
        **figures,
        "train_seconds": seconds,
        "forecast_week": week,
        "forecast_holdout_metrics": results["flow_forecast"].metrics,
        "anomaly_holdout": anomaly,
        "bars": bars,
        "total_seconds": time.perf_counter() - started,
    }
    out = ROOT / "benchmarks" / "out"
    out.mkdir(parents=True, exist_ok=True)
    (out / "ml_quality.json").write_text(json.dumps(report, indent=2, default=str))
    print(f"\nbars: {json.dumps(bars)}")
    print(f"total {report['total_seconds']:.0f}s; figures written to {out / 'ml_quality.json'}")


if __name__ == "__main__":
    main()
