"""Helpers for the orchestration tests: a private Redis server, synthetic batches, subprocess
cycles, and comparing published tables between two warehouses.

The Redis server is a real `redis-server` child on a unix socket in the test's tmp dir, so the
tests never touch (or are disturbed by) the shared server on 127.0.0.1:6379 and can stop and
restart it to simulate an outage.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import psycopg
import redis

from flows.kernel.settings import PROJECT_ROOT, Target
from flows.kernel.warehouse import connect

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"


class RedisServer:
    """A real redis-server bound to a unix socket only; start/stop at will."""

    def __init__(self, directory: Path):
        self.directory = directory
        self.socket = directory / "redis.sock"
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"unix://{self.socket}"

    def start(self) -> RedisServer:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(  # noqa: S603 - fixed argv
            [
                REDIS_SERVER,
                "--port",
                "0",
                "--unixsocket",
                str(self.socket),
                "--unixsocketperm",
                "700",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.directory),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                if self.client().ping():
                    return self
            except redis.ConnectionError:
                time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self.process = None

    def client(self) -> redis.Redis:
        return redis.Redis(unix_socket_path=str(self.socket), socket_timeout=5)


def synthetic_frame(
    nodes: int, hours: float, start: datetime, seed: int = 3, **kwargs
) -> pd.DataFrame:
    from flows.loaders.synthetic import SyntheticConfig, generate

    return generate(SyntheticConfig(nodes=nodes, days=hours / 24, start=start, seed=seed, **kwargs))


def write_parquet(frame: pd.DataFrame, path: Path) -> Path:
    frame.reset_index(drop=True).to_parquet(path, index=False)
    return path


def register_nodes(target: Target, nodes: int, seed: int = 3) -> None:
    from flows.loaders.nodes import upsert_nodes
    from flows.loaders.synthetic import SyntheticConfig, node_metadata

    with connect(target) as wh:
        upsert_nodes(wh, node_metadata(SyntheticConfig(nodes=nodes, seed=seed)))


def hour_floor(value: datetime) -> datetime:
    return value.replace(minute=0, second=0, microsecond=0)


def recent_start(hours: float) -> datetime:
    """A start so that `hours` of data end at the current hour (fresh data)."""
    return hour_floor(datetime.now(UTC)) - timedelta(hours=hours)


def cli_env(target: Target, redis_url: str | None, dbt_root: Path, **extra: str) -> dict[str, str]:
    """Environment for a `water` subprocess working on `target`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST")}
    env.update(target.dbt_env())
    env["WATER_DBT_TARGET_ROOT"] = str(dbt_root)
    env["DBT_LOG_PATH"] = str(dbt_root / "logs")
    if redis_url:
        env["REDIS_URL"] = redis_url
    env.update(extra)
    return env


def start_water(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    with log.open("wb") as out:
        return subprocess.Popen(  # noqa: S603 - our own console script
            [sys.executable, "-m", "flows.cli", *args],
            env=env,
            cwd=PROJECT_ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def wait_for(condition: Callable[[], bool], timeout_s: float, what: str, process=None) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        if process is not None and process.poll() is not None:
            raise AssertionError(f"the process ended (code {process.returncode}) before {what}")
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout_s:.0f}s waiting for {what}")


def sigkill(process: subprocess.Popen) -> None:
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def pg_scalar(target: Target, sql: str, params: dict | None = None):
    with psycopg.connect(autocommit=True, **target.pg_dsn_parts) as con:
        row = con.execute(sql, params).fetchone()
    return row[0] if row else None


class ExtraDatabase:
    """A second fresh PostgreSQL database (dropped by `drop()`)."""

    def __init__(self, like: Target):
        self.name = f"water_test_{uuid.uuid4().hex[:12]}"
        self.parts = {**like.pg_dsn_parts, "dbname": self.name}
        with psycopg.connect(
            autocommit=True, **{**like.pg_dsn_parts, "dbname": "postgres"}
        ) as admin:
            admin.execute(f'create database "{self.name}"')

    @property
    def target(self) -> Target:
        return Target("postgres", pg_dsn_parts=dict(self.parts))

    def drop(self) -> None:
        with psycopg.connect(autocommit=True, **{**self.parts, "dbname": "postgres"}) as admin:
            admin.execute(f'drop database if exists "{self.name}" with (force)')


# Columns that record *when* something was processed, not what: they differ between two runs.
PROCESSING_TIME_COLUMNS = {
    "computed_at",
    "loaded_at",
    "last_loaded_at",
    "rejected_at",
    "detected_at",
    "updated_at",
}


def published_table(target: Target, table: str, key: list[str]) -> pd.DataFrame:
    with connect(target) as wh:
        frame = wh.query_df(f"select * from water_infrastructure.{table}")
    keep = [c for c in frame.columns if c not in PROCESSING_TIME_COLUMNS]
    frame = frame[keep].sort_values(key).reset_index(drop=True)
    for column in frame.columns:
        if pd.api.types.is_float_dtype(frame[column]):
            frame[column] = frame[column].round(9)
    return frame


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (for a server a test starts)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, proc: subprocess.Popen, seconds: float = 90) -> None:
    """Wait until `url` answers, failing early with the process's output if it exits."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.stdout.read() if proc.stdout else "exited"
        try:
            with urllib.request.urlopen(url, timeout=2):  # noqa: S310 - local test URL
                return
        except OSError:
            time.sleep(0.5)
    raise AssertionError(f"{url} did not answer in {seconds}s")
