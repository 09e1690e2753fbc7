"""Gate results: what one check and one stage found, the quality_checks table they land in,
and how `water status` / `water validate` read and show them.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from expectations.suites import STAGES
from flows.kernel.settings import PUBLISHED_SCHEMA, QUALITY_PAGE_URL
from flows.kernel.warehouse import Warehouse, apply_ddl

log = logging.getLogger(__name__)


# -- results -------------------------------------------------------------------------------
@dataclass
class CheckResult:
    suite: str
    expectation: str  # the expectation's `meta.check` name
    expectation_type: str
    column_name: str | None
    severity: str
    status: str  # passed | failed | error | skipped
    observed_value: str
    unexpected_count: int | None = None

    @property
    def success(self) -> bool | None:
        return None if self.status == "skipped" else self.status == "passed"

    def line(self) -> str:
        return f"{self.suite}.{self.expectation}: observed {self.observed_value}"


@dataclass
class GateResult:
    stage: str  # 'raw' | 'marts'
    run_id: str
    passed: bool  # False iff a critical expectation failed
    critical_failures: list[str]  # "suite.expectation: observed ..." one line each
    warnings: list[str]
    checked_rows: int
    checks: list[CheckResult] = field(default_factory=list)
    skipped_suites: list[str] = field(default_factory=list)


# -- the quality_checks table --------------------------------------------------------------
_QUALITY_DDL = {
    "duckdb": [
        f"create schema if not exists {PUBLISHED_SCHEMA}",
        f"""create table if not exists {PUBLISHED_SCHEMA}.quality_checks (
            run_id varchar not null, stage varchar not null, suite varchar not null,
            expectation varchar not null, expectation_type varchar, column_name varchar,
            severity varchar not null, status varchar not null, success boolean,
            observed_value varchar, unexpected_count bigint, checked_rows bigint,
            checked_at timestamptz not null)""",
    ],
    "postgres": [
        f"create schema if not exists {PUBLISHED_SCHEMA}",
        f"""create table if not exists {PUBLISHED_SCHEMA}.quality_checks (
            run_id text not null, stage text not null, suite text not null,
            expectation text not null, expectation_type text, column_name text,
            severity text not null, status text not null, success boolean,
            observed_value text, unexpected_count bigint, checked_rows bigint,
            checked_at timestamptz not null)""",
        f"""create index if not exists quality_checks_checked_at_idx
            on {PUBLISHED_SCHEMA}.quality_checks (checked_at)""",
    ],
}


def ensure_quality_table(wh: Warehouse) -> None:
    """Create water_infrastructure.quality_checks if missing (idempotent)."""
    apply_ddl(wh, _QUALITY_DDL, "water.quality_ddl")


def record_results(
    wh: Warehouse,
    stage: str,
    run_id: str,
    checks: Sequence[CheckResult],
    rows_by_suite: dict[str, int | None],
    checked_at: datetime,
) -> None:
    with wh.transaction():
        for check in checks:
            wh.execute(
                "insert into water_infrastructure.quality_checks (run_id, stage, suite,"
                " expectation, expectation_type, column_name, severity, status, success,"
                " observed_value, unexpected_count, checked_rows, checked_at) values"
                " (%(run_id)s, %(stage)s, %(suite)s, %(expectation)s, %(expectation_type)s,"
                " %(column_name)s, %(severity)s, %(status)s, %(success)s, %(observed)s,"
                " %(unexpected)s, %(rows)s, %(checked_at)s)",
                {
                    "run_id": run_id,
                    "stage": stage,
                    "suite": check.suite,
                    "expectation": check.expectation,
                    "expectation_type": check.expectation_type,
                    "column_name": check.column_name,
                    "severity": check.severity,
                    "status": check.status,
                    "success": check.success,
                    "observed": check.observed_value,
                    "unexpected": check.unexpected_count,
                    "rows": rows_by_suite.get(check.suite),
                    "checked_at": checked_at,
                },
            )


# -- reading the recorded results ----------------------------------------------------------
@dataclass
class QualitySummary:
    run_id: str | None = None
    checked_at: Any = None
    stages: list[str] = field(default_factory=list)
    checks: int = 0
    failed_by_severity: dict[str, int] = field(default_factory=dict)
    skipped: int = 0
    # (severity, suite, expectation, observed value), critical first
    failures: list[tuple[str, str, str, str]] = field(default_factory=list)


def latest_results(wh: Warehouse, stage: str | None = None) -> QualitySummary:
    """The most recent run's results (for `water status`), by severity."""
    summary = QualitySummary()
    if not wh.relation_exists(PUBLISHED_SCHEMA, "quality_checks"):
        return summary
    where = "where stage = %(stage)s" if stage else ""
    latest = wh.query(
        f"select run_id, max(checked_at) from water_infrastructure.quality_checks {where}"  # noqa: S608 - constant fragments
        " group by run_id order by max(checked_at) desc limit 1",
        {"stage": stage} if stage else None,
    )
    if not latest:
        return summary
    summary.run_id, summary.checked_at = latest[0]
    rows = wh.query(
        "select stage, suite, expectation, severity, status, observed_value"
        " from water_infrastructure.quality_checks where run_id = %(run_id)s"
        " order by case severity when 'critical' then 0 else 1 end, suite, expectation",
        {"run_id": summary.run_id},
    )
    for stage_name, suite, expectation, severity, status, observed in rows:
        if stage_name not in summary.stages:
            summary.stages.append(stage_name)
        summary.checks += 1
        if status == "skipped":
            summary.skipped += 1
        elif status in ("failed", "error"):
            summary.failed_by_severity[severity] = summary.failed_by_severity.get(severity, 0) + 1
            summary.failures.append((severity, suite, expectation, observed or ""))
    return summary


