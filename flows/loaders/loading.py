"""`water load SOURCE`: one entry point for files, the synthetic generator and BigQuery."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from datetime import date
from pathlib import Path

from flows.kernel.raw_store import ensure_raw_tables
from flows.kernel.settings import PROJECT_ROOT
from flows.kernel.warehouse import Warehouse
from flows.loaders.bigquery import extract_incremental
from flows.loaders.files import DateRange, LoadResult, load_files
from flows.loaders.nodes import NodesResult, upsert_nodes
from flows.loaders.synthetic import node_metadata, write_parquet

LANDING_DIR = PROJECT_ROOT / "data" / "landing"


def load_synthetic(
    wh: Warehouse,
    config,
    dates: DateRange | None = None,
    progress: bool = True,
    landing_dir: Path = LANDING_DIR,
) -> tuple[list[LoadResult], NodesResult]:
    """Generate a network as Parquet (deterministic, so a re-run is a no-op) and load it."""

    key = hashlib.sha256(
        json.dumps(asdict(config), default=str, sort_keys=True).encode()
    ).hexdigest()[:16]
    landing_dir.mkdir(parents=True, exist_ok=True)
    path = landing_dir / f"synthetic-{key}.parquet"
    if not path.exists():
        partial = path.with_suffix(".parquet.partial")
        write_parquet(config, partial, progress=progress)
        partial.replace(path)
    # Register the generated network's metadata for nodes not yet known, so edits made
    # with `water nodes` survive a re-run.
    metadata = node_metadata(config)
    ensure_raw_tables(wh)
    known = {row[0] for row in wh.query("select node_id from raw.node_metadata")}
    nodes = upsert_nodes(wh, metadata[~metadata["node_id"].isin(known)])
    return load_files(
        wh, [str(path)], dates or DateRange(), progress=progress, source="synthetic"
    ), nodes


def load_source(
    wh: Warehouse,
    sources: list[str],
    start_date: date | None = None,
    end_date: date | None = None,
    batch_size: int = 100_000,
    progress: bool = True,
    synthetic_config=None,
) -> list[LoadResult]:
    dates = DateRange(start_date, end_date)
    if sources == ["synthetic"]:
        results, _ = load_synthetic(wh, synthetic_config, dates, progress=progress)
        return results
    if sources == ["bigquery"]:
        return extract_incremental(wh, dates, batch_size=batch_size, progress=progress)
    return load_files(wh, sources, dates, progress=progress)
