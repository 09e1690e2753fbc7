"""What a run returns and records: step records, the scope, the result, and its one-line summary."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from flows.kernel.dbt_runner import DbtOutcome
from flows.kernel.redis_conn import redis_endpoint
from flows.kernel.settings import Target


class CycleFailed(RuntimeError):
    """A cycle (or backfill, or model job) failed; the job row says failed with this message."""


class GateFailed(RuntimeError):
    """A quality gate found critical failures: nothing of this run is published."""


@dataclass
class StepRecord:
    status: str  # ok | skipped | failed
    seconds: float = 0.0
    detail: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"status": self.status, "seconds": round(self.seconds, 3), **self.detail}


@dataclass
class Scope:
    """The raw rows a run carries: loaded after the watermark, up to `end`."""

    watermark: datetime | None
    end: datetime | None
    rows_in: int
    data_start: datetime | None = None
    data_end: datetime | None = None
    metadata_watermark: datetime | None = None
    metadata_at: datetime | None = None
    # Database clock when this run's dbt build began: the marts gate and the data tests check
    # the rows rebuilt after it (None: the first build, everything).
    build_start: datetime | None = None


@dataclass
class CycleResult:
    cycle_id: str
    target: str
    started_at: datetime
    kind: str = "cycle"
    status: str = "running"  # completed | failed | skipped
    finished_at: datetime | None = None
    steps: dict[str, StepRecord] = field(default_factory=dict)
    dbt: DbtOutcome | None = None
    rows_in: int = 0
    rows_rejected: int = 0
    watermark: datetime | None = None
    publish: dict[str, Any] = field(default_factory=dict)
    message: str = ""
    summary: dict[str, Any] = field(default_factory=dict)

    @property
    def job_id(self) -> str:
        return self.cycle_id

    @property
    def step_seconds(self) -> dict[str, float]:
        return {name: step.seconds for name, step in self.steps.items()}

    @property
    def duration_seconds(self) -> float:
        if self.finished_at is None:
            return sum(self.step_seconds.values())
        return (self.finished_at - self.started_at).total_seconds()


def describe_result(result: CycleResult, target: Target) -> str:
    """What a command prints after a run: one line, plus the publish outcome."""
    if result.status == "skipped":
        return f"{result.kind} skipped ({result.message}); recorded as job {result.cycle_id}"
    steps = ", ".join(
        f"{name} {step.seconds:.1f}s" + ("" if step.status == "ok" else f" [{step.status}]")
        for name, step in result.steps.items()
    )
    line = (
        f"{result.kind} {result.cycle_id} {result.status} on {target.describe()} in"
        f" {result.duration_seconds:.1f}s: {result.rows_in:,} new row(s), {result.rows_rejected:,} rejected ({steps})"
    )
    publish = result.publish or {}
    if publish.get("status") == "published":
        line += f"\npublished {publish['keys']} key(s) to {redis_endpoint().describe()}"
    elif publish.get("status") == "failed":
        line += f"\npublish to Redis FAILED ({publish['error']}); the next cycle publishes again"
    return line
