"""`water demo`: a whole platform run on a generated network, nothing to install."""

from __future__ import annotations

from collections.abc import Callable

from flows.config import Target
from flows.cycle import run_cycle
from flows.loading import load_synthetic
from flows.status import collect_status, format_status
from flows.warehouse import connect


def run_demo(
    target: Target,
    nodes: int = 24,
    days: float = 14.0,
    seed: int = 7,
    echo: Callable[[str], None] = print,
) -> None:
    from flows.loaders.synthetic import SyntheticConfig, node_metadata

    config = SyntheticConfig(nodes=nodes, days=days, seed=seed, bad_rows=25)
    echo(
        f"1/3 generating {nodes} nodes x {days:g} days of 1-minute readings and loading them into {target.describe()}"
    )
    with connect(target) as wh:
        results, registered = load_synthetic(wh, config)
    rows = sum(r.rows for r in results)
    districts = node_metadata(config)["district"].nunique()
    echo(
        f"    {rows:,} new rows; {registered.inserted + registered.updated} nodes in {districts} districts registered"
    )
    echo("2/3 running a processing cycle (quality gates, dbt build, scoring, Redis publish)")
    cycle = run_cycle(target, triggered_by="demo")
    echo(f"    cycle {cycle.cycle_id} done in {cycle.duration_seconds:.1f}s")
    publish = cycle.publish or {}
    if publish.get("status") == "published":
        from flows.redis_conn import redis_endpoint

        echo(f"    published {publish['keys']} hot-cache key(s) to {redis_endpoint().describe()}")
    else:
        echo(
            f"    Redis publish {publish.get('status')}: {publish.get('error', '')} (the next cycle retries)"
        )
    echo("3/3 what was built:")
    echo(format_status(collect_status(target)))
    if target.type == "duckdb":
        echo(
            f"\nExplore: open {target.duckdb_path} with duckdb; tables are in schema water_infrastructure\n"
            "Docs:    make docs   (dbt lineage on http://127.0.0.1:8080)"
        )
