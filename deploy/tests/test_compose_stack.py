"""`make containers-test`: the compose stack of deploy/compose.yml, built and run on this machine.

Builds what is missing (base image, then the three images; cached layers on later runs), brings
the stack up under its own compose project, loads a synthetic network through the app container,
triggers cycles through the API against the containerised PostgreSQL and Redis, checks the
seed's endpoints and monitoring queries, restarts Redis and the API, and tears everything down
(containers, volumes, network, firewall rules). Not collected by `make test` (testpaths is
tests/); `.ci/run` runs it after the suite.
"""

from __future__ import annotations

import io
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import jwt
import pandas as pd
import pytest

from tests.reference import reference_metrics

REPO = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO / "deploy" / "compose.yml"
PROJECT = "water-ci"
LABEL = f"io.podman.compose.project={PROJECT}"
SECRET = secrets.token_hex(32)  # the API's HS256 key, made up for this run only
NODE_ROWS = 4  # synthetic nodes

pytestmark = pytest.mark.skipif(
    shutil.which("podman") is None, reason="podman is not installed (.ci/run installs it)"
)


def _podman_compose() -> str:
    beside = Path(sys.executable).with_name("podman-compose")
    return str(beside) if beside.exists() else (shutil.which("podman-compose") or "podman-compose")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


ENV = {
    **os.environ,
    "CONTAINERS_CONF": os.environ.get(
        "CONTAINERS_CONF", str(REPO / "deploy" / "containers" / "containers.conf")
    ),
    "POSTGRES_PASSWORD": secrets.token_hex(16),
    "REDIS_PASSWORD": secrets.token_hex(16),
    "WATER_API_JWT_SECRET": SECRET,
    "WATER_API_PORT": str(_free_port()),
    "WATER_API_TRIGGER_RATE": "100/minute",
}
BASE_URL = f"http://127.0.0.1:{ENV['WATER_API_PORT']}"


