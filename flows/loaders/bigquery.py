"""`water load bigquery`: land new rows of `sensor_readings_ml` with an ingestion time, then copy them.

Step 1, in BigQuery (dbt macro `land_sensor_readings`, one INSERT ... SELECT): every row of the
production table not yet in `sensor_readings_landed` is copied there once, stamped `loaded_at`.
The production table has no ingestion time of its own; this gives it one, so a row arriving 14 h
late, or dated 2030, is still picked up exactly once (docs/bigquery.md).
Step 2, for the duckdb/postgres targets: one query reads the rows landed since the last run
(`loaded_at` > the saved watermark) and its result pages land in the raw store through the same
atomic file loader as any Parquet file. No keyset on (timestamp, node_id): repeats and NULL
timestamps cannot be skipped at a page boundary. The watermark moves only after every page is in.

The emulators the tests use reject query parameters, so the one value in the step-2 query (the
watermark, a timestamp read back from our own table) is rendered as a literal from a datetime,
and the table path is checked against BigQuery's identifier rules first.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from flows.kernel.dbt_runner import run_dbt
from flows.kernel.raw_store import READING_COLUMNS, ensure_raw_tables
from flows.kernel.settings import ConfigError, Settings, Target, load_settings
from flows.kernel.warehouse import Warehouse
from flows.loaders.files import DateRange, LoadResult, load_file

SOURCE_TABLE = "sensor_readings_ml"
LANDING_TABLE = "sensor_readings_landed"
DEFAULT_LATE_WINDOW_HOURS = 48
_PROJECT = re.compile(r"^[a-z][a-z0-9-]{4,28}[a-z0-9]$")
_DATASET = re.compile(r"^[A-Za-z0-9_]{1,1024}$")


def table_path(project: str, dataset: str, table: str = SOURCE_TABLE) -> str:
    if not _PROJECT.match(project):
        raise ConfigError(f"BIGQUERY_PROJECT_ID {project!r} is not a valid project id")
    if not _DATASET.match(dataset):
        raise ConfigError(f"BIGQUERY_DATASET {dataset!r} is not a valid dataset name")
    return f"`{project}.{dataset}.{table}`"


def timestamp_literal(value: datetime) -> str:
    """A BigQuery TIMESTAMP literal for an aware datetime (microseconds kept, UTC)."""
    if value.tzinfo is None:
        raise ValueError("timestamp literals need an aware datetime")
    return f"timestamp '{value.astimezone(UTC).strftime('%Y-%m-%d %H:%M:%S.%f')}+00'"


def build_extract_query(project: str, dataset: str, watermark: datetime | None) -> str:
    """The rows landed after `watermark` (all of them when None), with their landing time."""
    columns = ", ".join(f"`{c}`" for c in READING_COLUMNS)
    where = "" if watermark is None else f" where loaded_at > {timestamp_literal(watermark)}"
    return f"select {columns}, loaded_at from {table_path(project, dataset, LANDING_TABLE)}{where}"  # noqa: S608 - validated identifiers, literal from a datetime


def late_window_hours(env: dict[str, str] | None = None) -> int:
    raw = (env if env is not None else os.environ).get("WATER_BIGQUERY_LATE_WINDOW_HOURS", "")
    if not raw:
        return DEFAULT_LATE_WINDOW_HOURS
    if not raw.isdigit() or int(raw) < 1:
        raise ConfigError(
            f"WATER_BIGQUERY_LATE_WINDOW_HOURS must be a whole number >= 1, got {raw!r}"
        )
    return int(raw)


def bigquery_target(settings: Settings | None = None) -> Target:
    settings = settings or load_settings()
    if not settings.bigquery_project or not settings.bigquery_dataset:
        raise ConfigError("loading from bigquery needs BIGQUERY_PROJECT_ID and BIGQUERY_DATASET")
    return settings.target("bigquery")


def client(target: Target):
    """A BigQuery client; with BIGQUERY_API_ENDPOINT set and no key file, an anonymous one."""
    # The Google client takes seconds to import; only the BigQuery source needs it.
    from google.cloud import bigquery

    if not target.bigquery_api_endpoint:
        return bigquery.Client(project=target.bigquery_project)
    # The Google client takes seconds to import; only the BigQuery source needs it.
    from google.api_core.client_options import ClientOptions
    from google.auth.credentials import AnonymousCredentials

    options = ClientOptions(api_endpoint=target.bigquery_api_endpoint)
    if os.environ.get("GOOGLE_APPLICATION_CREDENTIALS"):
        return bigquery.Client(project=target.bigquery_project, client_options=options)
    return bigquery.Client(
        project=target.bigquery_project, credentials=AnonymousCredentials(), client_options=options
    )


def land_new_rows(target: Target, dates: DateRange | None = None) -> str:
    """Step 1: the dbt operation that lands new production rows; returns the landing batch id."""

    dates = dates or DateRange()
    batch_id = uuid.uuid4().hex
    args: dict[str, object] = {"batch_id": batch_id, "late_window_hours": late_window_hours()}
    if dates.start is not None:
        args["since"] = dates.start.isoformat()
    if dates.end is not None:
        args["until"] = (dates.end + timedelta(days=1)).isoformat()
    run_dbt(target, "run-operation", ["land_sensor_readings", "--args", json.dumps(args)])
    return batch_id


def watermark_key(project: str, dataset: str) -> str:
    return f"bigquery:{project}.{dataset}.{LANDING_TABLE}"


def read_watermark(wh: Warehouse, key: str) -> datetime | None:
    return wh.scalar(
        "select watermark from raw.extract_watermarks where source = %(s)s", {"s": key}
    )


def save_watermark(wh: Warehouse, key: str, value: datetime) -> None:
    wh.execute(
        "insert into raw.extract_watermarks (source, watermark, updated_at) values (%(s)s, %(w)s, current_timestamp)"
        " on conflict (source) do update set watermark = greatest(raw.extract_watermarks.watermark, excluded.watermark),"
        " updated_at = excluded.updated_at",
        {"s": key, "w": value},
    )


def extract_incremental(
    wh: Warehouse, dates: DateRange, batch_size: int = 100_000, progress: bool = True
) -> list[LoadResult]:
    """Land new rows in BigQuery, then copy every row landed since the last run into raw."""

    if batch_size < 1:
        raise ConfigError("--batch-size must be at least 1")
    target = bigquery_target()
    project, dataset = target.bigquery_project, target.bigquery_dataset
    ensure_raw_tables(wh)
    land_new_rows(target, dates)
    key = watermark_key(project, dataset)
    sql = build_extract_query(project, dataset, read_watermark(wh, key))
    job = client(target).query(sql)
    results, newest = [], None
    with tempfile.TemporaryDirectory(prefix="water-bq-") as tmp:
        # One query; its result is read page by page (the pages of one job, not new queries).
        for number, batch in enumerate(job.result(page_size=batch_size).to_arrow_iterable()):
            table = pa.Table.from_batches([batch])
            if table.num_rows == 0:
                continue
            landed = max(table.column("loaded_at").to_pylist())
            newest = landed if newest is None else max(newest, landed)
            page = Path(tmp) / f"page-{number:06d}.parquet"
            pq.write_table(table.drop_columns(["loaded_at"]), page)
            results.append(load_file(wh, page, progress=progress, source="bigquery"))
    if newest is not None:
        save_watermark(wh, key, newest)
    return results
