"""The offline BigQuery emulator the BigQuery tests run against (crucible, in its own venv).

`make emulator` (a dependency of `make install` / `make test`) creates `.venv-bigquery-emulator`;
it needs duckdb 1.5 while the project pins duckdb 2.0, hence a venv of its own.
"""

from __future__ import annotations

import io
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pandas as pd

from flows.kernel.raw_store import READING_COLUMNS
from flows.kernel.settings import PROJECT_ROOT, Target
from flows.loaders.bigquery import SOURCE_TABLE, client, table_path
from tests.orch_support import free_port

EMULATOR = PROJECT_ROOT / ".venv-bigquery-emulator" / "bin" / "crucible"


@contextmanager
def running_emulator(log: Path) -> Iterator[str]:
    """Start `crucible serve` on a free 127.0.0.1 port; yield its endpoint; stop it."""
    if not EMULATOR.exists():
        raise RuntimeError(f"{EMULATOR} is missing: run `make emulator`")
    port = free_port()
    with log.open("wb") as out:
        process = subprocess.Popen(
            [
                str(EMULATOR),
                "serve",
                "--dialect",
                "bigquery",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 120
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"the emulator exited: {log.read_text()[-500:]}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError("the emulator did not listen within 120 s") from None
                time.sleep(0.2)
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()


def fresh_target(endpoint: str) -> Target:
    """A project/dataset of its own on the emulator."""
    return Target(
        "bigquery",
        bigquery_project=f"water-{uuid.uuid4().hex[:10]}",
        bigquery_dataset="water_raw",
        bigquery_api_endpoint=endpoint,
    )


def create_production_table(target: Target) -> None:
    """`sensor_readings_ml` as the upstream pipeline has it (schema from DESIGN.md)."""
    bq = client(target)
    bq.create_dataset(f"{target.bigquery_project}.{target.bigquery_dataset}", exists_ok=True)
    bq.query(
        f"create table {table_path(target.bigquery_project, target.bigquery_dataset)} ("
        "`timestamp` timestamp, node_id string, node_name string, flow_rate float64,"
        " pressure float64, temperature float64, volume float64, quality_score float64)"
    ).result()


def append_rows(target: Target, frame: pd.DataFrame) -> None:
    """Append rows to the production table as an upstream batch load would (a CSV load job with
    the table's schema: the emulator has no streaming inserts and no Parquet loads)."""
    from google.cloud import bigquery

    bq = client(target)
    table = f"{target.bigquery_project}.{target.bigquery_dataset}.{SOURCE_TABLE}"
    out = frame[list(READING_COLUMNS)].copy()
    out["timestamp"] = pd.to_datetime(out["timestamp"], utc=True).dt.strftime(
        "%Y-%m-%d %H:%M:%S.%f UTC"
    )
    data = out.to_csv(index=False, float_format="%.9f").encode()
    config = bigquery.LoadJobConfig(
        source_format="CSV", skip_leading_rows=1, schema=bq.get_table(table).schema
    )
    bq.load_table_from_file(io.BytesIO(data), table, job_config=config).result()


def query(target: Target, sql: str) -> pd.DataFrame:
    return client(target).query(sql).to_arrow().to_pandas()
