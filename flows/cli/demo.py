"""`water demo`: a whole platform run on a generated network, nothing to install."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pandas as pd

from flows.kernel.redis_conn import redis_endpoint
from flows.kernel.settings import Target
from flows.kernel.warehouse import connect
from flows.loaders.files import DateRange
from flows.loaders.loading import load_synthetic
from flows.loaders.synthetic import Fault, SyntheticConfig, node_metadata
from flows.pipeline.cycle import run_cycle
from flows.pipeline.model_jobs import run_model_job
from flows.pipeline.status import collect_status, format_status


def demo_faults(nodes: pd.DataFrame, days: float) -> tuple:
    """A few incidents in the last days, so the anomalies, night-flow and dashboard views have
    something to show: a growing leak in the first district (last 4 days), a 2-hour burst on a
    consumption meter and a pressure drop on a pressure logger (the day before the end)."""

    if days < 5:
        return ()
    end = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    faults = [Fault("leak", str(nodes["district"].iloc[0]), end - timedelta(days=4), None, 0.25)]
    meters = nodes[nodes["balance_role"] == "consumption"]["node_id"]
    if len(meters):
        burst = end - timedelta(hours=20)
        faults.append(Fault("burst", str(meters.iloc[0]), burst, burst + timedelta(hours=2), 2.0))
    loggers = nodes[nodes["node_type"] == "pressure_logger"]["node_id"]
    if len(loggers):
        drop = end - timedelta(hours=30)
        faults.append(
            Fault("pressure_drop", str(loggers.iloc[0]), drop, drop + timedelta(hours=3), 1.5)
        )
    return tuple(faults)


def run_demo(
    target: Target,
    nodes: int = 24,
    days: float = 35.0,
    seed: int = 7,
    echo: Callable[[str], None] = print,
) -> None:

    config = SyntheticConfig(nodes=nodes, days=days, seed=seed, bad_rows=25)
    config = replace(config, faults=demo_faults(node_metadata(config), days))
    train = days >= 28
    # With models, today's readings are held back until after training: the first forecast
    # (from the end of yesterday) then meets what happened, as it would in operation.
    today = datetime.now(UTC).date()
    history = DateRange(end=today - timedelta(days=1)) if train else DateRange()
    echo(
        f"1/4 generating {nodes} nodes x {days:g} days of 1-minute readings and loading them into {target.describe()}"
    )
    with connect(target) as wh:
        results, _ = load_synthetic(wh, config, history)
    rows = sum(r.rows for r in results)
    districts = node_metadata(config)["district"].nunique()
    echo(f"    {rows:,} new rows; {len(node_metadata(config))} nodes in {districts} districts")
    echo("2/4 running a processing cycle (quality gates, dbt build, scoring, Redis publish)")
    cycle = run_cycle(target, triggered_by="demo")
    echo(f"    cycle {cycle.cycle_id} done in {cycle.duration_seconds:.1f}s")
    if train:
        echo(
            "3/4 training the models (forecast, anomaly, leakage), forecasting today, then loading"
            " today's readings and running a cycle (forecasts against what happened)"
        )
        run_model_job(target, "retraining", triggered_by="demo")
        run_cycle(target, triggered_by="demo")
        with connect(target) as wh:
            results, _ = load_synthetic(wh, config, DateRange(start=today))
        echo(f"    {sum(r.rows for r in results):,} rows of today loaded")
        cycle = run_cycle(target, triggered_by="demo")
    else:
        echo("3/4 skipping model training: it needs at least 28 days of history (--days 28)")
    publish = cycle.publish or {}
    if publish.get("status") == "published":
        echo(f"    published {publish['keys']} hot-cache key(s) to {redis_endpoint().describe()}")
    else:
        echo(
            f"    Redis publish {publish.get('status')}: {publish.get('error', '')} (the next cycle retries)"
        )
    echo("4/4 what was built:")
    echo(format_status(collect_status(target)))
    if target.type == "duckdb":
        echo(
            f"\nExplore: open {target.duckdb_path} with duckdb; tables are in schema water_infrastructure\n"
            "Docs:    make docs   (dbt lineage on http://127.0.0.1:8080)"
        )
    echo(
        "Dashboard: make dashboard (or water dashboard), then open http://127.0.0.1:8501"
        "   (read-only; docs/dashboard.md)"
    )
