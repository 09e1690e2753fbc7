"""`water api --workers 4`: the trigger rate limit holds exactly across the workers.

The user's command serves four processes on one port with a private Redis; 40 triggers from
one client arrive at once on fresh connections (the kernel spreads them over the workers).
A cycle holds the run lock, so every trigger the limit lets through answers 409 and none
starts a cycle: exactly `limit` answers are 409, the rest 429. Counted per process (the
limiter before this change) the four workers let up to four times the limit through.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import jwt
import pytest

from flows.kernel.settings import PROJECT_ROOT
from flows.pipeline.lock import LOCK_FOR_JOB, RunLock
from tests.orch_support import RedisServer, free_port, wait_http

pytestmark = pytest.mark.postgres

SECRET = "workers-test-secret-0123456789-abcdefgh"
LIMIT = 5
REQUESTS = 40


def _trigger(url: str, token: str) -> int:
    # A new connection per request, so the requests are not pinned to one worker.
    with httpx.Client(timeout=30) as client:
        return client.post(url, headers={"Authorization": f"Bearer {token}"}).status_code


def test_trigger_limit_is_exact_across_four_workers(pg_target, tmp_path):
    redis_server = RedisServer(tmp_path / "redis").start()
    port = free_port()
    env = {
        **os.environ,
        **pg_target.dbt_env(),
        "REDIS_URL": redis_server.url,
        "WATER_API_JWT_SECRET": SECRET,
        "WATER_API_TRIGGER_RATE": f"{LIMIT}/minute",
    }
    api = subprocess.Popen(
        [sys.executable, "-m", "flows.cli", "api", "--workers", "4", "--port", str(port)],
        cwd=PROJECT_ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    lock = RunLock(pg_target, LOCK_FOR_JOB["cycle"])
    try:
        wait_http(f"http://127.0.0.1:{port}/health", api)
        pids = _worker_pids(api.pid)
        assert len(pids) == 4, pids
        assert lock.acquire()
        token = jwt.encode(
            {"sub": "ops", "scope": "trigger", "exp": int(time.time()) + 600}, SECRET, "HS256"
        )
        url = f"http://127.0.0.1:{port}/api/v1/processing/trigger"
        with ThreadPoolExecutor(max_workers=16) as pool:
            codes = list(pool.map(lambda _: _trigger(url, token), range(REQUESTS)))
        assert sorted(codes) == [409] * LIMIT + [429] * (REQUESTS - LIMIT), codes
        # Another client has its own allowance, on whichever worker answers.
        other = jwt.encode(
            {"sub": "scheduler", "scope": "trigger", "exp": int(time.time()) + 600},
            SECRET,
            "HS256",
        )
        assert _trigger(url, other) == 409
    finally:
        lock.release()
        api.terminate()
        try:
            api.wait(timeout=20)
        except subprocess.TimeoutExpired:
            api.kill()
            api.wait()
        redis_server.stop()


def _worker_pids(parent: int) -> list[int]:
    """The uvicorn worker processes of `water api` (its spawned children; not multiprocessing's
    resource tracker)."""
    deadline = time.monotonic() + 60
    while True:
        children = subprocess.run(["pgrep", "-P", str(parent)], capture_output=True, text=True)
        workers = [
            int(pid) for pid in children.stdout.split() if b"spawn_main" in _cmdline(int(pid))
        ]
        if len(workers) >= 4 or time.monotonic() > deadline:
            return workers
        time.sleep(0.5)


def _cmdline(pid: int) -> bytes:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            return fh.read()
    except FileNotFoundError:
        return b""
