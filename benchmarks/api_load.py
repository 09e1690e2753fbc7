"""API load benchmark (issue 7): node metrics served from Redis at a fixed request rate.

    .venv/bin/python benchmarks/api_load.py [--rate 1000] [--seconds 20] [--nodes 24]

1. Builds a real platform: a fresh PostgreSQL database, a synthetic network (`--nodes` nodes,
   2 days at 5 minutes), one `run_cycle` that publishes to a private `redis-server`.
2. Starts `water api` (one uvicorn process, auth ON: every request carries a JWT) on a free
   loopback port.
3. Open-loop load at `--rate` requests/s for `--seconds` s, after 3 s of unmeasured warm-up at
   the same rate: requests are scheduled on a fixed timetable and latency is measured from the
   scheduled time, so a slow server cannot hide behind a slowed-down client (no coordinated
   omission). First `/health` (the trivial reference), then `GET /api/v1/nodes/{id}/metrics`
   round-robin over every node. The client is a minimal keep-alive HTTP/1.1 client on uvloop.
4. A closed-loop saturation run (`--concurrency` clients, `--saturation-seconds` s) for the
   maximum throughput of both routes and their ratio.
5. `--workers 1,4` (default): steps 2-4 once per worker count (`water api --workers N`), the
   single-worker run being the reference for p99, errors and saturation throughput of N workers.

Everything is bounded (request count = rate x seconds), goes to 127.0.0.1 only, and stops by
itself. Figures are printed and written to benchmarks/out/api_load.json. The target on this
machine (2 cores, shared): 1,000 requests/s with p99 < 20 ms for the metrics route.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import platform as platform_module
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
import jwt  # noqa: E402
import psycopg  # noqa: E402
import redis  # noqa: E402

from flows.kernel.settings import Target  # noqa: E402
from flows.kernel.warehouse import connect  # noqa: E402
from flows.loaders.loading import load_synthetic  # noqa: E402
from flows.loaders.synthetic import SyntheticConfig  # noqa: E402
from flows.pipeline.cycle import run_cycle  # noqa: E402

OUT = ROOT / "benchmarks" / "out"
# A private redis-server (Debian's binary) for the run: a shared database number can be
# flushed by another run of this benchmark on the same machine.
REDIS_URL = ""
SECRET = "api-load-benchmark-secret-0123456789abcdef"
PG = {
    "host": os.environ.get("PGHOST", "127.0.0.1"),
    "port": os.environ.get("PGPORT", "5432"),
    "user": os.environ.get("PGUSER", "postgres"),
}


@dataclass
class LoadResult:
    route: str
    mode: str
    requests: int
    errors: int
    seconds: float
    achieved_rps: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float


def percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    index = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return sorted_values[index]


def summarise(
    route: str, mode: str, latencies: list[float], errors: int, seconds: float
) -> LoadResult:
    values = sorted(latencies)
    return LoadResult(
        route=route,
        mode=mode,
        requests=len(latencies) + errors,
        errors=errors,
        seconds=round(seconds, 3),
        achieved_rps=round(len(latencies) / seconds, 1),
        p50_ms=round(percentile(values, 0.50) * 1000, 2),
        p90_ms=round(percentile(values, 0.90) * 1000, 2),
        p99_ms=round(percentile(values, 0.99) * 1000, 2),
        max_ms=round(values[-1] * 1000, 2) if values else float("nan"),
    )


class Http11Connection:
    """A minimal keep-alive HTTP/1.1 client connection: GET, status, body by Content-Length.

    The load generator must cost far less than the server it measures; a general-purpose
    client's pool bookkeeping grows with the number of waiting requests, this does not.
    """

    def __init__(self, host: str, port: int, headers: dict[str, str]):
        self.host, self.port = host, port
        self.header_block = "".join(
            f"{k}: {v}\r\n" for k, v in {"Host": f"{host}:{port}", **headers}.items()
        )
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def get(self, path: str) -> int:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        self.writer.write(f"GET {path} HTTP/1.1\r\n{self.header_block}\r\n".encode())
        status_line = await self.reader.readline()
        if not status_line:
            await self.close()
            raise ConnectionError("server closed the connection")
        length, keep_alive = 0, True
        while True:
            line = await self.reader.readline()
            if line in (b"\r\n", b""):
                break
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"connection" and b"close" in value.lower():
                keep_alive = False
        await self.reader.readexactly(length)
        if not keep_alive:
            await self.close()
        return int(status_line.split()[1])

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.reader = self.writer = None


async def open_loop(
    base: str, paths: list[str], headers: dict, rate: float, seconds: float, connections: int = 64
) -> LoadResult:
    """Send rate x seconds requests on a fixed timetable over `connections` keep-alive
    connections; latency from the scheduled time (queueing for a free connection counts)."""
    host, port = base.removeprefix("http://").split(":")
    total = int(rate * seconds)
    queue: asyncio.Queue = asyncio.Queue()
    latencies: list[float] = []
    errors = 0

    async def worker() -> None:
        nonlocal errors
        connection = Http11Connection(host, int(port), headers)
        while True:
            item = await queue.get()
            if item is None:
                await connection.close()
                return
            path, scheduled = item
            try:
                status = await asyncio.wait_for(connection.get(path), timeout=10)
            except (TimeoutError, OSError, ConnectionError, asyncio.IncompleteReadError):
                errors += 1
                await connection.close()
                continue
            if status == 200:
                latencies.append(time.perf_counter() - scheduled)
            else:
                errors += 1

    workers = [asyncio.create_task(worker()) for _ in range(connections)]
    start = time.perf_counter()
    sent = 0
    while sent < total:
        due = min(total, int((time.perf_counter() - start) * rate) + 1)
        while sent < due:
            queue.put_nowait((paths[sent % len(paths)], start + sent / rate))
            sent += 1
        await asyncio.sleep(max(0.0, start + sent / rate - time.perf_counter()))
    for _ in workers:
        queue.put_nowait(None)
    await asyncio.gather(*workers)
    elapsed = time.perf_counter() - start
    route = paths[0] if len(paths) == 1 else _template(paths[0])
    return summarise(route, f"open loop {rate:.0f}/s", latencies, errors, elapsed)


async def closed_loop(
    base: str, paths: list[str], headers: dict, concurrency: int, seconds: float
) -> LoadResult:
    """`concurrency` connections each sending back to back for `seconds`: maximum throughput."""
    host, port = base.removeprefix("http://").split(":")
    latencies: list[float] = []
    errors = 0
    stop = time.perf_counter() + seconds

    async def worker(offset: int) -> None:
        nonlocal errors
        connection = Http11Connection(host, int(port), headers)
        i = offset
        while time.perf_counter() < stop:
            t0 = time.perf_counter()
            try:
                status = await asyncio.wait_for(connection.get(paths[i % len(paths)]), timeout=10)
                if status == 200:
                    latencies.append(time.perf_counter() - t0)
                else:
                    errors += 1
            except (TimeoutError, OSError, ConnectionError, asyncio.IncompleteReadError):
                errors += 1
                await connection.close()
            i += 1
        await connection.close()

    start = time.perf_counter()
    await asyncio.gather(*(worker(k) for k in range(concurrency)))
    elapsed = time.perf_counter() - start
    route = paths[0] if len(paths) == 1 else _template(paths[0])
    return summarise(route, f"closed loop x{concurrency}", latencies, errors, elapsed)


def _template(path: str) -> str:
    parts = path.split("/")
    return "/".join("{node_id}" if i == 4 else p for i, p in enumerate(parts))


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process and its worker children, from /proc (Linux)."""
    total = 0.0
    for each in (pid, *_children(pid)):
        try:
            fields = Path(f"/proc/{each}/stat").read_text().rsplit(")", 1)[1].split()
        except FileNotFoundError:
            continue
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def _children(pid: int) -> list[int]:
    found = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    return [int(p) for p in found.split()]


