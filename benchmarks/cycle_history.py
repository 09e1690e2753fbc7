"""A 30-minute cycle costs the same whatever the warehouse's age (issue 15).

For each engine and each history length (default 3 and 60 days of 1-minute readings from N
nodes), in the same run: a fresh warehouse is backfilled (`water load HISTORY && water
cycle`, untimed), one 30-minute batch warms the incremental state, then the user's
commands are timed as separate processes on further 30-minute batches:

    water load BATCH.parquet && water cycle          (best of --repeat)

and the ratio long/short history is printed (target <= 1.3), with each cycle's slowest steps
from its job summary. The reference is the same cycle on the short history, in the same run.

    .venv/bin/python benchmarks/cycle_history.py                                # duckdb, 100 nodes
    .venv/bin/python benchmarks/cycle_history.py --engine postgres --nodes 100
    .venv/bin/python benchmarks/cycle_history.py --nodes 20 --days 3 14         # quick
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from flows.loaders.synthetic import SyntheticConfig, write_parquet  # noqa: E402

OUT = ROOT / "benchmarks" / "out"
WATER = Path(sys.executable).parent / "water"
# The batches under test end here; the history ends where the first batch starts.
NOW = datetime(2024, 6, 1, tzinfo=UTC)
BATCH = timedelta(minutes=30)


def run(cmd: list[str], env: dict[str, str]) -> float:
    started = time.perf_counter()
    result = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"benchmark step failed: {' '.join(cmd)}\n{result.stderr[-2000:]}")
    return time.perf_counter() - started


def parquet(nodes: int, start: datetime, days: float, name: str) -> Path:
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / f"history-{name}-{nodes}.parquet"
    if not path.exists():
        config = replace(
            SyntheticConfig(nodes=nodes, days=days, cadence_s=60, seed=11), start=start
        )
        write_parquet(config, path, progress=False)
    return path


def last_cycle_steps(env: dict[str, str], engine: str) -> dict[str, float]:
    code = (
        "import json; from flows.kernel.settings import load_settings; from flows.kernel.warehouse import connect\n"
        "with connect(load_settings().target()) as wh:\n"
        '    s = wh.scalar("select result_summary from water_infrastructure.processing_jobs'
        " where job_type = 'cycle' order by started_at desc limit 1\")\n"
        "print(s if isinstance(s, str) else json.dumps(s, default=str))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    ).stdout
    steps = json.loads(out).get("steps", {})
    return {name: round(float(step.get("seconds", 0)), 2) for name, step in steps.items()}


def bench(engine: str, nodes: int, days: float, repeat: int, workdir: Path) -> dict:
    env = {
        **os.environ,
        "WATER_TARGET": engine,
        "WATER_DBT_TARGET_ROOT": str(workdir / f"dbt-target-{days:g}"),
        "DBT_LOG_PATH": str(workdir / "dbt-logs"),
    }
    env.pop("REDIS_URL", None)  # the embedded Redis, as a single-machine user runs it
    database = None
    if engine == "duckdb":
        env["WATER_DUCKDB_PATH"] = str(workdir / f"history-{days:g}.duckdb")
    else:
        import psycopg

        database = f"water_hist_{os.getpid()}_{int(days)}"
        with psycopg.connect(
            dbname="postgres", host="127.0.0.1", user="postgres", autocommit=True
        ) as admin:
            admin.execute(f'drop database if exists "{database}"')
            admin.execute(f'create database "{database}"')
        env.update(PGDATABASE=database, PGHOST="127.0.0.1")
    batches = [
        parquet(nodes, NOW + k * BATCH, BATCH / timedelta(days=1), f"batch{k}")
        for k in range(repeat + 1)
    ]
    history = parquet(nodes, NOW - timedelta(days=days), days, f"{days:g}d")
    try:
        setup = run([str(WATER), "load", str(history)], env) + run([str(WATER), "cycle"], env)
        run([str(WATER), "load", str(batches[0])], env)  # warm the incremental state
        run([str(WATER), "cycle"], env)
        timings, steps = [], {}
        for batch in batches[1:]:
            seconds = run([str(WATER), "load", str(batch)], env) + run([str(WATER), "cycle"], env)
            if not timings or seconds < min(timings):
                steps = last_cycle_steps(env, engine)
            timings.append(seconds)
    finally:
        if database:
            import psycopg

            with psycopg.connect(
                dbname="postgres", host="127.0.0.1", user="postgres", autocommit=True
            ) as admin:
                admin.execute(f'drop database if exists "{database}" with (force)')
    return {
        "engine": engine,
        "history_days": days,
        "backfill_s": round(setup, 1),
        "load_and_cycle_s": [round(t, 2) for t in timings],
        "best_s": round(min(timings), 2),
        "steps_of_best": steps,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--engine", choices=["duckdb", "postgres"], default="duckdb")
    parser.add_argument("--nodes", type=int, default=100)
    parser.add_argument("--days", type=float, nargs=2, default=[3, 60], metavar=("SHORT", "LONG"))
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="water-history-") as tmp:
        results = []
        for days in args.days:
            results.append(bench(args.engine, args.nodes, days, args.repeat, Path(tmp)))
            print(json.dumps(results[-1]), flush=True)  # a long run shows each result as it ends
        short, long = results
    print(
        json.dumps(
            {"short": short, "long": long, "ratio": round(long["best_s"] / short["best_s"], 2)},
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
