"""Incremental extraction of `sensor_readings_ml` from BigQuery into the raw store.

Values travel as query parameters; only the table path is spliced in, after checking it
against BigQuery's identifier rules. Pages are keyset-paginated on (timestamp, node_id), each
page lands through the same atomic file loader as any Parquet file, and the watermark
(latest timestamp extracted) is persisted in `raw.extract_watermarks` after each page.
A run re-reads `lookback` before the watermark so rows that arrived late in BigQuery are
picked up; the repeats this produces are removed by staging's de-duplication.
"""

from __future__ import annotations

import re
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta
from pathlib import Path

from flows.config import ConfigError, load_settings
from flows.loaders.files import DateRange, LoadResult, load_file
from flows.raw_store import READING_COLUMNS, ensure_raw_tables
from flows.warehouse import Warehouse

SOURCE_TABLE = "sensor_readings_ml"
DEFAULT_LOOKBACK = timedelta(hours=2)
_PROJECT = re.compile(r"^[a-z][a-z0-9-]{4,28}[a-z0-9]$")
_DATASET = re.compile(r"^[A-Za-z0-9_]{1,1024}$")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class ExtractQuery:
    sql: str
    parameters: dict[str, tuple[str, object]]  # name -> (BigQuery type, value)

    def job_config(self):
        from google.cloud import bigquery

        return bigquery.QueryJobConfig(
            query_parameters=[
                bigquery.ScalarQueryParameter(n, t, v) for n, (t, v) in self.parameters.items()
            ]
        )


def table_path(project: str, dataset: str, table: str = SOURCE_TABLE) -> str:
    if not _PROJECT.match(project):
        raise ConfigError(f"BIGQUERY_PROJECT_ID {project!r} is not a valid project id")
    if not _DATASET.match(dataset):
        raise ConfigError(f"BIGQUERY_DATASET {dataset!r} is not a valid dataset name")
    return f"`{project}.{dataset}.{table}`"


def build_extract_query(
    project: str,
    dataset: str,
    start: datetime,
    end: datetime | None,
    after: tuple[datetime, str] | None,
    page_size: int,
) -> ExtractQuery:
    """One page of rows with start <= timestamp < end, after the keyset position `after`."""
    if page_size < 1:
        raise ValueError("page size must be at least 1")
    columns = ", ".join(f"`{c}`" for c in READING_COLUMNS)
    conditions = ["`timestamp` >= @start_ts"]
    params: dict[str, tuple[str, object]] = {
        "start_ts": ("TIMESTAMP", start),
        "page_size": ("INT64", page_size),
    }
    if end is not None:
        conditions.append("`timestamp` < @end_ts")
        params["end_ts"] = ("TIMESTAMP", end)
    if after is not None:
        conditions.append(
            "(`timestamp` > @after_ts or (`timestamp` = @after_ts and node_id > @after_node))"
        )
        params["after_ts"] = ("TIMESTAMP", after[0])
        params["after_node"] = ("STRING", after[1])
    sql = (
        f"select {columns} from {table_path(project, dataset)}"  # noqa: S608 - validated identifiers
        f" where {' and '.join(conditions)}"
        " order by `timestamp`, node_id"
        " limit @page_size"
    )
    return ExtractQuery(sql, params)


def extraction_start(
    watermark: datetime | None, dates: DateRange, lookback: timedelta = DEFAULT_LOOKBACK
) -> datetime:
    if dates.start is not None:
        return datetime.combine(dates.start, time(), tzinfo=UTC)
    if watermark is None:
        return _EPOCH
    return watermark - lookback


def extraction_end(dates: DateRange) -> datetime | None:
    return (
        None
        if dates.end is None
        else datetime.combine(dates.end + timedelta(days=1), time(), tzinfo=UTC)
    )


def watermark_key(project: str, dataset: str) -> str:
    return f"bigquery:{project}.{dataset}.{SOURCE_TABLE}"


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


def _pages(
    client, project: str, dataset: str, start: datetime, end: datetime | None, page_size: int
) -> Iterator:
    after = None
    while True:
        query = build_extract_query(project, dataset, start, end, after, page_size)
        table = client.query(query.sql, job_config=query.job_config()).to_arrow()
        if table.num_rows == 0:
            return
        yield table
        last = table.slice(table.num_rows - 1).to_pylist()[0]
        after = (last["timestamp"], last["node_id"])
        if table.num_rows < page_size:
            return


def extract_incremental(
    wh: Warehouse, dates: DateRange, batch_size: int = 100_000, progress: bool = True
) -> list[LoadResult]:
    """Extract new rows page by page into raw; needs BigQuery credentials (ADC or a key file)."""
    import pyarrow.parquet as pq
    from google.cloud import bigquery

    settings = load_settings()
    project, dataset = settings.bigquery_project, settings.bigquery_dataset
    if not project or not dataset:
        raise ConfigError("loading from bigquery needs BIGQUERY_PROJECT_ID and BIGQUERY_DATASET")
    ensure_raw_tables(wh)
    key = watermark_key(project, dataset)
    start = extraction_start(read_watermark(wh, key), dates)
    client = bigquery.Client(project=project)
    results = []
    with tempfile.TemporaryDirectory(prefix="water-bq-") as tmp:
        for number, table in enumerate(
            _pages(client, project, dataset, start, extraction_end(dates), batch_size)
        ):
            page = Path(tmp) / f"page-{number:06d}.parquet"
            pq.write_table(table, page)
            results.append(load_file(wh, page, progress=progress, source="bigquery"))
            save_watermark(wh, key, max(table.column("timestamp").to_pylist()))
    return results
