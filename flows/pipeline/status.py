"""`water status`: what the warehouse holds now, read from the published tables."""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass, field
from typing import Any

from expectations.results import format_summary, latest_results
from flows.kernel.settings import PUBLISHED_SCHEMA, Target
from flows.kernel.warehouse import Warehouse, connect
from flows.pipeline.jobs import format_jobs, jobs_summary
from ml.status import format_ml_status, ml_status


@dataclass
class Status:
    target: str
    raw_rows: int = 0
    batches: int = 0
    last_loaded_at: Any = None
    rejected_rows: int = 0
    windows: dict[str, dict[str, Any]] = field(default_factory=dict)
    nodes_total: int = 0
    nodes_without_metadata: list[str] = field(default_factory=list)
    built: bool = False
    quality: Any = None  # expectations.results.QualitySummary of the latest gate run
    jobs: Any = None  # flows.pipeline.jobs.JobsSummary: recent jobs, watermark, last publish
    ml: Any = None  # ml.status.MLStatus: active models and their latest scores


def collect_status(target: Target) -> Status:
    with connect(target) as wh:
        return _collect(wh, target)


def _collect(wh: Warehouse, target: Target) -> Status:
    status = Status(target=target.describe())
    if wh.relation_exists("raw", "sensor_readings"):
        status.raw_rows = wh.scalar("select count(*) from raw.sensor_readings")
        status.batches, status.last_loaded_at = wh.query(
            "select count(*), max(loaded_at) from raw.load_batches"
        )[0]

    status.quality = latest_results(wh)

    status.jobs = jobs_summary(wh, target)

    status.ml = ml_status(wh)
    if not wh.relation_exists(PUBLISHED_SCHEMA, "computed_metrics"):
        return status
    status.built = True
    status.rejected_rows = wh.scalar("select count(*) from water_infrastructure.rejected_readings")
    for window, rows, nodes, latest in wh.query(
        "select time_window, count(*), count(distinct node_id), max(window_end)"
        " from water_infrastructure.computed_metrics group by time_window order by min(window_end - window_start)"
    ):
        status.windows[window] = {"rows": rows, "nodes": nodes, "latest_window_end": latest}
    status.nodes_total = wh.scalar("select count(*) from water_infrastructure.nodes")
    status.nodes_without_metadata = [
        r[0]
        for r in wh.query(
            "select node_id from water_infrastructure.nodes where not has_metadata order by node_id"
        )
    ]
    return status


def printable(text: str) -> str:
    """Control characters (NUL, terminal escapes) shown escaped, never sent to the terminal."""
    return "".join(
        c if c == "\n" or unicodedata.category(c) != "Cc" else repr(c)[1:-1] for c in text
    )


def format_status(status: Status) -> str:
    lines = [f"target            {status.target}"]
    lines.append(
        f"raw readings      {status.raw_rows:,} in {status.batches} batch(es); last load {status.last_loaded_at or '-'}"
    )
    if status.quality is not None:
        lines.extend(format_summary(status.quality))

    lines.extend(format_jobs(status.jobs))
    if not status.built:
        lines.append("published tables  not built yet: run `water cycle`")
        return printable("\n".join(lines))
    lines.append(
        f"rejected          {status.rejected_rows:,} reading(s) in water_infrastructure.rejected_readings"
    )
    for window, info in status.windows.items():
        lines.append(
            f"computed_metrics  {window:<6} {info['rows']:>10,} rows  {info['nodes']:>5} nodes  up to {info['latest_window_end']}"
        )
    lines.append(f"nodes             {status.nodes_total} known")
    if status.nodes_without_metadata:
        shown = ", ".join(status.nodes_without_metadata[:10])
        more = len(status.nodes_without_metadata) - 10
        lines.append(
            f"  without metadata ({len(status.nodes_without_metadata)}): {shown}{f' (+{more} more)' if more > 0 else ''}"
        )

    lines.extend(format_ml_status(status.ml))
    return printable("\n".join(lines))