def run_verdict(critical_failed: int, warning_failed: int) -> str:
    """The platform's verdict on a gate run: only a critical failure fails it (and stops the
    publish); failed warnings are recorded and the run passes. (GX's own pages say "Failed"
    for any unmet expectation, whatever its severity.)"""
    if critical_failed:
        return "failed"
    return f"passed with {warning_failed} warning(s)" if warning_failed else "passed"


def format_summary(summary: QualitySummary, limit: int = 10) -> list[str]:
    """`water status` lines: the latest gate run and its failures, critical first."""
    if summary.run_id is None:
        return ["quality           no gate has run yet (`water cycle` or `water validate`)"]
    critical = summary.failed_by_severity.get("critical", 0)
    warnings = summary.failed_by_severity.get("warning", 0)
    skipped = f", {summary.skipped} suite(s) skipped" if summary.skipped else ""
    stages = "+".join(s for s in STAGES if s in summary.stages)
    checked_at = (
        summary.checked_at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%SZ")
        if isinstance(summary.checked_at, datetime)
        else summary.checked_at
    )
    lines = [
        f"quality           {'FAILED' if critical else 'passed'}: run {summary.run_id} ({stages})"
        f" at {checked_at}: {summary.checks} checks, {critical} critical and {warnings}"
        f" warning failure(s){skipped}"
    ]
    for severity, suite, expectation, observed in summary.failures[:limit]:
        lines.append(f"  {severity:<8} {suite}.{expectation}: {short_text(observed, 90)}")
    lines.append(f"  every run and its verdict: water dashboard -> {QUALITY_PAGE_URL}")
    if len(summary.failures) > limit:
        lines.append(
            f"  (+{len(summary.failures) - limit} more in {PUBLISHED_SCHEMA}.quality_checks)"
        )
    return lines


def format_table(results: Sequence[GateResult], width: int | None = None) -> str:
    """The plain summary `water validate` prints: one line per expectation."""
    width = width or max(100, shutil.get_terminal_size((120, 24)).columns)
    lines = [f"{'suite':<22} {'expectation':<34} {'severity':<9} {'status':<8} observed"]
    for result in results:
        for check in result.checks:
            observed = check.observed_value
            room = max(20, width - 77)
            if len(observed) > room:
                observed = observed[: room - 1] + "…"
            lines.append(
                f"{check.suite:<22} {check.expectation:<34} {check.severity:<9} "
                f"{check.status:<8} {observed}"
            )
    critical = sum(len(r.critical_failures) for r in results)
    warnings = sum(len(r.warnings) for r in results)
    rows = sum(r.checked_rows for r in results)
    run_id = results[0].run_id if results else "-"
    lines.append(
        f"run {run_id}: {rows:,} row(s) checked; {critical} critical failure(s), "
        f"{warnings} warning(s)"
    )
    return "\n".join(lines)


def short_text(value: Any, limit: int = 240) -> str:
    if isinstance(value, float):
        text = f"{value:.6g}"
    elif isinstance(value, list | tuple):
        text = "; ".join(short_text(v, 80) for v in value)
    elif isinstance(value, dict):
        text = " ".join(f"{k}={short_text(v, 60)}" for k, v in value.items())
    elif isinstance(value, datetime):
        text = value.isoformat()
    else:
        text = str(value)
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"
