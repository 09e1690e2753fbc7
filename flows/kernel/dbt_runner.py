"""Run the dbt project in-process against a target.

`dbtRunner` keeps dbt's start-up to ~0.6 s when warm (the CLI costs ~3.6 s), and gives
back per-node results, so a failure names the model or test that failed.
Prefect flows use `prefect_dbt.PrefectDbtRunner` through `flows.orchestration.flows` instead; both read
the same `profiles.yml` and the same environment from `Target.dbt_env()`.
"""

from __future__ import annotations

import ast
import functools
import logging
import os
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from flows.kernel.settings import DBT_PROJECT_DIR, PROJECT_ROOT, Target

log = logging.getLogger(__name__)


def serialize_ast_parse() -> None:
    """Let one thread at a time build a Python AST in this process (idempotent).

    CPython 3.11 keeps the AST constructor's recursion counter in interpreter-wide state
    (python/cpython#106905). dbt compiles nodes in parallel threads and Jinja and dbt call
    `ast.literal_eval` while doing so; when two calls interleave, one fails with "SystemError:
    AST constructor recursion depth mismatch" and a random model or test errors. It broke a CI
    run here. `ast.literal_eval` goes through the module's `parse`, so a lock there covers it.
    """
    if getattr(ast.parse, "water_serialized", False):
        return
    original = ast.parse
    lock = threading.RLock()  # re-entrant: a finalizer run mid-parse may parse again

    @functools.wraps(original)
    def parse(*args, **kwargs):
        with lock:
            return original(*args, **kwargs)

    parse.water_serialized = True  # type: ignore[attr-defined]
    ast.parse = parse


serialize_ast_parse()


class DbtError(RuntimeError):
    """dbt failed; the message names the failing nodes."""


@dataclass
class DbtOutcome:
    success: bool
    failures: list[str] = field(default_factory=list)
    node_timings: dict[str, float] = field(default_factory=dict)
    rows_affected: dict[str, int] = field(default_factory=dict)


# A cycle's data tests check what it built: rows loaded after its watermark and rows its dbt
# run (re)computed after `build_start` (the database clock when the build began); unset,
# every test checks the whole table (`dbt build`, the daily job, CI). Environment values,
# not --vars: changed vars make dbt re-parse the project every cycle. Read by the macro
# get_where_subquery (dbt_project/macros/get_where_subquery.sql).
TEST_SCOPE_ENV = ("WATER_TEST_SCOPE_WATERMARK", "WATER_TEST_SCOPE_BUILD_START")


@contextmanager
def test_scope(watermark: datetime | None, build_start: datetime | None = None) -> Iterator[None]:
    """Scope the data tests of the dbt runs inside (None, None: whole tables)."""
    saved = {key: os.environ.pop(key, None) for key in TEST_SCOPE_ENV}
    for key, value in zip(TEST_SCOPE_ENV, (watermark, build_start), strict=True):
        if value is not None:
            os.environ[key] = value.astimezone(UTC).isoformat()
    try:
        yield
    finally:
        for key, value in saved.items():
            os.environ.pop(key, None)
            if value is not None:
                os.environ[key] = value


@contextmanager
def dbt_environment(target: Target) -> Iterator[None]:
    """Set the variables profiles.yml reads, restoring the previous values afterwards."""
    wanted = {
        **target.dbt_env(),
        "DBT_PROFILES_DIR": str(PROJECT_ROOT),
        "DBT_PROJECT_DIR": str(DBT_PROJECT_DIR),
        "DBT_SEND_ANONYMOUS_USAGE_STATS": "false",
    }
    saved = {key: os.environ.get(key) for key in wanted}
    os.environ.update(wanted)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def dbt_args(command: str, target: Target, extra: Sequence[str] = ()) -> list[str]:
    args = [
        command,
        "--project-dir",
        str(DBT_PROJECT_DIR),
        "--profiles-dir",
        str(PROJECT_ROOT),
        "--quiet" if command != "docs" else "--no-quiet",
        *extra,
    ]
    # Separate dbt artefact folders per target keep partial parsing warm when a process
    # (the test suite, a benchmark) alternates between targets.
    root = os.environ.get("WATER_DBT_TARGET_ROOT")
    if root:
        args += ["--target-path", str(Path(root) / target.name)]
    return args


def run_dbt(
    target: Target, command: str, extra: Sequence[str] = (), raise_on_failure: bool = True
) -> DbtOutcome:
    """Invoke `dbt <command>` in this process against `target`."""
    # dbt takes seconds to import; only a dbt run needs it (`water --help` stays fast).
    from dbt.cli.main import dbtRunner

    with dbt_environment(target):
        try:
            result = dbtRunner().invoke(dbt_args(command, target, extra))
        finally:
            if target.type == "duckdb":
                release_duckdb_file()
    outcome = summarize(result, command)
    if raise_on_failure and not outcome.success:
        detail = "; ".join(outcome.failures) or "see dbt logs in dbt_project/logs"
        raise DbtError(f"dbt {command} failed on {target.name}: {detail}")
    return outcome


def summarize(result: Any, command: str) -> DbtOutcome:
    """A dbtRunnerResult (plain or from PrefectDbtRunner) as timings, row counts and failures."""
    outcome = DbtOutcome(success=bool(result.success))
    if result.exception is not None:
        outcome.failures.append(f"dbt {command}: {_first_line(result.exception)}")
    for node_result in getattr(result.result, "results", None) or []:
        name = getattr(node_result.node, "name", "?") if getattr(node_result, "node", None) else "?"
        outcome.node_timings[name] = float(getattr(node_result, "execution_time", 0.0) or 0.0)
        status = str(getattr(node_result, "status", "")).lower()
        adapter_response = getattr(node_result, "adapter_response", None) or {}
        if isinstance(adapter_response, dict) and adapter_response.get("rows_affected") is not None:
            outcome.rows_affected[name] = int(adapter_response["rows_affected"])
        if status in ("error", "fail", "runtime error"):
            message = " ".join(str(getattr(node_result, "message", "") or status).split())[:400]
            outcome.failures.append(f"{name}: {message}")
    return outcome


def _first_line(value: object) -> str:
    text = str(value).strip()
    return text.splitlines()[0] if text else ""


def release_duckdb_file() -> None:
    """Close the DuckDB database that in-process dbt runs keep open.

    dbt-duckdb caches one DuckDB instance per process for the process's lifetime, which holds
    the file's lock: no other process (a served flow run, `water status`, the API) could open
    the warehouse until this one exits. Closing it after each step costs one reopen.
    """
    try:
        # dbt takes seconds to import; only a dbt run needs it (`water --help` stays fast).
        from dbt.adapters.duckdb.connections import DuckDBConnectionManager
    except ImportError:
        return
    try:
        environment = DuckDBConnectionManager.env()
    except Exception:  # noqa: BLE001 - "requested before creation": nothing is open
        return
    environment.close()
    DuckDBConnectionManager.close_all_connections()
