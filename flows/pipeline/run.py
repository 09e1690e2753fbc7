"""Bookkeeping and stages shared by a cycle, a backfill and a model job: the run lock, the job
row, each stage (load, scope, gates, dbt, scoring, publish) and how a failure is recorded.

The gates, ML scoring and the publisher are imported at module level on purpose: a broken
install fails the run at import time instead of quietly skipping a stage (fail closed).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import date
from typing import Any, TypeVar

from expectations.gate import gate
from expectations.results import ensure_quality_table
from flows.kernel import progress, read_snapshot
from flows.kernel.contracts import STAGING_SCHEMA
from flows.kernel.dbt_runner import (
    DbtError,
    DbtOutcome,
    release_duckdb_file,
    run_dbt,
    test_scope,
)
from flows.kernel.jsonable import jsonable
from flows.kernel.raw_store import ensure_raw_tables
from flows.kernel.runtime import new_job_id, utcnow
from flows.kernel.settings import PUBLISHED_SCHEMA, Target
from flows.kernel.warehouse import open_warehouse
from flows.loaders.files import PartialLoad
from flows.loaders.loading import load_source
from flows.pipeline.jobs import (
    Job,
    ensure_job_tables,
    fail_abandoned_jobs,
    finish_job,
    note_progress,
    record_skipped,
    running_jobs,
    start_job,
)
from flows.pipeline.lock import LOCK_FOR_JOB, RunLock
from flows.pipeline.results import CycleFailed, CycleResult, GateFailed, Scope, StepRecord
from flows.pipeline.steps import PUBLISH_RETRIES, DirectSteps, one_line
from flows.pipeline.watermark import METADATA_WATERMARK_KEY, read_watermark
from flows.publish.publisher import publish
from ml.registry import ensure_ml_tables
from ml.scoring import score_latest

log = logging.getLogger("water.cycle")


T = TypeVar("T")


def new_cycle_id() -> str:
    return new_job_id()


def prepare_target(target: Target) -> None:
    """Every table dbt's sources read (raw, jobs, quality checks, ML outputs and registry), so
    `dbt build` resolves them before a first load; `water init` is this alone."""

    with open_warehouse(target) as wh:
        ensure_raw_tables(wh)
        ensure_job_tables(wh)
        ensure_quality_table(wh)
    _ensure_ml_tables(target)


def transform(target: Target) -> DbtOutcome:
    """dbt build: incremental models process only rows loaded since their last run."""
    return run_dbt(target, "build")


class Run:
    """Bookkeeping shared by a cycle, a backfill and a model job."""

    def __init__(
        self, target: Target, kind: str, steps, triggered_by: str, flow_run_id: str | None
    ):
        self.target = target
        self.kind = kind
        self.steps = steps or DirectSteps()
        self.triggered_by = triggered_by
        self.flow_run_id = flow_run_id
        self.job_id: str | None = None  # assigned in advance by a caller (the API trigger)
        self.lock = RunLock(target, LOCK_FOR_JOB[kind])
        self.job: Job | None = None
        self.result = CycleResult(cycle_id="", target=target.name, started_at=utcnow(), kind=kind)

    # -- lock and job row --------------------------------------------------------------------
    def begin(self, lock_wait_s: float = 0.0, **job_fields: Any) -> bool:
        """Take the lock and open the job row; False (and a skipped row) if the lock is busy."""
        prepare_target(self.target)
        if not self.lock.acquire(lock_wait_s):
            self.lock.release()  # closes the probe's connection / file
            with open_warehouse(self.target) as wh:
                busy = running_jobs(wh, _types_sharing_lock(self.kind))
                holder = (
                    f": job {busy[0]['job_id']} ({busy[0]['job_type']}, started"
                    f" {busy[0]['started_at']:%Y-%m-%d %H:%M:%S}, {busy[0]['runner']})"
                    if busy
                    else ""
                )
                reason = f"another {' or '.join(_types_sharing_lock(self.kind))} run holds the lock{holder}"
                self.result.cycle_id = record_skipped(
                    wh, self.kind, self.triggered_by, reason, self.flow_run_id, job_id=self.job_id
                )
            self.result.status = "skipped"
            self.result.message = reason
            self.result.finished_at = utcnow()
            return False
        try:
            self.job = Job(
                self.job_id or new_job_id(),
                self.kind,
                utcnow(),
                self.triggered_by,
                self.flow_run_id,
            )
            self.result.cycle_id = self.job.job_id
            self.result.started_at = self.job.started_at
            with open_warehouse(self.target) as wh:
                abandoned = fail_abandoned_jobs(wh, _types_sharing_lock(self.kind), self.job.job_id)
                start_job(
                    wh,
                    self.kind,
                    self.triggered_by,
                    self.flow_run_id,
                    job_id=self.job.job_id,
                    started_at=self.job.started_at,
                    **job_fields,
                )
            if abandoned:
                self.job.summary["marked_abandoned_jobs_failed"] = abandoned
                log.warning(
                    "marked %d abandoned job(s) failed: %s", len(abandoned), ", ".join(abandoned)
                )
        except BaseException:
            self.lock.release()
            raise
        return True

    def step(self, name: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run one step through the step runner, note progress, time it."""
        assert self.job is not None
        self.lock.note(job_id=self.job.job_id, step=name)
        if self.target.type == "postgres":
            # Progress in the row is for outside observers; DuckDB's file is locked anyway.
            with open_warehouse(self.target) as wh:
                note_progress(wh, self.job, name)
        t0 = time.perf_counter()
        try:
            with progress.step(f"{self.kind} {name}"):
                value = self.steps.run(name, fn, *args, **kwargs)
        except BaseException as exc:
            detail = {**getattr(exc, "detail", {}), "error": one_line(exc)}
            self.record(name, StepRecord("failed", time.perf_counter() - t0, detail))
            raise
        finally:
            if self.target.type == "duckdb":
                release_duckdb_file()
        if isinstance(value, StepRecord):
            value.seconds = time.perf_counter() - t0
            self.record(name, value)
        else:
            self.record(name, StepRecord("ok", time.perf_counter() - t0))
        return value

    def record(self, name: str, record: StepRecord) -> None:
        assert self.job is not None
        self.result.steps[name] = record
        self.job.summary.setdefault("steps", {})[name] = record.as_dict()

    def fail(self, exc: BaseException) -> CycleFailed:
        """Close the job row as failed (best effort) and build the error to raise."""
        failed_step = next(
            (n for n, s in reversed(self.result.steps.items()) if s.status == "failed"), None
        )
        message = f"{self.kind} {self.result.cycle_id} failed"
        message += f" at step {failed_step}: " if failed_step else ": "
        message += one_line(exc)
        self.result.status = "failed"
        self.result.message = message
        self.result.finished_at = utcnow()
        if self.job is not None:
            try:
                with open_warehouse(self.target) as wh:
                    finish_job(wh, self.job, "failed", error_message=message[:2000])
            except Exception as record_exc:  # the database itself may be what failed
                log.error(
                    "could not record the failure of job %s (%s); the next run will mark it failed",
                    self.job.job_id,
                    one_line(record_exc),
                )
        failure = CycleFailed(message)
        failure.result = self.result  # for the run summary and the failure notification
        failure.failed_step = failed_step
        return failure

    def end(self) -> None:
        try:
            if self.target.type == "duckdb" and self.job is not None:
                # Readers open this copy, never the live file (flows/kernel/read_snapshot.py).
                read_snapshot.refresh(self.target)
        except Exception as exc:  # noqa: BLE001 - readers keep the previous snapshot
            log.warning("the DuckDB read snapshot was not refreshed: %s", one_line(exc))
        finally:
            self.lock.release()

    @contextmanager
    def closing(self) -> Iterator[None]:
        """Any error marks the job failed and is raised as CycleFailed; the lock is always released."""
        try:
            yield
        except BaseException as exc:
            failure = self.fail(exc)
            if isinstance(exc, KeyboardInterrupt | SystemExit):
                raise
            raise failure from exc
        finally:
            self.end()

    # -- the stages shared by cycle and backfill ----------------------------------------------
    def load(
        self, sources: Sequence[str], start: date | None, end: date | None, synthetic_config
    ) -> StepRecord:

        refused: list[dict[str, str]] = []
        with open_warehouse(self.target) as wh:
            try:
                results = load_source(
                    wh, list(sources), start, end, progress=False, synthetic_config=synthetic_config
                )
            except PartialLoad as exc:
                # The good files are committed and processed; the refused ones are recorded in
                # the job (and left where they are: the next cycle reports them again).
                results = exc.results
                refused = [{"file": f, "reason": reason} for f, reason in exc.refused]
                log.warning("load: %s", one_line(exc))
        detail = {
            "source": list(sources),
            "files_loaded": sum(1 for r in results if not r.skipped),
            "files_already_loaded": sum(1 for r in results if r.skipped),
            "rows_loaded": sum(r.rows for r in results),
        }
        if refused:
            detail["refused_files"] = refused
        return StepRecord("ok", detail=detail)

    def scope(self) -> Scope:
        with open_warehouse(self.target) as wh:
            watermark = read_watermark(wh)
            rows_in, end = wh.query(
                "select count(*), max(loaded_at) from raw.sensor_readings"
                " where cast(%(w)s as timestamptz) is null or loaded_at > %(w)s",
                {"w": watermark},
            )[0]
            metadata_watermark = read_watermark(wh, METADATA_WATERMARK_KEY)
            metadata_at = wh.scalar("select max(updated_at) from raw.node_metadata")
        scope = Scope(
            watermark=watermark,
            end=end or watermark,
            rows_in=int(rows_in),
            metadata_watermark=metadata_watermark,
            metadata_at=metadata_at,
        )
        self.result.rows_in += scope.rows_in
        assert self.job is not None
        self.job.summary["watermark_from"] = watermark
        self.job.summary["watermark_to"] = scope.end
        return scope

    def needs_dbt(self, scope: Scope) -> str | None:
        """Why dbt must run (None: nothing changed since the last completed run)."""
        if scope.rows_in:
            return f"{scope.rows_in} new raw row(s)"
        if scope.metadata_at is not None and (
            scope.metadata_watermark is None or scope.metadata_at > scope.metadata_watermark
        ):
            return "node metadata changed"
        with open_warehouse(self.target) as wh:
            if not wh.relation_exists(PUBLISHED_SCHEMA, "computed_metrics"):
                return "first build"
            last_status = _last_warehouse_run_status(wh)
        if last_status not in (None, "completed"):
            return f"the previous run {last_status}"
        return None

    def gate(self, stage: str, scope: Scope) -> StepRecord:
        # Raw: the rows loaded after the watermark; marts: the rows this run's dbt rebuilt.
        since = scope.build_start if stage == "marts" and scope.build_start else scope.watermark
        result = gate(self.target, stage, run_id=self.result.cycle_id, since_loaded_at=since)
        detail = {
            "checked_rows": getattr(result, "checked_rows", None),
            "warnings": jsonable(getattr(result, "warnings", [])),
            "critical_failures": jsonable(getattr(result, "critical_failures", [])),
        }
        if not result.passed:
            failures = "; ".join(str(f) for f in result.critical_failures) or "see the job summary"
            error = GateFailed(f"{stage} quality gate failed: {failures}")
            error.detail = detail
            raise error
        return StepRecord("ok", detail=detail)

    def dbt(self, scope: Scope) -> StepRecord:
        reason = self.needs_dbt(scope)
        if reason is None:
            return StepRecord(
                "skipped", detail={"reason": "no new raw rows since the last completed run"}
            )
        _ensure_ml_tables(self.target)
        # Data tests check what this cycle built (rows loaded after the watermark, rows
        # rebuilt from now on, by the database clock); the first build, the daily job and
        # CI test whole tables.
        if scope.watermark is not None:
            with open_warehouse(self.target) as wh:
                scope.build_start = wh.scalar("select current_timestamp")
        with test_scope(scope.watermark, scope.build_start):
            outcome = self.steps.dbt_build(self.target)
        self.result.dbt = outcome
        if not outcome.success:
            raise DbtError("dbt build failed: " + "; ".join(outcome.failures))
        slowest = sorted(outcome.node_timings.items(), key=lambda kv: -kv[1])[:5]
        return StepRecord(
            "ok",
            detail={
                "reason": reason,
                "nodes": len(outcome.node_timings),
                "slowest": {k: round(v, 3) for k, v in slowest},
            },
        )

    def batch_facts(self, scope: Scope) -> None:
        """rows_rejected and the reading-time range of the scope, from the built tables."""
        if scope.rows_in == 0 or scope.end is None:
            return
        params = {"w": scope.watermark, "end": scope.end}
        with open_warehouse(self.target) as wh:
            if wh.relation_exists(PUBLISHED_SCHEMA, "rejected_readings"):
                self.result.rows_rejected += int(
                    wh.scalar(
                        f"select count(*) from {PUBLISHED_SCHEMA}.rejected_readings"
                        " where (cast(%(w)s as timestamptz) is null or loaded_at > %(w)s) and loaded_at <= %(end)s",
                        params,
                    )
                )
            if wh.relation_exists(STAGING_SCHEMA, "stg_raw__sensor_readings"):
                start, last = wh.query(
                    f"select min(reading_at), max(reading_at) from {STAGING_SCHEMA}.stg_raw__sensor_readings"
                    " where is_valid and (cast(%(w)s as timestamptz) is null or loaded_at > %(w)s)"
                    " and loaded_at <= %(end)s",
                    params,
                )[0]
                scope.data_start, scope.data_end = start, last

    def score(self) -> StepRecord:
        scored = score_latest(self.target)
        detail = {"result": jsonable(scored)}
        if self.target.type == "postgres" and getattr(scored, "forecasts_written", 0):
            # dbt-postgres has no Python models: scoring wrote ml.flow_forecasts, and the
            # ml_predictions_cache model publishes them. Run it now, not a cycle later.
            outcome = self.steps.dbt_build(self.target, select=["ml_predictions_cache"])
            if not outcome.success:
                raise DbtError(
                    "dbt build of ml_predictions_cache failed: " + "; ".join(outcome.failures)
                )
            detail["forecasts_published"] = True
        return StepRecord("ok", detail=detail)

    def publish(self, enabled: bool, redis_client) -> None:
        """Soft step: a Redis failure is recorded, never fails the run."""
        assert self.job is not None
        if not enabled:
            self.result.publish = {"status": "disabled"}
            self.job.summary["publish"] = self.result.publish
            return

        t0 = time.perf_counter()
        try:
            # One quick retry: a Redis outage must not hold the cycle; the next one republishes.
            published = self.step(
                "publish",
                publish,
                self.target,
                self.result.cycle_id,
                redis_client,
                retries=PUBLISH_RETRIES,
            )
            self.result.publish = published.summary()
        except Exception as exc:
            self.result.publish = {
                "status": "failed",
                "error": one_line(exc),
                "seconds": round(time.perf_counter() - t0, 3),
            }
            log.warning(
                "publish to Redis failed (%s); the next cycle publishes again", one_line(exc)
            )
        self.job.summary["publish"] = self.result.publish


