"""Backfill benchmark: `water load` + the windowed metrics against one hand-written statement.

Generates N nodes x D days of 1-minute readings as Parquet (default 200 x 90 = 25.9 M rows),
then, in the same run and on the same file:
  (a) `water load FILE` on a fresh warehouse, then the cycle's transformation of the windowed
      metrics (dbt: staging -> int_readings_deduplicated -> int_metrics_windowed, and the
      rejected_readings quarantine), as `water cycle` runs it;
  (b) one hand-written statement computing the same validation, de-duplication, totaliser
      deltas and 5min/1hour/1day windows from the same data into a table.
A full `water cycle` also runs the anomaly, balance, quality and ML models, the GX gates and
the Redis publish: `--full-cycle` times that too (it is not part of the a/b comparison).
`--end-to-end` times what a user runs instead, as separate processes on a fresh warehouse:
`water load FILE && water cycle` against (b), with the peak RSS of each process and the
gates' share of the cycle (from the cycle's job summary); issue 15's targets: <= 5x the
statement, < 3 GB, gates < 15 %.
Prints rows/s, the ratio a/b (target <= 2.0) and the peak RSS of each (target < 4 GB), and
checks both produced the same windows. `--postgres` repeats (a) on PostgreSQL at a smaller
size against the same statement written for PostgreSQL over the loaded raw table.

    .venv/bin/python benchmarks/backfill.py                      # 200 x 90 on DuckDB
    .venv/bin/python benchmarks/backfill.py --nodes 20 --days 7  # quick
    .venv/bin/python benchmarks/backfill.py --postgres --nodes 40 --days 14
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
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from flows.loaders.synthetic import SyntheticConfig, write_parquet  # noqa: E402

OUT = ROOT / "benchmarks" / "out"
WATER = Path(sys.executable).parent / "water"
START = datetime(2024, 1, 1, tzinfo=UTC)

# The reference: everything the pipeline computes for computed_metrics, in one statement.
REFERENCE_SQL = """
create table reference_metrics as
with typed as (
    select nullif(trim(node_id), '') as node_id, "timestamp" as reading_at,
           case when isnan(flow_rate) then null else flow_rate end as flow_rate,
           case when isnan(pressure) then null else pressure end as pressure,
           case when isnan(temperature) then null else temperature end as temperature,
           case when isnan(volume) then null else volume end as volume,
           case when isnan(quality_score) then null else quality_score end as quality_score,
           file_row_number as batch_row
    from read_parquet('{path}', file_row_number = true)
),
valid as (
    select * from typed
    where node_id is not null and reading_at >= timestamptz '2000-01-01 00:00:00+00'
      and reading_at <= now() + interval 5 minute
      and coalesce(flow_rate, pressure, temperature, volume) is not null
      and (flow_rate is null or (not isinf(flow_rate) and abs(flow_rate) <= 10000))
      and (pressure is null or (not isinf(pressure) and pressure between 0 and 25))
      and (temperature is null or (not isinf(temperature) and temperature between -20 and 60))
      and (volume is null or (not isinf(volume) and volume >= 0))
      and (quality_score is null or (not isinf(quality_score) and quality_score between 0 and 1))
),
dedup as (
    select * from valid
    qualify row_number() over (partition by node_id, reading_at
                               order by coalesce(quality_score, -1) desc, batch_row) = 1
),
deltas as (
    select *,
        case when volume is not null then
            case
                when lag(volume) over w is null then null
                when epoch(reading_at) - epoch(lag(reading_at) over w) > 900 then null
                when volume >= lag(volume) over w then volume - lag(volume) over w
                when volume < lag(volume) over w * 0.5 then volume
                else 0
            end
        end as volume_delta
    from dedup
    window w as (partition by node_id, volume is null order by reading_at)
),
windows as (
    select '5min' as time_window, 300 as width, * from deltas
    union all select '1hour', 3600, * from deltas
    union all select '1day', 86400, * from deltas
)
select node_id, time_window,
       time_bucket(to_seconds(width), reading_at, timestamptz '1970-01-01 00:00:00+00') as window_start,
       count(*) as reading_count,
       avg(flow_rate) as avg_flow_rate, min(flow_rate) as min_flow_rate, max(flow_rate) as max_flow_rate,
       avg(pressure) as avg_pressure, min(pressure) as min_pressure, max(pressure) as max_pressure,
       avg(temperature) as avg_temperature,
       case when count(volume_delta) > 0 then sum(volume_delta) end as total_volume
