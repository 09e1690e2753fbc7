"""A new, empty warehouse for module-scoped fixtures (function-scoped ones use conftest's)."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg

from flows.kernel.settings import Target
from flows.pipeline.run import prepare_target


@contextmanager
def fresh_warehouse(kind: str, directory: Path) -> Iterator[Target]:
    """A DuckDB file, or a PostgreSQL database dropped afterwards, with the tables that dbt's
    sources need (raw, jobs, ML outputs) already created, as a cycle would."""
    if kind == "duckdb":
        target = Target("duckdb", duckdb_path=directory / "warehouse.duckdb")
        prepare_target(target)
        yield target
        return
    server = {
        k: os.environ.get(f"PG{k.upper()}", d)
        for k, d in (("host", "127.0.0.1"), ("port", "5432"), ("user", "postgres"))
    }
    name = f"water_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(**server, dbname="postgres", autocommit=True) as admin:
        admin.execute(f'create database "{name}"')
    try:
        target = Target("postgres", pg_dsn_parts={**server, "dbname": name})
        prepare_target(target)
        yield target
    finally:
        with psycopg.connect(**server, dbname="postgres", autocommit=True) as admin:
            admin.execute(f'drop database if exists "{name}" with (force)')
