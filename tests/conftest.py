"""Shared fixtures: real DuckDB files, real PostgreSQL databases, real Redis.

Every PostgreSQL test gets a fresh database on the server at 127.0.0.1 (dropped afterwards);
every DuckDB test a fresh file in its tmp_path. Nothing is mocked.
"""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path

import psycopg
import pytest

from flows.kernel.settings import PROJECT_ROOT, Target

PG_HOST = os.environ.get("PGHOST", "127.0.0.1")
PG_PORT = os.environ.get("PGPORT", "5432")
PG_USER = os.environ.get("PGUSER", "postgres")


@pytest.fixture(scope="session", autouse=True)
def _isolated_environment(tmp_path_factory):
    """Keep tests away from a developer's warehouse, .env and dbt artefacts."""
    root = tmp_path_factory.mktemp("dbt-target")
    saved = {
        k: os.environ.get(k)
        for k in ("WATER_DBT_TARGET_ROOT", "DBT_LOG_PATH", "WATER_DUCKDB_PATH", "WATER_GX_ROOT")
    }
    # Gates write validation results and Data Docs under the GX project: use a copy.
    gx_root = tmp_path_factory.mktemp("gx-project")
    shutil.copytree(
        PROJECT_ROOT / "expectations" / "gx",
        gx_root / "gx",
        ignore=shutil.ignore_patterns("uncommitted"),
    )
    os.environ["WATER_GX_ROOT"] = str(gx_root)
    os.environ["WATER_DBT_TARGET_ROOT"] = str(root)
    os.environ["DBT_LOG_PATH"] = str(root / "logs")
    os.environ["WATER_DUCKDB_PATH"] = str(root / "default.duckdb")
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    yield
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def _admin_connection() -> psycopg.Connection:
    return psycopg.connect(
        host=PG_HOST, port=PG_PORT, user=PG_USER, dbname="postgres", autocommit=True
    )


@pytest.fixture
def pg_database() -> str:
    """A fresh, empty PostgreSQL database for one test."""
    name = f"water_test_{uuid.uuid4().hex[:12]}"
    with _admin_connection() as admin:
        admin.execute(f'create database "{name}"')
    yield name
    with _admin_connection() as admin:
        admin.execute(f'drop database if exists "{name}" with (force)')


@pytest.fixture
def pg_target(pg_database: str) -> Target:
    return Target(
        "postgres",
        pg_dsn_parts={"host": PG_HOST, "port": PG_PORT, "user": PG_USER, "dbname": pg_database},
    )


@pytest.fixture
def duckdb_target(tmp_path: Path) -> Target:
    return Target("duckdb", duckdb_path=tmp_path / "warehouse.duckdb")


@pytest.fixture(params=["duckdb", "postgres"])
def target(request) -> Target:
    """Run the test once per engine."""
    fixture = {"duckdb": "duckdb_target", "postgres": "pg_target"}[request.param]
    return request.getfixturevalue(fixture)
