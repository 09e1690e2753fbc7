"""The one place that maps the environment to a storage target.

Every entry point (CLI, flows, API, tests, benchmarks) asks `load_settings()` for its
configuration and `Settings.target(name)` for the warehouse it works on, so duckdb /
postgres / bigquery are chosen the same way everywhere.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from dotenv import load_dotenv

PROJECT_ROOT = Path(__file__).resolve().parents[2]
DBT_PROJECT_DIR = PROJECT_ROOT / "dbt_project"
TARGET_TYPES = ("duckdb", "postgres", "bigquery")
PUBLISHED_SCHEMA = "water_infrastructure"
RAW_SCHEMA = "raw"
DASHBOARD_PORT = 8501  # `water dashboard` default; its Data quality page is linked by the CLI
QUALITY_PAGE_URL = f"http://127.0.0.1:{DASHBOARD_PORT}/quality"


class ConfigError(ValueError):
    """A configuration problem the user can fix (bad variable, unknown target)."""


@dataclass(frozen=True)
class Target:
    """A warehouse: which engine, and how to reach it. Never holds a password."""

    name: str
    duckdb_path: Path | None = None
    pg_dsn_parts: dict[str, str] = field(default_factory=dict)
    bigquery_project: str | None = None
    bigquery_dataset: str | None = None
    bigquery_api_endpoint: str | None = None

    @property
    def type(self) -> str:
        return self.name

    def describe(self) -> str:
        """Human description for logs and `water status` (no secrets)."""
        if self.name == "duckdb":
            return f"duckdb file {self.duckdb_path}"
        if self.name == "postgres":
            p = self.pg_dsn_parts
            return f"postgres {p.get('user')}@{p.get('host')}:{p.get('port')}/{p.get('dbname')}"
        return f"bigquery {self.bigquery_project}.{self.bigquery_dataset}"

    def dbt_env(self) -> dict[str, str]:
        """Environment variables that `profiles.yml` reads for this target."""
        env = {"WATER_TARGET": self.name}
        if self.duckdb_path is not None:
            env["WATER_DUCKDB_PATH"] = str(self.duckdb_path)
        for key, var in (
            ("host", "PGHOST"),
            ("port", "PGPORT"),
            ("user", "PGUSER"),
            ("dbname", "PGDATABASE"),
        ):
            if key in self.pg_dsn_parts:
                env[var] = self.pg_dsn_parts[key]
        for value, var in (
            (self.bigquery_project, "BIGQUERY_PROJECT_ID"),
            (self.bigquery_dataset, "BIGQUERY_DATASET"),
            (self.bigquery_api_endpoint, "BIGQUERY_API_ENDPOINT"),
        ):
            if value:
                env[var] = value
        return env


@dataclass(frozen=True)
class Settings:
    default_target: str
    duckdb_path: Path
    redis_url: str | None
    artifacts_dir: Path
    local_timezone: str
    pg: dict[str, str]
    bigquery_project: str | None
    bigquery_dataset: str | None
    bigquery_api_endpoint: str | None = None

    def target(self, name: str | None = None) -> Target:
        name = (name or self.default_target).strip().lower()
        if name not in TARGET_TYPES:
            raise ConfigError(
                f"unknown target {name!r}: expected one of {', '.join(TARGET_TYPES)} (WATER_TARGET or --target)"
            )
        if name == "duckdb":
            return Target("duckdb", duckdb_path=self.duckdb_path)
        if name == "postgres":
            return Target("postgres", pg_dsn_parts=dict(self.pg))
        if not self.bigquery_project or not self.bigquery_dataset:
            raise ConfigError("target bigquery needs BIGQUERY_PROJECT_ID and BIGQUERY_DATASET")
        return Target(
            "bigquery",
            bigquery_project=self.bigquery_project,
            bigquery_dataset=self.bigquery_dataset,
            bigquery_api_endpoint=self.bigquery_api_endpoint,
        )


def load_settings(env: dict[str, str] | None = None) -> Settings:
    """Read settings from `env` (default: process environment plus an optional `.env`)."""
    if env is None:
        load_dotenv(PROJECT_ROOT / ".env", override=False)
        env = dict(os.environ)
    duckdb_path = Path(env.get("WATER_DUCKDB_PATH") or PROJECT_ROOT / "data" / "warehouse.duckdb")
    if not duckdb_path.is_absolute():
        duckdb_path = (Path.cwd() / duckdb_path).resolve()
    pg = {
        "host": env.get("PGHOST", "127.0.0.1"),
        "port": env.get("PGPORT", "5432"),
        "user": env.get("PGUSER", "postgres"),
        "dbname": env.get("PGDATABASE", "postgres"),
    }
    if not pg["port"].isdigit():
        raise ConfigError(f"PGPORT must be a number, got {pg['port']!r}")
    artifacts = Path(env.get("WATER_ARTIFACTS_DIR") or PROJECT_ROOT / "data" / "artifacts")
    return Settings(
        default_target=(env.get("WATER_TARGET") or "duckdb").strip().lower(),
        duckdb_path=duckdb_path,
        redis_url=env.get("REDIS_URL") or None,
        artifacts_dir=artifacts,
        local_timezone=env.get("WATER_LOCAL_TIMEZONE", "Europe/Rome"),
        pg=pg,
        bigquery_project=env.get("BIGQUERY_PROJECT_ID") or None,
        bigquery_dataset=env.get("BIGQUERY_DATASET") or None,
        # Unset: Google. Set: an emulator or private endpoint, reached without credentials
        # unless GOOGLE_APPLICATION_CREDENTIALS is set too (profiles.yml does the same).
        bigquery_api_endpoint=env.get("BIGQUERY_API_ENDPOINT") or None,
    )