from windows
group by node_id, time_window, width, window_start
"""

CHECK_SQL = (
    "select time_window, count(*), cast(sum(reading_count) as bigint), cast(sum(total_volume) as decimal(18, 2)),"
    " cast(sum(avg_flow_rate) as decimal(18, 2)) from {table} group by 1 order by 1"
)


def measured(cmd: list[str], env: dict[str, str]) -> tuple[float, int, str]:
    """Run a command; (wall seconds, peak RSS in MB, stdout)."""
    started = time.perf_counter()
    result = subprocess.run(
        ["/usr/bin/time", "-f", "%M", *cmd], env=env, capture_output=True, text=True
    )
    elapsed = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"benchmark step failed: {' '.join(cmd)}\n{result.stderr[-2000:]}")
    peak_kb = int(result.stderr.strip().splitlines()[-1])
    return elapsed, peak_kb // 1024, result.stdout


FULL_CYCLE = "--full-cycle" in sys.argv


def full_cycle(env: dict[str, str]) -> dict:
    """The rest of a first cycle after the windows: every other model, gates, scoring, publish."""
    seconds, peak_mb, _ = worker("full-cycle", env)
    return {"full_cycle_rest_s": round(seconds, 1), "full_cycle_peak_rss_mb": peak_mb}


def worker(step: str, env: dict[str, str], *args: str) -> tuple[float, int, str]:
    """Run one of this file's worker steps in a fresh process (for a clean peak-RSS figure)."""
    return measured([sys.executable, __file__, "--step", step, *args], env)


def run_step(step: str, args: list[str]) -> None:
    if step == "duckdb-reference":
        import duckdb

        con = duckdb.connect(args[0])
        con.execute("set TimeZone = 'UTC'")
        con.execute("set memory_limit = '3GB'")
        con.execute(REFERENCE_SQL.format(path=args[1]))
    elif step == "windows":
        # The windowed-metrics part of a cycle: what the reference statement computes too.
        from flows.kernel.dbt_runner import run_dbt
        from flows.kernel.settings import load_settings
        from flows.pipeline.run import prepare_target

        target = load_settings().target()
        prepare_target(target)
        run_dbt(target, "run", ["--select", "+int_metrics_windowed", "+rejected_readings"])
    elif step == "full-cycle":
        from flows.kernel.settings import load_settings
        from flows.pipeline.cycle import run_cycle

        run_cycle(load_settings().target())
    elif step == "cycle-steps":
        from flows.kernel.settings import load_settings
        from flows.kernel.warehouse import connect

        with connect(load_settings().target()) as wh:
            summary = wh.scalar(
                "select result_summary from water_infrastructure.processing_jobs"
                " where job_type = 'cycle' order by started_at desc limit 1"
            )
        summary = json.loads(summary) if isinstance(summary, str) else summary
        steps = summary.get("steps", {})
        print(json.dumps({k: float(v.get("seconds", 0)) for k, v in steps.items()}))
    elif step == "duckdb-check":
        import duckdb

        results = []
        for path, table in (
            (args[0], "water_staging.int_metrics_windowed"),
            (args[1], "reference_metrics"),
        ):
            with duckdb.connect(path, read_only=True) as con:
                results.append(con.execute(CHECK_SQL.format(table=table)).fetchall())
        print(json.dumps(results, default=str))
    elif step == "postgres-reference":
        import psycopg

        with psycopg.connect(
            dbname=args[0], host="127.0.0.1", user="postgres", autocommit=True
        ) as con:
            con.execute(_postgres_reference_sql())
    elif step == "postgres-check":
        import psycopg

        with psycopg.connect(dbname=args[0], host="127.0.0.1", user="postgres") as con:
            tables = ("water_staging.int_metrics_windowed", "reference_metrics")
            print(
                json.dumps(
                    [con.execute(CHECK_SQL.format(table=t)).fetchall() for t in tables], default=str
                )
            )


def generate(nodes: int, days: float) -> tuple[Path, int]:
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / f"readings-{nodes}x{days:g}.parquet"
    config = replace(
        SyntheticConfig(nodes=nodes, days=days, cadence_s=60, seed=2024, bad_rows=100), start=START
    )
    if not path.exists():
        rows = write_parquet(config, path, progress=True)
    else:
        import pyarrow.parquet as pq

        rows = pq.ParquetFile(path).metadata.num_rows
    return path, rows


