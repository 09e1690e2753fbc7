"""Restore drill: `water backup`, damage, `water restore`, and the data equals the original.

The check is independent of flows.pipeline.backup: every base table of the database is counted and
checksummed here (md5 of its rows' text, in a fixed order, with psycopg; DuckDB's own row hash),
and the API's answers (database reads: Redis unreachable) are compared before and after a
restore into a fresh database. The backup and restore are the user's commands, run as
subprocesses; their job rows are read back from processing_jobs.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import duckdb
import psycopg
import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from api.settings import load_api_settings
from flows.kernel.settings import PROJECT_ROOT, Target

S = "water_infrastructure"
# Rows written by the backup and restore themselves are compared on their own.
OWN_JOBS = "job_type not in ('backup', 'restore')"


def _water(env, *args, ok: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run(
        [sys.executable, "-m", "flows.cli", *args],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    assert (done.returncode == 0) == ok, done.stdout[-2000:] + done.stderr[-2000:]
    return done


def _pg_fingerprint(dsn: dict) -> dict[str, tuple]:
    """{schema.table: (rows, md5 of the sorted row md5s)} for every base table; views by name."""
    out = {}
    with psycopg.connect(autocommit=True, **dsn) as con:
        relations = con.execute(
            "select table_schema, table_name, table_type from information_schema.tables"
            " where table_schema not in ('pg_catalog', 'information_schema')"
        ).fetchall()
        for schema, name, kind in relations:
            if kind != "BASE TABLE":
                out[f"{schema}.{name}"] = kind
                continue
            where = f" where {OWN_JOBS}" if name == "processing_jobs" else ""
            out[f"{schema}.{name}"] = con.execute(
                f"select count(*), md5(coalesce(string_agg(md5(t::text), '' order by md5(t::text)), ''))"
                f' from "{schema}"."{name}" as t{where}'
            ).fetchone()
    return out


def _duckdb_fingerprint(path: Path) -> dict[str, tuple]:
    out = {}
    con = duckdb.connect(str(path), read_only=True)
    try:
        relations = con.execute(
            "select table_schema, table_name, table_type from information_schema.tables"
        ).fetchall()
        for schema, name, kind in relations:
            if kind != "BASE TABLE":
                out[f"{schema}.{name}"] = kind
                continue
            where = f" where {OWN_JOBS}" if name == "processing_jobs" else ""
            out[f"{schema}.{name}"] = con.execute(
                f'select count(*), coalesce(sum(hash(t)), 0) from "{schema}"."{name}" as t{where}'
            ).fetchall()[0]
    finally:
        con.close()
    return out


def _own_jobs(target: Target) -> list[tuple]:
    with psycopg.connect(autocommit=True, **target.pg_dsn_parts) as con:
        return con.execute(
            f"select job_id::text, job_type, status, result_summary from {S}.processing_jobs"
            f" where not ({OWN_JOBS}) order by started_at"
        ).fetchall()


def _api_answers(env: dict[str, str]) -> dict[str, object]:
    """The API's database answers (Redis unreachable, so nothing comes from a cache)."""
    env = {**env, "REDIS_URL": "redis://127.0.0.1:1/0", "WATER_API_AUTH": "off"}
    with TestClient(create_app(load_api_settings(env))) as client:
        nodes = client.get("/api/v1/nodes").json()
        node = nodes["nodes"][0]["node_id"]
        paths = [
            "/api/v1/nodes",
            f"/api/v1/nodes/{node}/metrics?window=1hour",
            f"/api/v1/nodes/{node}/history?window=5min&limit=500",
            "/api/v1/anomalies?hours=72",
            "/api/v1/network/efficiency",
            "/api/v1/models/status",
        ]
        answers = {}
        for path in paths:
            response = client.get(path)
            assert response.status_code == 200, (path, response.text)
            answers[path] = response.json()
    return answers


@pytest.fixture
def drill_env(tmp_path):
    artifacts = tmp_path / "artifacts"
    (artifacts / "flow_forecast").mkdir(parents=True)
    (artifacts / "flow_forecast" / "model-1.joblib").write_bytes(os.urandom(4096))
    return {
        **os.environ,
        "WATER_BACKUP_DIR": str(tmp_path / "backups"),
        "WATER_ARTIFACTS_DIR": str(artifacts),
        "WATER_BACKUP_KEEP": "2",
    }