def run(coroutine):
    """The load generator runs on uvloop when installed: it must cost less than the server."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coroutine)
    return uvloop.run(coroutine)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_redis(directory: Path) -> subprocess.Popen:
    """redis-server on a free loopback port, no persistence; sets REDIS_URL."""
    global REDIS_URL
    port = free_port()
    process = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--dir", str(directory)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    REDIS_URL = f"redis://127.0.0.1:{port}/0"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if redis.Redis.from_url(REDIS_URL).ping():
                return process
        except redis.ConnectionError:
            time.sleep(0.1)
    process.kill()
    raise SystemExit("redis-server did not start")


def build_platform(nodes: int, landing: Path) -> tuple[str, Target, list[str]]:
    name = f"water_bench_api_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(autocommit=True, dbname="postgres", **PG) as admin:
        admin.execute(f'create database "{name}"')
    target = Target("postgres", pg_dsn_parts={**PG, "dbname": name})
    client = redis.Redis.from_url(REDIS_URL)
    client.flushdb()
    try:
        with connect(target) as wh:
            config = SyntheticConfig(nodes=nodes, days=2, cadence_s=300, seed=5)
            load_synthetic(wh, config, progress=False, landing_dir=landing)
        result = run_cycle(target, triggered_by="benchmark", redis_client=client)
        node_ids = [n["node_id"] for n in json.loads(client.get("water:nodes"))]
    except BaseException:
        drop_database(name)
        raise
    finally:
        client.close()
    print(
        f"platform: {nodes} nodes, cycle {result.job_id} {result.status} in {result.duration_seconds:.1f}s"
    )
    return name, target, node_ids


def drop_database(name: str) -> None:
    with psycopg.connect(autocommit=True, dbname="postgres", **PG) as admin:
        admin.execute(f'drop database if exists "{name}" with (force)')
    redis.Redis.from_url(REDIS_URL).flushdb()


def start_server(target: Target, port: int, workers: int = 1) -> subprocess.Popen:
    env = {**os.environ, **target.dbt_env(), "REDIS_URL": REDIS_URL, "WATER_API_JWT_SECRET": SECRET}
    process = subprocess.Popen(
        [sys.executable, "-m", "flows.cli", "api", "--port", str(port), "--workers", str(workers)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                # Every worker up: the process and its N children (plus multiprocessing's helper).
                while workers > 1 and len(_children(process.pid)) < workers:
                    time.sleep(0.2)
                return process
        except httpx.TransportError:
            time.sleep(0.2)
    process.kill()
    raise SystemExit("water api did not start")


def server_p99_ms(base: str, route: str) -> float | None:
    """The server's own view: the smallest histogram bucket holding 99 % of that route's requests."""
    text = httpx.get(f"{base}/metrics", timeout=10).text
    buckets = []
    for line in text.splitlines():
        if (
            line.startswith("water_api_request_duration_seconds_bucket{")
            and f'route="{route}"' in line
            and 'status="200"' in line
        ):
            le = line.split('le="')[1].split('"')[0]
            buckets.append(
                (float("inf") if le == "+Inf" else float(le), float(line.rsplit(" ", 1)[1]))
            )
    if not buckets:
        return None
    buckets.sort()
    total = buckets[-1][1]
    for le, count in buckets:
        if count >= 0.99 * total:
            return le * 1000
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=1000.0)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--nodes", type=int, default=24)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--saturation-seconds", type=float, default=10.0)
    parser.add_argument(
        "--workers",
        type=lambda text: [int(n) for n in text.split(",")],
        default=[1, 4],
        help="worker counts to compare, the first being the reference (default 1,4)",
    )
    args = parser.parse_args()
    if args.rate * args.seconds > 200_000:
        raise SystemExit("refusing more than 200,000 requests per run")

    # Other work on this machine competes for its 2 cores: the load average is reported.
    load_before = os.getloadavg()[0]
    landing = Path(tempfile.mkdtemp(prefix="water-api-bench-"))
    redis_server = start_redis(landing)
    try:
        name, target, node_ids = build_platform(args.nodes, landing)
        try:
            runs = {n: measure(target, node_ids, n, args) for n in args.workers}
        finally:
            drop_database(name)
    finally:
        redis_server.terminate()
        redis_server.wait(timeout=30)

    single = runs[args.workers[0]]
    results = single["results"]
    health_max, metrics_max = results[2].achieved_rps, results[3].achieved_rps
    target_met = (
        results[1].achieved_rps >= 0.98 * args.rate
        and results[1].p99_ms < 20
        and results[1].errors == 0
    )
    summary = {
        "load_average_1m_before_after": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        "machine": f"{platform_module.machine()} {os.cpu_count()} cores, python {platform_module.python_version()}",
        "server": f"water api: 1 uvicorn process ({_server_stack()}), auth on (a JWT on every request)",
        "nodes": len(node_ids),
        "results": [asdict(r) for r in results],
        "server_side_p99_bucket_ms": single["server_p99"],
        # CPU time the server process used per request in the open-loop runs: what one core
        # would sustain is about 1e6 / this, whatever else the machine is doing.
        "server_cpu_us_per_request": single["cpu_us"],
        "saturation_ratio_metrics_vs_health": round(metrics_max / health_max, 3)
        if health_max
        else None,
        "target": f"{args.rate:.0f} req/s with p99 < 20 ms on node metrics",
        "target_met": target_met,
        # The same runs per worker count (`water api --workers N`), the first being the reference.
        "by_workers": {
            str(n): {
                "results": [asdict(r) for r in run_["results"]],
                "server_cpu_us_per_request": run_["cpu_us"],
            }
            for n, run_ in runs.items()
        },
    }
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "api_load.json").write_text(json.dumps(summary, indent=2))
    print(f"server-side p99 bucket for node metrics: <= {single['server_p99']} ms")
    print(
        f"saturation: metrics {metrics_max:.0f} req/s vs health {health_max:.0f} req/s (ratio {summary['saturation_ratio_metrics_vs_health']})"
    )
    for n, run_ in runs.items():
        open_metrics, closed_metrics = run_["results"][1], run_["results"][3]
        print(
            f"workers {n}: node metrics at {args.rate:.0f} req/s p99 {open_metrics.p99_ms:.2f} ms,"
            f" {open_metrics.errors} errors; saturation {closed_metrics.achieved_rps:.0f} req/s"
            f" (p99 {closed_metrics.p99_ms:.2f} ms, {closed_metrics.errors} errors)"
        )
    print(f"load average (1 min) before/after: {summary['load_average_1m_before_after']}")
    print(f"target {summary['target']}: {'MET' if target_met else 'NOT MET'}")


def measure(target: Target, node_ids: list[str], workers: int, args) -> dict:
    """Open-loop and saturation runs on /health and node metrics against `water api --workers N`."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    print(f"-- water api --workers {workers}")
    server = start_server(target, port, workers)
    headers = {
        "Authorization": "Bearer "
        + jwt.encode(
            {"sub": "bench", "scope": "read", "exp": int(time.time()) + 3600},
            SECRET,
            algorithm="HS256",
        )
    }
    metrics_paths = [f"/api/v1/nodes/{n}/metrics" for n in node_ids]
    results: list[LoadResult] = []
    cpu_us: dict[str, float] = {}
    try:
        first = httpx.get(base + metrics_paths[0], headers=headers, timeout=10).json()
        assert first["source"] == "cache", first
        for paths in (["/health"], metrics_paths):
            # Warm-up at the same rate (HTTP and Redis connections opened), not measured.
            run(open_loop(base, paths, headers, args.rate, 3))
            cpu_before = process_cpu_seconds(server.pid)
            results.append(run(open_loop(base, paths, headers, args.rate, args.seconds)))
            spent = process_cpu_seconds(server.pid) - cpu_before
            cpu_us[results[-1].route] = round(spent / max(1, results[-1].requests) * 1e6, 1)
            print(_line(results[-1]), f" server CPU {cpu_us[results[-1].route]:.0f} us/req")
        # One worker's histogram only when there are several (each process counts its own).
        server_p99 = server_p99_ms(base, "/api/v1/nodes/{node_id}/metrics")
        for paths in (["/health"], metrics_paths):
            results.append(
                run(closed_loop(base, paths, headers, args.concurrency, args.saturation_seconds))
            )
            print(_line(results[-1]))
    finally:
        server.terminate()
        server.wait(timeout=60)
    return {"results": results, "cpu_us": cpu_us, "server_p99": server_p99}


def _server_stack() -> str:
    loop = "uvloop" if importlib.util.find_spec("uvloop") else "asyncio"
    http = "httptools" if importlib.util.find_spec("httptools") else "h11"
    return f"{loop}, {http}"


def _line(r: LoadResult) -> str:
    return (
        f"{r.route:<34} {r.mode:<18} {r.requests:>7} req  {r.errors:>4} err  {r.achieved_rps:>8.1f} req/s"
        f"  p50 {r.p50_ms:6.2f} ms  p90 {r.p90_ms:6.2f} ms  p99 {r.p99_ms:6.2f} ms  max {r.max_ms:7.2f} ms"
    )


if __name__ == "__main__":
    main()