def bench_duckdb(path: Path, rows: int, workdir: Path) -> dict:
    env = {
        **os.environ,
        "WATER_TARGET": "duckdb",
        "WATER_DUCKDB_PATH": str(workdir / "pipeline.duckdb"),
        "WATER_DBT_TARGET_ROOT": str(workdir / "dbt-target"),
        "DBT_LOG_PATH": str(workdir / "dbt-logs"),
    }
    load_s, load_mb, _ = measured([str(WATER), "load", str(path)], env)
    cycle_s, cycle_mb, _ = worker("windows", env)
    extra = full_cycle(env) if FULL_CYCLE else {}
    reference_db = workdir / "reference.duckdb"
    ref_s, ref_mb, _ = worker("duckdb-reference", env, str(reference_db), str(path))
    check = worker("duckdb-check", env, str(workdir / "pipeline.duckdb"), str(reference_db))[2]
    pipeline_check, reference_check = json.loads(check)
    pipeline_s = load_s + cycle_s
    return {
        "engine": "duckdb",
        "rows": rows,
        "load_s": round(load_s, 1),
        "cycle_s": round(cycle_s, 1),
        "pipeline_s": round(pipeline_s, 1),
        "reference_s": round(ref_s, 1),
        "ratio": round(pipeline_s / ref_s, 2),
        "pipeline_rows_per_s": round(rows / pipeline_s),
        "reference_rows_per_s": round(rows / ref_s),
        "peak_rss_mb": max(load_mb, cycle_mb),
        "reference_peak_rss_mb": ref_mb,
        **extra,
        "same_windows": pipeline_check == reference_check,
    }


def bench_end_to_end(path: Path, rows: int, workdir: Path) -> dict:
    """The user's two commands, end to end, against the hand-written statement."""
    env = {
        **os.environ,
        "WATER_TARGET": "duckdb",
        "WATER_DUCKDB_PATH": str(workdir / "pipeline.duckdb"),
        "WATER_DBT_TARGET_ROOT": str(workdir / "dbt-target"),
        "DBT_LOG_PATH": str(workdir / "dbt-logs"),
    }
    env.pop("REDIS_URL", None)  # the embedded Redis, as on a single machine
    load_s, load_mb, _ = measured([str(WATER), "load", str(path)], env)
    cycle_s, cycle_mb, _ = measured([str(WATER), "cycle"], env)
    steps = json.loads(worker("cycle-steps", env)[2])
    reference_db = workdir / "reference.duckdb"
    ref_s, ref_mb, _ = worker("duckdb-reference", env, str(reference_db), str(path))
    check = worker("duckdb-check", env, str(workdir / "pipeline.duckdb"), str(reference_db))[2]
    pipeline_check, reference_check = json.loads(check)
    gates_s = steps.get("raw_gate", 0.0) + steps.get("marts_gate", 0.0)
    return {
        "engine": "duckdb",
        "rows": rows,
        "water_load_s": round(load_s, 1),
        "water_cycle_s": round(cycle_s, 1),
        "user_commands_s": round(load_s + cycle_s, 1),
        "reference_s": round(ref_s, 1),
        "ratio": round((load_s + cycle_s) / ref_s, 2),
        "peak_rss_mb": {"water_load": load_mb, "water_cycle": cycle_mb, "reference": ref_mb},
        "cycle_steps_s": steps,
        "gates_share_of_cycle": round(gates_s / cycle_s, 3),
        "same_windows": pipeline_check == reference_check,
    }


def bench_postgres(path: Path, rows: int, workdir: Path) -> dict:
    import psycopg

    database = f"water_bench_{os.getpid()}"
    with psycopg.connect(
        dbname="postgres", host="127.0.0.1", user="postgres", autocommit=True
    ) as admin:
        admin.execute(f'drop database if exists "{database}"')
        admin.execute(f'create database "{database}"')
    env = {
        **os.environ,
        "WATER_TARGET": "postgres",
        "PGDATABASE": database,
        "PGHOST": "127.0.0.1",
        "WATER_DBT_TARGET_ROOT": str(workdir / "dbt-target"),
        "DBT_LOG_PATH": str(workdir / "dbt-logs"),
    }
    try:
        load_s, load_mb, _ = measured([str(WATER), "load", str(path)], env)
        cycle_s, cycle_mb, _ = worker("windows", env)
        ref_s, _, _ = worker("postgres-reference", env, database)
        pipeline_check, reference_check = json.loads(worker("postgres-check", env, database)[2])
    finally:
        with psycopg.connect(
            dbname="postgres", host="127.0.0.1", user="postgres", autocommit=True
        ) as admin:
            admin.execute(f'drop database if exists "{database}" with (force)')
    return {
        "engine": "postgres",
        "rows": rows,
        "load_s": round(load_s, 1),
        "cycle_s": round(cycle_s, 1),
        "pipeline_s": round(load_s + cycle_s, 1),
        "reference_s": round(ref_s, 1),
        "ratio_cycle_to_reference": round(cycle_s / ref_s, 2),
        "ratio": round((load_s + cycle_s) / (load_s + ref_s), 2),
        "pipeline_rows_per_s": round(rows / (load_s + cycle_s)),
        "peak_rss_mb": max(load_mb, cycle_mb),
        "same_windows": pipeline_check == reference_check,
        **(
            {}
            if pipeline_check == reference_check
            else {"pipeline": pipeline_check, "reference": reference_check}
        ),
    }


