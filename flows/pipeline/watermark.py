"""The cycle watermark (the newest raw `loaded_at` carried through dbt and the gates by a
completed run) and the backfill chunks already done; both move only inside the transaction that
completes a job, so a failed or killed run leaves them where they were."""

from __future__ import annotations

from datetime import date, datetime

from flows.kernel.runtime import utcnow
from flows.kernel.settings import PUBLISHED_SCHEMA
from flows.kernel.warehouse import Warehouse

WATERMARK_KEY = "cycle_watermark"
# Node metadata changes also need a dbt run (the nodes mart), even without new readings.
METADATA_WATERMARK_KEY = "node_metadata_watermark"


def read_watermark(wh: Warehouse, key: str = WATERMARK_KEY) -> datetime | None:
    return wh.scalar(
        f"select watermark from {PUBLISHED_SCHEMA}.pipeline_state where state_key = %(k)s",
        {"k": key},
    )


def advance_watermark(
    wh: Warehouse, watermark: datetime, job_id: str, key: str = WATERMARK_KEY
) -> None:
    """Move the watermark forward (never back), inside the caller's transaction."""
    wh.execute(
        f"insert into {PUBLISHED_SCHEMA}.pipeline_state (state_key, watermark, job_id, updated_at)"
        " values (%(k)s, %(w)s, %(job_id)s, %(now)s)"
        " on conflict (state_key) do update set"
        " watermark = greatest(pipeline_state.watermark, excluded.watermark),"
        " job_id = excluded.job_id, updated_at = excluded.updated_at",
        {"k": key, "w": watermark, "job_id": job_id, "now": utcnow()},
    )


# --------------------------------------------------------------------------- backfill chunks


def completed_chunks(wh: Warehouse, backfill_key: str) -> set[date]:
    rows = wh.query(
        f"select chunk_start from {PUBLISHED_SCHEMA}.backfill_chunks where backfill_key = %(k)s",
        {"k": backfill_key},
    )
    return {r[0] if isinstance(r[0], date) else date.fromisoformat(str(r[0])) for r in rows}


def record_backfill_chunk(
    wh: Warehouse, job_id: str, backfill_key: str, chunk_start: date, chunk_end: date, rows_in: int
) -> None:
    wh.execute(
        f"insert into {PUBLISHED_SCHEMA}.backfill_chunks (backfill_key, chunk_start, chunk_end, job_id,"
        " rows_in, completed_at) values (%(k)s, %(s)s, %(e)s, %(job_id)s, %(rows)s, %(now)s)"
        " on conflict (backfill_key, chunk_start) do nothing",
        {
            "k": backfill_key,
            "s": chunk_start,
            "e": chunk_end,
            "job_id": job_id,
            "rows": rows_in,
            "now": utcnow(),
        },
    )