def process_scope(run: Run, scope: Scope) -> None:
    if scope.rows_in:
        run.step("raw_gate", run.gate, "raw", scope)
    else:
        run.record("raw_gate", StepRecord("skipped", detail={"reason": "no new raw rows"}))
    dbt = run.step("dbt_build", run.dbt, scope)
    if dbt.status == "ok":
        run.step("marts_gate", run.gate, "marts", scope)
    else:
        run.record("marts_gate", StepRecord("skipped", detail={"reason": "dbt did not run"}))
    run.batch_facts(scope)


def complete(run: Run, scope: Scope) -> None:
    assert run.job is not None
    run.result.watermark = scope.end
    with open_warehouse(run.target) as wh:
        finish_job(
            wh,
            run.job,
            "completed",
            rows_in=run.result.rows_in,
            rows_rejected=run.result.rows_rejected,
            data_start=scope.data_start,
            data_end=scope.data_end,
            watermark=scope.end,
            metadata_watermark=scope.metadata_at,
        )
    run.result.status = "completed"
    run.result.finished_at = utcnow()
    run.result.summary = run.job.summary


def _types_sharing_lock(kind: str) -> tuple[str, ...]:
    lock = LOCK_FOR_JOB[kind]
    return tuple(t for t, name in LOCK_FOR_JOB.items() if name == lock)


def _last_warehouse_run_status(wh) -> str | None:
    """Status of the last finished cycle or backfill (None: there was none)."""
    rows = wh.query(
        f"select status from {PUBLISHED_SCHEMA}.processing_jobs"
        " where job_type in ('cycle', 'backfill') and status in ('completed', 'failed')"
        " order by started_at desc limit 1"
    )
    return rows[0][0] if rows else None


def _ensure_ml_tables(target: Target) -> None:
    """The ML stage's tables must exist before dbt resolves its `ml` sources."""
    with open_warehouse(target) as wh:
        ensure_ml_tables(wh)