def _postgres_reference_sql() -> str:
    """The same statement for PostgreSQL, over the raw table the loader filled."""
    return """
create table reference_metrics as
with typed as (
    select nullif(trim(node_id), '') as node_id, "timestamp" as reading_at,
           nullif(flow_rate, 'NaN') as flow_rate, nullif(pressure, 'NaN') as pressure,
           nullif(temperature, 'NaN') as temperature, nullif(volume, 'NaN') as volume,
           nullif(quality_score, 'NaN') as quality_score, loaded_at, batch_row
    from raw.sensor_readings
),
valid as (
    select * from typed
    where node_id is not null and reading_at >= timestamptz '2000-01-01 00:00:00+00'
      and reading_at <= loaded_at + interval '5 minutes'
      and coalesce(flow_rate, pressure, temperature, volume) is not null
      and (flow_rate is null or abs(flow_rate) <= 10000)
      and (pressure is null or pressure between 0 and 25)
      and (temperature is null or temperature between -20 and 60)
      and (volume is null or (volume >= 0 and volume < 'Infinity'))
      and (quality_score is null or quality_score between 0 and 1)
),
ranked as (
    select *, row_number() over (partition by node_id, reading_at
                                 order by coalesce(quality_score, -1) desc, batch_row) as rn
    from valid
),
deltas as (
    select *,
        case when volume is not null then
            case
                when lag(volume) over w is null then null
                when extract(epoch from reading_at - lag(reading_at) over w) > 900 then null
                when volume >= lag(volume) over w then volume - lag(volume) over w
                when volume < lag(volume) over w * 0.5 then volume
                else 0
            end
        end as volume_delta
    from ranked where rn = 1
    window w as (partition by node_id, volume is null order by reading_at)
),
windows as (
    select '5min' as time_window, 300 as width, * from deltas
    union all select '1hour', 3600, * from deltas
    union all select '1day', 86400, * from deltas
)
select node_id, time_window,
       date_bin(width * interval '1 second', reading_at, timestamptz '1970-01-01 00:00:00+00') as window_start,
       count(*) as reading_count,
       avg(flow_rate) as avg_flow_rate, min(flow_rate) as min_flow_rate, max(flow_rate) as max_flow_rate,
       avg(pressure) as avg_pressure, min(pressure) as min_pressure, max(pressure) as max_pressure,
       avg(temperature) as avg_temperature,
       case when count(volume_delta) > 0 then sum(volume_delta) end as total_volume
from windows
group by node_id, time_window, width, window_start
"""


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--nodes", type=int, default=200)
    parser.add_argument("--days", type=float, default=90)
    parser.add_argument(
        "--postgres", action="store_true", help="benchmark the postgres target instead"
    )
    parser.add_argument(
        "--full-cycle", action="store_true", help="also time the rest of a full cycle"
    )
    parser.add_argument(
        "--end-to-end",
        action="store_true",
        help="time `water load FILE && water cycle` (DuckDB) against the statement",
    )
    parser.add_argument("--step", help=argparse.SUPPRESS)
    args, rest = parser.parse_known_args()
    if args.step:
        run_step(args.step, rest)
        return
    path, rows = generate(args.nodes, args.days)
    print(f"input: {path.name}: {rows:,} rows, {path.stat().st_size / 1e6:.0f} MB Parquet")
    with tempfile.TemporaryDirectory(prefix="water-bench-") as tmp:
        bench = bench_duckdb
        if args.postgres:
            bench = bench_postgres
        elif args.end_to_end:
            bench = bench_end_to_end
        result = bench(path, rows, Path(tmp))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
