"""Backfill a date range in day chunks, each a full cycle; resumable after a kill."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import asdict, is_dataclass
from datetime import UTC, date, datetime, timedelta

from flows.kernel.settings import Target
from flows.kernel.warehouse import open_warehouse
from flows.pipeline.jobs import (
    checkpoint_chunk,
)
from flows.pipeline.results import CycleResult, Scope
from flows.pipeline.run import Run, complete, process_scope
from flows.pipeline.watermark import completed_chunks, read_watermark

log = logging.getLogger("water.cycle")


def backfill_key(sources: Sequence[str], synthetic_config=None) -> str:
    """Identifies "the same backfill" across re-runs: the source spec (and generator config)."""
    spec = {"sources": sorted(sources)}
    if synthetic_config is not None:
        spec["synthetic"] = (
            asdict(synthetic_config) if is_dataclass(synthetic_config) else str(synthetic_config)
        )
    digest = hashlib.sha256(json.dumps(spec, default=str, sort_keys=True).encode()).hexdigest()[:16]
    return f"{','.join(sorted(sources))[:80]}#{digest}"


def day_chunks(start: date, end: date, chunk_days: int = 1) -> list[tuple[date, date]]:
    if end < start:
        raise ValueError(f"end date {end} is before start date {start}")
    if chunk_days < 1:
        raise ValueError("chunk_days must be at least 1")
    chunks, day = [], start
    while day <= end:
        last = min(day + timedelta(days=chunk_days - 1), end)
        chunks.append((day, last))
        day = last + timedelta(days=1)
    return chunks


def run_backfill(
    target: Target,
    sources: Sequence[str],
    start: date,
    end: date,
    *,
    chunk_days: int = 1,
    synthetic_config=None,
    triggered_by: str = "cli",
    flow_run_id: str | None = None,
    steps=None,
    publish_to_redis: bool = True,
    redis_client=None,
    lock_wait_s: float = 3600.0,
    on_chunk: Callable[[date, date, str], None] | None = None,
) -> CycleResult:
    """Load `start..end` (inclusive, UTC days) chunk by chunk, each chunk a full cycle.

    Resumable: a chunk's completion and the watermark commit together, so a killed backfill
    re-run skips the completed chunks; the interrupted chunk's file load is a no-op (same
    content) or was rolled back, and dbt picks up from its own watermarks. A backfill waits
    (up to `lock_wait_s`) for a running cycle instead of being skipped.
    """
    chunks = day_chunks(start, end, chunk_days)
    key = backfill_key(sources, synthetic_config)
    start_at = datetime.combine(start, datetime.min.time(), UTC)
    end_at = datetime.combine(end + timedelta(days=1), datetime.min.time(), UTC)
    run = Run(target, "backfill", steps, triggered_by, flow_run_id)
    if not run.begin(lock_wait_s, data_start=start_at, data_end=end_at):
        return run.result
    assert run.job is not None
    summary = run.job.summary
    summary.update(
        {
            "backfill_key": key,
            "chunks_total": len(chunks),
            "chunks_done": [],
            "chunks_already_done": [],
        }
    )
    with run.closing():
        with open_warehouse(target) as wh:
            done = completed_chunks(wh, key)
        for chunk_start, chunk_end in chunks:
            label = chunk_start.isoformat()
            if chunk_start in done:
                summary["chunks_already_done"].append(label)
                if on_chunk:
                    on_chunk(chunk_start, chunk_end, "already done")
                continue
            run.step(f"load {label}", run.load, sources, chunk_start, chunk_end, synthetic_config)
            scope = run.step(f"scope {label}", run.scope)
            process_scope(run, scope)
            summary["chunks_done"].append(label)
            with open_warehouse(target) as wh:
                checkpoint_chunk(
                    wh,
                    run.job,
                    scope.end,
                    (key, chunk_start, chunk_end, scope.rows_in),
                    metadata_watermark=scope.metadata_at,
                )
            if on_chunk:
                on_chunk(chunk_start, chunk_end, f"{scope.rows_in:,} row(s)")
        run.step("ml_scoring", run.score)
        run.publish(publish_to_redis, redis_client)
        with open_warehouse(target) as wh:
            final = Scope(watermark=None, end=read_watermark(wh), rows_in=run.result.rows_in)
        complete(run, final)
    return run.result