@pytest.mark.postgres
def test_restore_drill_postgres(pg_target, drill_env, tmp_path):
    env = {**drill_env, **pg_target.dbt_env()}
    _water(env, "load", "synthetic", "--nodes", "3", "--days", "1", "--cadence", "300")
    _water(env, "cycle", "--no-publish")
    artifact = Path(env["WATER_ARTIFACTS_DIR"]) / "flow_forecast" / "model-1.joblib"
    artifact_bytes = artifact.read_bytes()

    before = _pg_fingerprint(pg_target.pg_dsn_parts)
    answers = _api_answers(env)
    assert before[f"{S}.computed_metrics"][0] > 0 and before["raw.sensor_readings"][0] > 0
    assert sum(1 for v in before.values() if isinstance(v, tuple) and v[0] > 0) >= 8
    assert answers["/api/v1/nodes"]["nodes"]
    _water(env, "backup")
    ((backup_id, job_type, status, summary),) = _own_jobs(pg_target)
    assert (job_type, status) == ("backup", "completed")
    backup_dir = Path(summary["path"])
    assert set(summary["files"]) == {"postgres.dump", "artifacts.tar.gz"}
    assert (backup_dir / "manifest.json").is_file()

    # A damaged dump is refused before anything changes.
    damaged = tmp_path / "damaged"
    subprocess.run(["cp", "-r", str(backup_dir), str(damaged)], check=True)
    with (damaged / "postgres.dump").open("r+b") as dump:
        dump.truncate(1000)
    failed = _water(env, "restore", str(damaged), ok=False)
    assert "postgres.dump does not match its sha256" in failed.stderr
    assert _pg_fingerprint(pg_target.pg_dsn_parts) == before

    # Damage: a mart dropped, raw rows deleted, an artifact gone.
    with psycopg.connect(autocommit=True, **pg_target.pg_dsn_parts) as con:
        con.execute(f"drop table {S}.computed_metrics cascade")
        con.execute("delete from raw.sensor_readings where node_id = 'N0001'")
    artifact.unlink()
    assert _pg_fingerprint(pg_target.pg_dsn_parts) != before

    _water(env, "restore", "latest")
    assert _pg_fingerprint(pg_target.pg_dsn_parts) == before
    assert artifact.read_bytes() == artifact_bytes
    jobs = _own_jobs(pg_target)
    # The dump caught the backup's row `running`; the restore closed it from the manifest.
    assert [(i, t, s) for i, t, s, _ in jobs] == [
        (backup_id, "backup", "completed"),
        (jobs[1][0], "restore", "completed"),
    ]
    assert jobs[0][3]["path"] == str(backup_dir) and jobs[1][3]["backup_job_id"] == backup_id

    # Into a fresh database: the same tables, and the API answers exactly as before.
    fresh = f"water_test_restore_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(autocommit=True, **{**pg_target.pg_dsn_parts, "dbname": "postgres"}) as a:
        a.execute(f'create database "{fresh}"')
    try:
        fresh_target = Target("postgres", pg_dsn_parts={**pg_target.pg_dsn_parts, "dbname": fresh})
        fresh_env = {**env, **fresh_target.dbt_env()}
        _water(fresh_env, "restore", backup_dir.name)
        assert _pg_fingerprint(fresh_target.pg_dsn_parts) == before
        assert _api_answers(fresh_env) == answers
    finally:
        with psycopg.connect(
            autocommit=True, **{**pg_target.pg_dsn_parts, "dbname": "postgres"}
        ) as admin:
            admin.execute(f'drop database if exists "{fresh}" with (force)')

    # Generations: WATER_BACKUP_KEEP=2 keeps the two newest.
    _water(env, "backup")
    _water(env, "backup")
    kept = sorted(p.name for p in backup_dir.parent.iterdir() if not p.name.startswith("."))
    assert len(kept) == 2 and backup_dir.name not in kept


def test_restore_drill_duckdb(duckdb_target, drill_env):
    env = {**drill_env, **duckdb_target.dbt_env()}
    _water(env, "load", "synthetic", "--nodes", "3", "--days", "1", "--cadence", "300")
    _water(env, "cycle", "--no-publish")
    path = duckdb_target.duckdb_path
    before = _duckdb_fingerprint(path)
    assert before["raw.sensor_readings"][0] > 0

    _water(env, "backup")
    con = duckdb.connect(str(path))
    (status,) = con.execute(
        f"select status from {S}.processing_jobs where job_type = 'backup'"
    ).fetchall()[0]
    con.execute("delete from raw.sensor_readings where node_id = 'N0001'")
    con.execute(f"drop table {S}.computed_metrics")
    con.close()
    assert status == "completed"
    assert _duckdb_fingerprint(path) != before

    _water(env, "restore")
    assert _duckdb_fingerprint(path) == before
    con = duckdb.connect(str(path), read_only=True)
    jobs = con.execute(
        f"select job_type, status from {S}.processing_jobs where not ({OWN_JOBS})"
        " order by started_at"
    ).fetchall()
    con.close()
    assert jobs == [("backup", "completed"), ("restore", "completed")]
