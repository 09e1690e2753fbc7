"""`water demo`: a whole platform run on a generated network, nothing to install."""

from __future__ import annotations

from collections.abc import Callable

from flows.config import Target
from flows.cycle import run_cycle, run_model_job
from flows.loading import load_synthetic
from flows.status import collect_status, format_status
from flows.warehouse import connect


def run_demo(
    target: Target,
    nodes: int = 24,
    days: float = 35.0,
    seed: int = 7,
    echo: Callable[[str], None] = print,
) -> None:
    from flows.loaders.synthetic import SyntheticConfig, node_metadata

    config = SyntheticConfig(nodes=nodes, days=days, seed=seed, bad_rows=25)
    echo(
        f"1/4 generating {nodes} nodes x {days:g} days of 1-minute readings and loading them into {target.describe()}"
    )
    with connect(target) as wh:
        results, _ = load_synthetic(wh, config)
    rows = sum(r.rows for r in results)
    districts = node_metadata(config)["district"].nunique()
    echo(f"    {rows:,} new rows; {len(node_metadata(config))} nodes in {districts} districts")
    echo("2/4 running a processing cycle (quality gates, dbt build, scoring, Redis publish)")
    cycle = run_cycle(target, triggered_by="demo")
    echo(f"    cycle {cycle.cycle_id} done in {cycle.duration_seconds:.1f}s")
    if days >= 28:
        echo(
            "3/4 training the models (forecast, anomaly, leakage) and publishing their first scores"
        )
        run_model_job(target, "retraining", triggered_by="demo")
        cycle = run_cycle(target, triggered_by="demo")
    else:
        echo("3/4 skipping model training: it needs at least 28 days of history (--days 28)")
    publish = cycle.publish or {}
    if publish.get("status") == "published":
        from flows.redis_conn import redis_endpoint

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