def run(*args: str, check: bool = True, timeout: float = 900) -> subprocess.CompletedProcess:
    done = subprocess.run(
        args, env=ENV, cwd=REPO, capture_output=True, text=True, timeout=timeout, check=False
    )
    if check and done.returncode != 0:
        raise AssertionError(
            f"{' '.join(args[:6])} exited {done.returncode}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        )
    return done


def compose(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return run(_podman_compose(), "-f", str(COMPOSE_FILE), "-p", PROJECT, *args, check=check)


def container(service: str) -> str:
    names = run(
        "podman", "ps", "-a", "--filter", f"label={LABEL}",
        "--filter", f"label=io.podman.compose.service={service}", "--format", "{{.Names}}",
    ).stdout.split()  # fmt: skip
    assert len(names) == 1, f"expected one {service} container, found {names}"
    return names[0]


def in_service(service: str, *command: str) -> str:
    return run("podman", "exec", container(service), *command).stdout


def psql(sql: str) -> str:
    return in_service("postgres", "psql", "-U", "postgres", "-X", "-q", "-A", "-t", "-c", sql)


def redis_get(key: str) -> str:
    # REDISCLI_AUTH is in the container's environment (compose.yml); no password on a command line.
    return in_service("redis", "redis-cli", "--no-auth-warning", "GET", key).strip()


def token(scope: str) -> dict[str, str]:
    claims = {"sub": "containers-test", "scope": scope, "exp": int(time.time()) + 3600}
    return {"Authorization": f"Bearer {jwt.encode(claims, SECRET, algorithm='HS256')}"}


READ = token("read")
FINISHED = {"completed", "failed", "skipped"}


def get(path: str, **params) -> dict:
    response = httpx.get(BASE_URL + path, headers=READ, params=params, timeout=30)
    assert response.status_code == 200, f"GET {path}: {response.status_code} {response.text[:500]}"
    return response.json()


def wait_healthy(timeout_s: float = 240) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{BASE_URL}/health", timeout=3).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(1)
    logs = run("podman", "logs", "--tail", "40", container("api"), check=False)
    raise AssertionError(f"API not healthy on {BASE_URL}:\n{logs.stdout}{logs.stderr}")


def wait_ready(timeout_s: float = 240) -> None:
    """PostgreSQL and Redis pass their healthchecks, then the API answers."""
    deadline = time.monotonic() + timeout_s
    for service in ("postgres", "redis"):
        while run("podman", "healthcheck", "run", container(service), check=False).returncode:
            assert time.monotonic() < deadline, f"{service} never became healthy"
            time.sleep(1)
    wait_healthy(max(1.0, deadline - time.monotonic()))


def trigger_cycle(timeout_s: float = 900) -> dict:
    """POST the trigger, then follow the job until it ends; returns the finished job."""
    deadline = time.monotonic() + timeout_s
    while True:
        response = httpx.post(
            f"{BASE_URL}/api/v1/processing/trigger", headers=token("trigger"), timeout=30
        )
        # 409: the previous cycle's process is still finishing (its job row may already say so).
        if response.status_code != 409 or time.monotonic() > deadline:
            break
        time.sleep(2)
    assert response.status_code == 202, response.text
    job_id = response.json()["job_id"]
    while time.monotonic() < deadline:
        job = httpx.get(f"{BASE_URL}/api/v1/jobs/{job_id}", headers=READ, timeout=30)
        if job.status_code == 200 and job.json()["status"] in FINISHED:
            return job.json()
        time.sleep(3)
    raise AssertionError(f"cycle {job_id} did not finish")


def firewall_rules(subnets: list[str]) -> list[tuple[str, str]]:
    """(table, rule) of every iptables rule naming one of these subnets or this stack's network."""
    found = []
    for table in ("nat", "filter"):
        for line in run("iptables", "-t", table, "-S", check=False).stdout.splitlines():
            if line.startswith("-A ") and (PROJECT in line or any(s in line for s in subnets)):
                found.append((table, line))
    return found


def drop_firewall_rules(subnets: list[str]) -> None:
    """netavark 1.4 keeps a removed network's NAT chain and forward rules: delete them."""
    rules = firewall_rules(subnets)
    # The network's own chains (NETAVARK-<id>, NETAVARK-DN-<id>) are jumped to from those rules.
    chains = {
        (table, rule.split()[-1])
        for table, rule in rules
        if rule.split()[-2] == "-j" and rule.split()[-1].startswith("NETAVARK-")
        and not rule.split()[-1].startswith("NETAVARK-HOSTPORT")
    }  # fmt: skip
    for table, rule in rules:
        run("iptables", "-t", table, "-D", *rule.split()[1:], check=False)
    for table, chain in chains:
        run("iptables", "-t", table, "-F", chain, check=False)
        run("iptables", "-t", table, "-X", chain, check=False)
    for chain in empty_port_chains():  # a removed container's port-forward chain, left empty
        run("iptables", "-t", "nat", "-X", chain, check=False)


def empty_port_chains() -> list[str]:
    lines = run("iptables", "-t", "nat", "-S", check=False).stdout.splitlines()
    chains = [line.split()[1] for line in lines if line.startswith("-N NETAVARK-DN-")]
    return [c for c in chains if not any(line.split()[1:2] == [c] for line in lines if line.startswith("-A "))
            and not any(line.endswith(f"-j {c}") for line in lines)]  # fmt: skip


def stack_subnets() -> list[str]:
    names = run(
        "podman", "network", "ls", "--filter", f"label={LABEL}", "--format", "{{.Name}}",
        check=False,
    ).stdout.split()  # fmt: skip
    return [
        subnet
        for name in names
        for subnet in run("podman", "network", "inspect", name, "--format",
                          "{{range .Subnets}}{{.Subnet}} {{end}}", check=False).stdout.split()
    ]  # fmt: skip


SUBNETS: list[str] = []  # of this run's network, kept for the final check


def teardown() -> None:
    """Remove every container, volume and network of the project, and netavark's leftovers."""
    subnets = stack_subnets()
    SUBNETS.extend(s for s in subnets if s not in SUBNETS)
    compose("down", "--volumes", "--timeout", "20", check=False)
    for kind in ("container", "volume", "network"):
        ids = run("podman", kind, "ls", *(["-a"] if kind == "container" else []),
                  "--filter", f"label={LABEL}", "-q", check=False).stdout.split()  # fmt: skip
        if ids:
            run("podman", kind, "rm", "-f", *ids, check=False)
    drop_firewall_rules(subnets)


@pytest.fixture(scope="module")
def stack():
    run(str(REPO / "deploy" / "containers" / "build.sh"), timeout=3600)
    teardown()  # leftovers of an interrupted earlier run
    try:
        compose("up", "-d")
        SUBNETS.extend(stack_subnets())
        wait_ready()
        yield
    finally:
        teardown()


def test_every_service_passes_its_healthcheck(stack):
    # Without systemd podman does not schedule healthchecks: run each one once, as a timer would.
    for service in ("postgres", "redis", "api"):
        done = run("podman", "healthcheck", "run", container(service), check=False)
        assert done.returncode == 0, f"{service}: {done.stdout}{done.stderr}"


def test_cycle_through_the_api_on_containerised_postgres_and_redis(stack):
    loaded = in_service(
        "api", "water", "load", "synthetic", "--nodes", str(NODE_ROWS), "--days", "1"
    )
    assert "new raw row(s)" in loaded, loaded

    job = trigger_cycle()
    assert job["status"] == "completed", job

    # The seed's read endpoints, with a token.
    status = get("/api/v1/status")
    assert status["database"]["reachable"] and status["redis"]["reachable"], status
    assert status["processing_service"]["last_cycle"]["status"] == "completed", status
    models = get("/api/v1/models/status")
    assert models["available"] and isinstance(models["models"], list), models
    anomalies = get("/api/v1/anomalies", hours=24)
    assert anomalies["available"] and isinstance(anomalies["anomalies"], list), anomalies

    # A data endpoint against an independent computation from the raw rows in the container.
    raw = pd.read_csv(
        io.StringIO(in_service(
            "postgres", "psql", "-U", "postgres", "-X", "-c",
            "copy (select * from raw.sensor_readings) to stdout with csv header",
        ))
    )  # fmt: skip
    for column in ("timestamp", "loaded_at"):  # psql prints whole seconds without a fraction
        raw[column] = pd.to_datetime(raw[column], utc=True, format="ISO8601")
    expected = reference_metrics(raw)
    node = sorted(raw["node_id"].unique())[0]
    hours = expected[(expected.node_id == node) & (expected.time_window == "1hour")]
    latest = hours.sort_values("window_start").iloc[-1]
    body = get(f"/api/v1/nodes/{node}/metrics", window="1hour")
    metrics = body["metrics"]
    assert pd.Timestamp(metrics["window_start"]) == latest.window_start
    assert metrics["reading_count"] == latest.reading_count
    assert metrics["avg_flow_rate"] == pytest.approx(latest.avg_flow_rate, rel=1e-9)

    # The seed's two monitoring queries, through the PostgreSQL container.
    recent = psql(
        "select job_type, status from water_infrastructure.processing_jobs "
        "where created_at > now() - interval '1 hour' order by created_at desc"
    )
    assert "|completed" in recent, recent
    freshness = psql(
        "select count(distinct node_id), max(window_end) > now() - interval '1 day' "
        "from water_infrastructure.computed_metrics where time_window = '5min'"
    )
    assert freshness.strip() == f"{NODE_ROWS}|t", freshness

    # The cycle's snapshot is in the containerised Redis and the API reports the same cycle.
    snapshot = json.loads(redis_get("water:status"))
    assert snapshot["cycle_id"] == status["redis"]["cycle_id"], (snapshot, status["redis"])


def test_next_cycle_publishes_after_redis_and_api_restart(stack):
    before = json.loads(redis_get("water:status"))["cycle_id"]
    run("podman", "restart", container("redis"))

    # SIGTERM stops the API gracefully: uvicorn finishes its shutdown, then re-raises the signal
    # (exit 143); 137 would be the SIGKILL after the stop timeout.
    api = container("api")
    run("podman", "stop", "--time", "30", api)
    code = run("podman", "inspect", api, "--format", "{{.State.ExitCode}}").stdout.strip()
    logs = run("podman", "logs", api)
    assert code in ("0", "143"), code
    assert "Application shutdown complete" in logs.stdout + logs.stderr
    run("podman", "start", api)
    wait_ready()

    job = trigger_cycle()
    assert job["status"] == "completed", job
    assert json.loads(redis_get("water:status"))["cycle_id"] != before


def test_teardown_leaves_nothing_behind(stack):
    teardown()
    for kind in ("container", "volume", "network"):
        left = run("podman", kind, "ls", *(["-a"] if kind == "container" else []),
                   "--filter", f"label={LABEL}", "-q").stdout.split()  # fmt: skip
        assert not left, f"{kind}s left behind: {left}"
    assert SUBNETS, "the stack's network was never seen"
    assert not firewall_rules(SUBNETS), firewall_rules(SUBNETS)
    assert not empty_port_chains(), empty_port_chains()
