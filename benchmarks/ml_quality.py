"""ML quality bar and training time (issue 5), on generated data.

    .venv/bin/python benchmarks/ml_quality.py [--nodes 200] [--days 90] [--cadence 300]

1. Generates the synthetic network (5-minute readings) and aggregates each node's readings
   to 1-hour windows exactly as `computed_metrics` defines them (mean/min/max per measurement,
   reading counts). This skips loading ~5 M raw rows through the whole dbt project: the
   hourly rows go straight into `water_infrastructure.computed_metrics` / `nodes` of a fresh
   DuckDB file, and only the ML dbt models (`ml_features`, `ml_leakage_features` and the
   holidays seed) are built on top of them.
2. [normal] the fault-free network: times `ml.training.train` for every model type (wall and
   CPU seconds; the machine's load average is recorded too) and reports the forecast's
   held-out week: MASE against seasonal-naive (same hour last week) and the coverage of its
   90 % interval. The quality bar: MASE < 0.8, coverage 85-95 %, training < 2 minutes.
3. [leaks] the same network with growing leaks in two districts: the leakage estimate's
   held-out figures where there is something to find. (Leaks are kept out of the forecast
   scenario: a growing leak makes last week's flow a poor forecast and would flatter MASE.)

Figures are printed and written to benchmarks/out/ml_quality.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from flows.kernel.dbt_runner import run_dbt  # noqa: E402
from flows.kernel.settings import Target  # noqa: E402
from flows.kernel.warehouse import connect  # noqa: E402
from flows.loaders.synthetic import Fault, SyntheticConfig, iter_batches, node_metadata  # noqa: E402
from ml.config import MLConfig  # noqa: E402
from ml.registry import ensure_ml_tables  # noqa: E402
from ml.training import train  # noqa: E402


def hourly_windows(batch: pa.RecordBatch, cadence_s: int) -> pd.DataFrame:
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
    out["expected_reading_count"] = 3600 // cadence_s
    out["quality_score"] = (out["reading_count"] / out["expected_reading_count"]).clip(
        upper=1
    ) * out["avg_sensor_quality"].fillna(1.0)
    return out.drop(columns=["avg_sensor_quality"])


def build_warehouse(target: Target, config: SyntheticConfig) -> dict[str, float]:
    t0 = time.perf_counter()
    parts = [hourly_windows(batch, config.cadence_s) for batch in iter_batches(config)]
    hourly = pd.concat(parts, ignore_index=True)
    nodes = node_metadata(config)[["node_id", "node_name", "node_type", "district", "balance_role"]]
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
    run_dbt(
        target,
        "build",
        ["--select", "italian_public_holidays", "ml_features", "ml_leakage_features"],
    )
    return {
        "hourly_rows": float(len(hourly)),
        "generate_and_aggregate_s": generated,
        "ml_features_dbt_s": time.perf_counter() - t1,
    }


def _scenario(workdir: Path, name: str, config: SyntheticConfig) -> tuple[Target, dict[str, float]]:
    target = Target("duckdb", duckdb_path=workdir / f"ml-quality-{name}.duckdb")
    target.duckdb_path.unlink(missing_ok=True)
    return target, build_warehouse(target, config)


def _train_timed(target: Target, model_type: str, ml_config: MLConfig):
    wall, cpu = time.perf_counter(), time.process_time()
    (result,) = train(target, model_type=model_type, config=ml_config)
    return result, time.perf_counter() - wall, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=200)
    parser.add_argument("--days", type=float, default=90)
    parser.add_argument("--cadence", type=int, default=300)
    parser.add_argument("--seed", type=int, default=5)
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="ml-quality-"))
    workdir.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("WATER_ARTIFACTS_DIR", str(workdir / "artifacts"))
    os.environ.setdefault("WATER_DBT_TARGET_ROOT", str(workdir / "dbt-target"))
    os.environ.setdefault("DBT_LOG_PATH", str(workdir / "dbt-logs"))
    start = datetime(2025, 1, 6, tzinfo=UTC)
    normal = SyntheticConfig(
        nodes=args.nodes, days=args.days, cadence_s=args.cadence, seed=args.seed, start=start
    )
    ml_config = MLConfig.from_env()
    load_before = os.getloadavg()

    print(
        f"[normal] {args.nodes} nodes x {args.days:g} days at {args.cadence}s, aggregated to 1-hour windows"
    )
    target, figures = _scenario(workdir, "normal", normal)
    print(
        f"  {figures['hourly_rows']:,.0f} hourly windows in {figures['generate_and_aggregate_s']:.1f}s;"
        f" ml_features built in {figures['ml_features_dbt_s']:.1f}s"
    )
    results, wall, cpu = {}, {}, {}
    for model_type in ("flow_forecast", "anomaly", "leakage"):
        results[model_type], wall[model_type], cpu[model_type] = _train_timed(
            target, model_type, ml_config
        )
        print(
            f"  train {model_type}: {wall[model_type]:.1f}s wall, {cpu[model_type]:.1f}s cpu -> {results[model_type].summary}"
        )

    # The leakage estimate has more to find where leaks start: two districts leak (unmetered
    # loss on their inlets growing to 30 % of demand), one from 60 % of the period on and into
    # the holdout, one only in the last 5 days.
    leaks = (
        Fault("leak", "DMA-02", start + timedelta(days=args.days * 0.6), None, 0.3),
        Fault("leak", "DMA-03", start + timedelta(days=args.days - 5), None, 0.3),
    )
    leak_report = None
    if args.nodes >= 27:  # at least three districts
        print("[leaks] the same network with leaks in DMA-02 and DMA-03")
        leak_target, _ = _scenario(workdir, "leaks", dataclasses.replace(normal, faults=leaks))
        leak_result, leak_wall, _ = _train_timed(leak_target, "leakage", ml_config)
        print(f"  train leakage: {leak_wall:.1f}s -> {leak_result.summary}")
        leak_report = leak_result.metrics

    forecast = results["flow_forecast"].metrics
    mase = forecast.get("mase", np.nan)
    coverage = forecast.get("interval_coverage", np.nan)
    report = {
        "nodes": args.nodes,
        "days": args.days,
        "cadence_s": args.cadence,
        "cpu_count": os.cpu_count(),
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
        **figures,
        "train_wall_seconds": wall,
        "train_cpu_seconds": cpu,
        "forecast_holdout": {
            k: forecast.get(k)
            for k in (
                "n",
                "mae",
                "rmse",
                "mape",
                "naive_mae",
                "mase",
                "interval_coverage",
                "nodes",
                "by_horizon",
            )
        },
        "anomaly_holdout": results["anomaly"].metrics,
        "leakage_holdout_normal": results["leakage"].metrics,
        "leakage_holdout_with_leaks": leak_report,
        "statuses": {k: v.status for k, v in results.items()},
        "quality_bar": {
            "mase_below_0_8": bool(mase < 0.8),
            "coverage_85_to_95": bool(0.85 <= coverage <= 0.95),
            "forecast_training_under_120s": bool(wall["flow_forecast"] < 120),
        },
    }
    out = ROOT / "benchmarks" / "out"
    out.mkdir(parents=True, exist_ok=True)
    (out / "ml_quality.json").write_text(json.dumps(report, indent=2, default=str))
    print(
        f"\nheld-out week: MASE {mase:.3f} (bar < 0.8), 90% interval coverage {coverage:.1%} (bar 85-95%);"
        f" forecast training {wall['flow_forecast']:.1f}s wall / {cpu['flow_forecast']:.1f}s cpu (bar < 120 s),"
        f" all types {sum(wall.values()):.1f}s; load average {load_before[0]:.1f} before"
    )
    print(f"figures written to {out / 'ml_quality.json'}")


if __name__ == "__main__":
    main()
