"""Incremental cycle latency (issue 6): 500 nodes, 30 minutes of new 1-minute data, warm.

    .venv/bin/python benchmarks/cycle_latency.py [--target duckdb|postgres] [--nodes 500]

1. Generates `--nodes` nodes x (2 days + 3 hours) of 1-minute readings (deterministic), split
   into the 2-day history and six 30-minute batches, as Parquet under benchmarks/out/.
2. A fresh warehouse (DuckDB file under benchmarks/out/, or a fresh PostgreSQL database that is
   dropped afterwards) gets the node metadata and the history, processed by one cycle.
3. Three ways to run a cycle, each warmed by one batch and measured on the next; every cycle
   loads its batch from the landing file, gates it, builds dbt, gates the marts, scores and
   publishes to Redis (a private redis-server on a unix socket):
   * `water cycle` code path in this already started process;
   * the Prefect flow `processing_cycle` in this process (each step a task, dbt through
     PrefectDbtRunner) against a local Prefect server (started first, not counted);
   * the served deployment: `water serve` running, a run of `processing-cycle/on-demand`
     created through the API; measured from creating the run to its Completed state
     (includes the runner's subprocess start and imports, as in production).
4. Prints end-to-end and per-step seconds, and the Redis publish split into warehouse read +
   JSON encoding and the MULTI/EXEC write; writes benchmarks/out/cycle_latency-<target>.json.

Targets (issue 6): under 10 s end to end, Redis publish under 200 ms.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "benchmarks" / "out"
sys.path.insert(0, str(ROOT))

import psycopg  # noqa: E402
import redis  # noqa: E402

from flows.kernel.settings import Target  # noqa: E402
from flows.kernel.warehouse import connect  # noqa: E402
from flows.loaders.files import load_files  # noqa: E402
from flows.loaders.nodes import upsert_nodes  # noqa: E402
from flows.loaders.synthetic import SyntheticConfig, node_metadata, write_parquet  # noqa: E402
from flows.pipeline.cycle import run_cycle  # noqa: E402

START = datetime(2025, 6, 2, tzinfo=UTC)
HISTORY = timedelta(days=2)
BATCH = timedelta(minutes=30)
BATCHES = 6


def prepare_files(nodes: int) -> tuple[Path, list[Path], SyntheticConfig]:
    """History and four 30-minute batches, cut from one generated dataset (cached)."""
    import duckdb

    config = SyntheticConfig(
        nodes=nodes,
        days=(HISTORY + BATCHES * BATCH).total_seconds() / 86400,
        cadence_s=60,
        seed=2025,
        start=START,
        bad_rows=50,
    )
    folder = OUT / f"cycle-latency-{nodes}"
    folder.mkdir(parents=True, exist_ok=True)
    everything = folder / "all.parquet"
    if not everything.exists():
        t0 = time.perf_counter()
        write_parquet(config, everything.with_suffix(".partial"), progress=True)
        everything.with_suffix(".partial").replace(everything)
        print(f"generated {everything} in {time.perf_counter() - t0:.0f}s")
    con = duckdb.connect()
    con.execute("set TimeZone = 'UTC'")
    cut = START + HISTORY
    history = folder / "history.parquet"
    batches = [folder / f"batch-{i + 1}.parquet" for i in range(BATCHES)]
    src = f"read_parquet('{everything}')"
    if not history.exists():
        con.execute(
            f"copy (select * from {src} where \"timestamp\" < $cut) to '{history}' (format parquet)",
            {"cut": cut},
        )
    for i, path in enumerate(batches):
        if not path.exists():
            lo, hi = cut + i * BATCH, cut + (i + 1) * BATCH
            # the last batch also carries the injected bad rows (timestamps anywhere)
            extra = ' or "timestamp" < $start or "timestamp" >= $end' if i == BATCHES - 1 else ""
            con.execute(
                f'copy (select * from {src} where ("timestamp" >= $lo and "timestamp" < $hi){extra})'
                f" to '{path}' (format parquet)",
                {
                    "lo": lo,
                    "hi": hi,
                    **({"start": START, "end": cut + BATCHES * BATCH} if extra else {}),
                },
            )
    con.close()
    return history, batches, config


def make_target(kind: str) -> tuple[Target, callable]:
    if kind == "duckdb":
        path = OUT / "cycle-latency.duckdb"
        for leftover in (path, path.with_suffix(".duckdb.wal")):
            leftover.unlink(missing_ok=True)
        return Target("duckdb", duckdb_path=path), lambda: None
    name = f"water_bench_{uuid.uuid4().hex[:10]}"
    parts = {
        "host": os.environ.get("PGHOST", "127.0.0.1"),
        "port": os.environ.get("PGPORT", "5432"),
        "user": os.environ.get("PGUSER", "postgres"),
    }
    with psycopg.connect(autocommit=True, dbname="postgres", **parts) as admin:
        admin.execute(f'create database "{name}"')

    def drop():
        with psycopg.connect(autocommit=True, dbname="postgres", **parts) as admin:
            admin.execute(f'drop database if exists "{name}" with (force)')

    return Target("postgres", pg_dsn_parts={**parts, "dbname": name}), drop


def start_redis(folder: Path) -> tuple[subprocess.Popen, redis.Redis]:
    socket_path = folder / "redis.sock"
    server = subprocess.Popen(  # noqa: S603 - fixed argv
        [
            shutil.which("redis-server") or "redis-server",
            "--port",
            "0",
            "--unixsocket",
            str(socket_path),
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(folder),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    client = redis.Redis(unix_socket_path=str(socket_path), socket_timeout=30)
    for _ in range(200):
        try:
            client.ping()
            return server, client
        except redis.ConnectionError:
            time.sleep(0.05)
    raise RuntimeError("redis-server did not start")


def describe(result) -> dict:
    return {
        "cycle_id": result.cycle_id,
        "status": result.status,
        "rows_in": result.rows_in,
        "rows_rejected": result.rows_rejected,
        "end_to_end_s": round(result.duration_seconds, 3),
        "steps_s": {name: round(step.seconds, 3) for name, step in result.steps.items()},
        "step_status": {
            name: step.status for name, step in result.steps.items() if step.status != "ok"
        },
        "publish": result.publish,
    }


def free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def measure_served(target: Target, warmup: Path, batch: Path, scratch: Path) -> dict:
    """`water serve` in a subprocess; time a run of the on-demand deployment end to end."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterName

    serve_log = (scratch / "serve.log").open("wb")
    serve = subprocess.Popen(  # noqa: S603 - our console script
        [sys.executable, "-m", "flows.cli", "serve", "--target", target.name],
        env=os.environ.copy(),
        cwd=ROOT,
        stdout=serve_log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        with get_client(sync_client=True) as client:
            deployment = None
            for _ in range(600):
                found = client.read_deployments(
                    deployment_filter=DeploymentFilter(
                        name=DeploymentFilterName(any_=["on-demand"])
                    )
                )
                if found:
                    deployment = found[0]
                    break
                time.sleep(0.2)
            if deployment is None:
                raise RuntimeError("water serve did not register its deployments")
            timings = []
            for path in (warmup, batch):
                t0 = time.perf_counter()
                run = client.create_flow_run_from_deployment(
                    deployment.id, parameters={"target": target.name, "source": str(path)}
                )
                while True:
                    state = client.read_flow_run(run.id).state
                    if state is not None and state.is_final():
                        break
                    time.sleep(0.1)
                timings.append((time.perf_counter() - t0, client.read_flow_run(run.id)))
        elapsed, finished = timings[-1]
        return {
            "trigger_to_completed_s": round(elapsed, 3),
            "state": finished.state.name,
            "flow_run_total_run_time_s": round(finished.total_run_time.total_seconds(), 3),
            "warmup_trigger_to_completed_s": round(timings[0][0], 3),
        }
    finally:
        os.killpg(serve.pid, 15)
        serve.wait(timeout=60)
        serve_log.close()
        shutil.copy(scratch / "serve.log", OUT / f"cycle_latency-serve-{target.name}.log")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", choices=("duckdb", "postgres"), default="duckdb")
    parser.add_argument("--nodes", type=int, default=500)
    parser.add_argument(
        "--dbt-node-tasks",
        choices=("on", "off"),
        default=os.environ.get("WATER_DBT_NODE_TASKS", "0") in ("1", "true", "yes")
        and "on"
        or "off",
        help="Prefect paths: one task per dbt node (PrefectDbtRunner) or one task for the build.",
    )
    args = parser.parse_args()
    os.environ["WATER_DBT_NODE_TASKS"] = "1" if args.dbt_node_tasks == "on" else "0"
    OUT.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    scratch = Path(tempfile.mkdtemp(prefix="water-bench-"))
    os.environ["WATER_DBT_TARGET_ROOT"] = str(scratch / "dbt")
    os.environ["DBT_LOG_PATH"] = str(scratch / "dbt" / "logs")

    history, batches, config = prepare_files(args.nodes)
    target, drop = make_target(args.target)
    server, client = start_redis(scratch)
    os.environ["REDIS_URL"] = f"unix://{scratch / 'redis.sock'}"
    report: dict = {
        "target": args.target,
        "nodes": args.nodes,
        "dbt_node_tasks": args.dbt_node_tasks,
        "history": "2 days of 1-minute readings",
        "batch": "30 minutes of 1-minute readings per node",
        "machine": f"{platform.node()} {os.cpu_count()} cpu(s), Python {platform.python_version()}",
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    try:
        with connect(target) as wh:
            upsert_nodes(wh, node_metadata(config))
            t0 = time.perf_counter()
            load_files(wh, [str(history)], progress=False)
            report["history_load_s"] = round(time.perf_counter() - t0, 1)
        t0 = time.perf_counter()
        initial = run_cycle(target, redis_client=client, triggered_by="benchmark")
        report["initial_cycle"] = describe(initial)
        print(
            f"history loaded in {report['history_load_s']}s, initial cycle {time.perf_counter() - t0:.1f}s"
        )

        run_cycle(
            target, source=str(batches[0]), redis_client=client, triggered_by="benchmark-warmup"
        )
        measured = run_cycle(
            target, source=str(batches[1]), redis_client=client, triggered_by="benchmark"
        )
        report["warm_cycle_direct"] = describe(measured)

        os.environ["WATER_TARGET"] = target.name
        if target.duckdb_path:
            os.environ["WATER_DUCKDB_PATH"] = str(target.duckdb_path)
        os.environ.update(target.dbt_env())
        os.environ["PREFECT_HOME"] = str(scratch / "prefect")
        os.environ.pop("PREFECT_API_URL", None)
        from flows.orchestration.serve import prefect_api

        with prefect_api(port=free_port(), echo=print) as api_url:
            os.environ["PREFECT_API_URL"] = api_url
            from prefect.settings import PREFECT_API_URL, temporary_settings

            with temporary_settings(updates={PREFECT_API_URL: api_url}):
                from flows.orchestration.flows import processing_cycle

                processing_cycle(target=target.name, source=str(batches[2]))
                t0 = time.perf_counter()
                summary = processing_cycle(target=target.name, source=str(batches[3]))
                flow_s = time.perf_counter() - t0
                report["warm_cycle_prefect_flow"] = {
                    "flow_run_s": round(flow_s, 3),
                    "rows_in": summary["rows_in"],
                    "steps_s": {name: step["seconds"] for name, step in summary["steps"].items()},
                    "publish": summary["publish"],
                }
                report["served_deployment"] = measure_served(
                    target, batches[4], batches[5], scratch
                )
    finally:
        server.kill()
        drop()
        shutil.rmtree(scratch, ignore_errors=True)

    out = OUT / f"cycle_latency-{args.target}-dbt-node-tasks-{args.dbt_node_tasks}.json"
    out.write_text(json.dumps(report, indent=2, default=str))
    direct, flow = report["warm_cycle_direct"], report["warm_cycle_prefect_flow"]
    print(
        f"\nwarm incremental cycle, {args.nodes} nodes, {direct['rows_in']:,} new rows, {args.target}"
    )
    print(f"  water cycle (direct)   end to end {direct['end_to_end_s']:6.2f}s")
    print(f"  Prefect flow run       end to end {flow['flow_run_s']:6.2f}s")
    served = report["served_deployment"]
    print(
        f"  served deployment      trigger -> {served['state']} {served['trigger_to_completed_s']:6.2f}s"
        f" (flow run time {served['flow_run_total_run_time_s']:.2f}s)"
    )
    for name in direct["steps_s"]:
        print(
            f"    {name:<12} direct {direct['steps_s'][name]:6.2f}s   flow {flow['steps_s'].get(name, 0):6.2f}s"
        )
    for label, publish in (("direct", direct["publish"]), ("flow", flow["publish"])):
        if publish.get("status") == "published":
            print(
                f"  publish ({label}): read+encode {publish['read_s'] * 1000:.0f} ms, Redis MULTI/EXEC"
                f" {publish['write_s'] * 1000:.0f} ms, {publish['keys']} keys, {publish['bytes'] / 1e6:.1f} MB"
            )
    print(f"written to {out}")


if __name__ == "__main__":
    main()
