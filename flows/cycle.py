"""One processing cycle: transform what was loaded since the last cycle.

The stages are plain functions so that `water cycle` and the Prefect flow run the same code.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime

from flows.config import Target
from flows.dbt_runner import DbtOutcome, run_dbt
from flows.raw_store import ensure_raw_tables
from flows.warehouse import connect


@dataclass
class CycleResult:
    cycle_id: str
    target: str
    started_at: datetime
    finished_at: datetime | None = None
    step_seconds: dict[str, float] = field(default_factory=dict)
    dbt: DbtOutcome | None = None

    @property
    def duration_seconds(self) -> float:
        return sum(self.step_seconds.values())


def new_cycle_id() -> str:
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ-") + uuid.uuid4().hex[:8]


def prepare_target(target: Target) -> None:
    """Make sure the raw tables exist so dbt's sources resolve even before a first load."""
    with connect(target) as wh:
        ensure_raw_tables(wh)


def transform(target: Target) -> DbtOutcome:
    """dbt build: incremental models process only rows loaded since their last run."""
    return run_dbt(target, "build")


def run_cycle(target: Target) -> CycleResult:
    result = CycleResult(cycle_id=new_cycle_id(), target=target.name, started_at=datetime.now(UTC))
    step = time.perf_counter()
    prepare_target(target)
    result.step_seconds["prepare"] = time.perf_counter() - step
    step = time.perf_counter()
    result.dbt = transform(target)
    result.step_seconds["dbt_build"] = time.perf_counter() - step
    result.finished_at = datetime.now(UTC)
    return result
