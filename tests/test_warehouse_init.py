"""dbt on a new warehouse: `water init` creates every source table, then the analytics
engineer's own `dbt build` succeeds, on a fresh DuckDB file and a fresh PostgreSQL database."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from flows.kernel.settings import DBT_PROJECT_DIR, PROJECT_ROOT

BIN = Path(sys.executable).parent


def _env(target, tmp_path: Path) -> dict[str, str]:
    """The shell of an analytics engineer working on this warehouse (profiles.yml's variables)."""
    return {
        **os.environ,
        **target.dbt_env(),
        "DBT_PROFILES_DIR": str(PROJECT_ROOT),
        "DBT_LOG_PATH": str(tmp_path / "dbt-logs"),
        "DBT_TARGET_PATH": str(tmp_path / "dbt-target"),
        "DBT_SEND_ANONYMOUS_USAGE_STATS": "false",
    }


def _run(argv: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(argv, env=env, cwd=cwd, capture_output=True, text=True, timeout=900)  # noqa: S603


def test_water_init_then_dbt_build_on_a_fresh_warehouse(target, tmp_path):
    env = _env(target, tmp_path)
    dbt = [str(BIN / "dbt"), "--no-partial-parse"]

    # Without init, the sources do not exist and the staging models cannot be built.
    before = _run([*dbt, "run", "--select", "stg_raw__sensor_readings"], env, DBT_PROJECT_DIR)
    assert before.returncode != 0, before.stdout[-2000:]

    init = _run([str(BIN / "water"), "init", "--target", target.name], env, PROJECT_ROOT)
    assert init.returncode == 0, init.stderr
    assert "source tables ready" in init.stdout
    again = _run([str(BIN / "water"), "init", "--target", target.name], env, PROJECT_ROOT)
    assert again.returncode == 0, again.stderr  # idempotent

    build = _run([*dbt, "build"], env, DBT_PROJECT_DIR)
    assert build.returncode == 0, build.stdout[-4000:]
    assert "ERROR=0" in build.stdout
