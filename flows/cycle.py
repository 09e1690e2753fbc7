"""The processing cycle, the backfill and the model jobs: the code every entry point runs.

`water cycle`, `water load --process`, `water train/evaluate` and the Prefect flows in
`flows/flows.py` all call the functions here; only the *step runner* differs:

* `DirectSteps` (CLI, tests, demo) calls each step in-process and retries transient
  database/Redis errors itself. No Prefect server, no 10-15 s ephemeral start-up.
* `flows.flows.PrefectSteps` runs each step as a Prefect task (retries with exponential
  backoff, timeouts, visible in the UI) and dbt through `prefect_dbt.PrefectDbtRunner`.

A cycle: take the run lock (another run holding it -> a `skipped` job row) -> mark jobs
left `running` by dead processes failed -> job row `running` -> load the new raw batch from
the source, if any -> scope: raw rows loaded after the watermark -> raw quality gate -> dbt
build -> marts quality gate -> ML scoring -> publish to Redis -> job `completed` and the
watermark moved to the end of the scope, in one transaction. Any failure before that commit
marks the job failed and leaves the watermark alone, so the next cycle reprocesses the same
scope; dbt's incremental models are idempotent, so nothing is skipped or counted twice.
A Redis failure does not fail the cycle: the publish is recorded as failed and the next
cycle publishes the full snapshot again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, is_dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any, TypeVar

import psycopg
import redis

from flows import progress
from flows.config import PUBLISHED_SCHEMA, Target
from flows.dbt_runner import DbtError, DbtOutcome, release_duckdb_file, run_dbt, test_scope
from flows.jobs import (
    LOCK_FOR_JOB,
    METADATA_WATERMARK_KEY,
    Job,
    RunLock,
    checkpoint_chunk,
    completed_chunks,
    ensure_job_tables,
    fail_abandoned_jobs,
    finish_job,
    is_duckdb_busy,
    new_job_id,
    note_progress,
    open_warehouse,
    read_watermark,
    record_skipped,
    running_jobs,
    start_job,
    utcnow,
)
from flows.raw_store import ensure_raw_tables
from flows.warehouse import WarehouseError

log = logging.getLogger("water.cycle")
T = TypeVar("T")

# Per-step limits used by the Prefect tasks (seconds).
STEP_TIMEOUTS_S = {
    "load": 3600,
    "scope": 300,
    "raw_gate": 900,
    "dbt_build": 3600,
    "marts_gate": 900,
    "ml_scoring": 1800,
    "publish": 300,
    "evaluate": 3600,
    "data_tests": 3600,
    "train": 3 * 3600,
}
STAGING_SCHEMA = "water_staging"
# Production builds skip dbt unit tests (they test SQL logic on fixed inputs: CI's job, as dbt
# recommends); data tests still run and fail the build.
CYCLE_DBT_ARGS = ("--exclude-resource-type", "unit_test")


def cycle_dbt_args(select: Sequence[str] = ()) -> list[str]:
    return [*(["--select", *select] if select else []), *CYCLE_DBT_ARGS]


class CycleFailed(RuntimeError):
    """A cycle (or backfill, or model job) failed; the job row says failed with this message."""


class GateFailed(RuntimeError):
    """A quality gate found critical failures: nothing of this run is published."""


# One quick retry of the publish step: a Redis outage must not hold the cycle.
PUBLISH_RETRIES = 1

# --------------------------------------------------------------------------- transient errors


def is_transient(exc: BaseException) -> bool:
    """Worth retrying: a connection dropped or refused, a busy DuckDB file, a deadlock."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, redis.ConnectionError | redis.TimeoutError):
            return True
        if isinstance(
            exc,
            psycopg.OperationalError
            | psycopg.errors.SerializationFailure
            | psycopg.errors.DeadlockDetected,
        ):
            return True
        text = str(exc)
        if is_duckdb_busy(exc) or any(
            marker in text
            for marker in (
                "could not connect to server",
                "Connection refused",
                "server closed the connection unexpectedly",
                "connection to server at",
                "terminating connection due to administrator command",
                "deadlock detected",
            )
        ):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


# --------------------------------------------------------------------------- step runners


class DirectSteps:
    """Run steps in this process; retry transient errors with exponential backoff."""

    name = "direct"

    def __init__(self, retries: int = 2, backoff_s: float = 2.0):
        self.retries = retries
        self.backoff_s = backoff_s

    def run(
        self, name: str, fn: Callable[..., T], *args: Any, retries: int | None = None, **kwargs: Any
    ) -> T:
        attempts = (self.retries if retries is None else retries) + 1
        for attempt in range(1, attempts + 1):
            try:
                return fn(*args, **kwargs)
            except Exception as exc:
                if attempt == attempts or not is_transient(exc):
                    raise
                delay = self.backoff_s * 2 ** (attempt - 1)
                log.warning(
                    "step %s: transient error (%s); retry %d/%d in %.0fs",
                    name,
                    _one_line(exc),
                    attempt,
                    attempts - 1,
                    delay,
                )
                time.sleep(delay)
        raise AssertionError("unreachable")

    def dbt_build(self, target: Target, select: Sequence[str] = ()) -> DbtOutcome:
        return run_dbt(target, "build", cycle_dbt_args(select))


# --------------------------------------------------------------------------- results


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


# --------------------------------------------------------------------------- shared pieces


def new_cycle_id() -> str:
    return new_job_id()


def prepare_target(target: Target) -> None:
    """Every table dbt's sources read (raw, jobs, quality checks, ML outputs and registry), so
    `dbt build` resolves them before a first load; `water init` is this alone."""
    from flows.quality import ensure_quality_table

    with open_warehouse(target) as wh:
        ensure_raw_tables(wh)
        ensure_job_tables(wh)
        ensure_quality_table(wh)
    _ensure_ml_tables(target)


def transform(target: Target) -> DbtOutcome:
    """dbt build: incremental models process only rows loaded since their last run."""
    return run_dbt(target, "build")


class _Run:
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
            detail = {**getattr(exc, "detail", {}), "error": _one_line(exc)}
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
        message += _one_line(exc)
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
                    _one_line(record_exc),
                )
        failure = CycleFailed(message)
        failure.result = self.result  # for the run summary and the failure notification
        failure.failed_step = failed_step
        return failure

    def end(self) -> None:
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
        from flows.loaders.files import PartialLoad
        from flows.loading import load_source

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
                log.warning("load: %s", _one_line(exc))
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
        try:
            from flows.quality import gate
        except ImportError as exc:
            return StepRecord(
                "skipped", detail={"reason": f"flows.quality is not available ({exc})"}
            )
        # Raw: the rows loaded after the watermark; marts: the rows this run's dbt rebuilt.
        since = scope.build_start if stage == "marts" and scope.build_start else scope.watermark
        result = gate(self.target, stage, run_id=self.result.cycle_id, since_loaded_at=since)
        detail = {
            "checked_rows": getattr(result, "checked_rows", None),
            "warnings": _jsonable(getattr(result, "warnings", [])),
            "critical_failures": _jsonable(getattr(result, "critical_failures", [])),
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
        try:
            from ml.scoring import score_latest
        except ImportError as exc:
            return StepRecord("skipped", detail={"reason": f"ml.scoring is not available ({exc})"})
        scored = score_latest(self.target)
        detail = {"result": _jsonable(scored)}
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
        from flows.publish import publish

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
                "error": _one_line(exc),
                "seconds": round(time.perf_counter() - t0, 3),
            }
            log.warning(
                "publish to Redis failed (%s); the next cycle publishes again", _one_line(exc)
            )
        self.job.summary["publish"] = self.result.publish


# --------------------------------------------------------------------------- the cycle


def run_cycle(
    target: Target,
    *,
    source: Sequence[str] | str | None = None,
    synthetic_config=None,
    triggered_by: str = "cli",
    flow_run_id: str | None = None,
    steps=None,
    publish_to_redis: bool = True,
    redis_client=None,
    lock_wait_s: float = 0.0,
    job_id: str | None = None,
) -> CycleResult:
    """One processing cycle. Returns the result (status completed or skipped); raises
    CycleFailed after recording the failure. `job_id`: use this id for the job row (the API
    returns it to the caller before the cycle starts)."""
    run = _Run(target, "cycle", steps, triggered_by, flow_run_id)
    run.job_id = job_id
    if not run.begin(lock_wait_s):
        return run.result
    with run.closing():
        sources = [source] if isinstance(source, str) else list(source or [])
        if sources:
            run.step("load", run.load, sources, None, None, synthetic_config)
        scope = run.step("scope", run.scope)
        _process_scope(run, scope)
        run.step("ml_scoring", run.score)
        run.publish(publish_to_redis, redis_client)
        _complete(run, scope)
    return run.result


def _process_scope(run: _Run, scope: Scope) -> None:
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


def _complete(run: _Run, scope: Scope) -> None:
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


# --------------------------------------------------------------------------- backfill


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
    run = _Run(target, "backfill", steps, triggered_by, flow_run_id)
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
            _process_scope(run, scope)
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
        _complete(run, final)
    return run.result


# --------------------------------------------------------------------------- model jobs


def run_model_job(
    target: Target,
    kind: str,
    *,
    model_type: str | None = None,
    triggered_by: str = "cli",
    flow_run_id: str | None = None,
    steps=None,
    lock_wait_s: float = 1800.0,
) -> CycleResult:
    """`evaluation` (ml.evaluation.evaluate) or `retraining` (ml.training.train), as a job."""
    if kind not in ("evaluation", "retraining"):
        raise ValueError(f"unknown model job {kind!r}: expected evaluation or retraining")
    run = _Run(target, kind, steps, triggered_by, flow_run_id)
    if not run.begin(lock_wait_s):
        return run.result
    assert run.job is not None
    with run.closing():
        if kind == "evaluation":
            run.step("evaluate", _evaluate, target)
            # Cycles test only what they built; the daily job tests every table whole.
            run.step("data_tests", full_data_tests, target)
        else:
            run.step("train", _train, target, model_type)
        run.job.summary["model_type"] = model_type
        with open_warehouse(target) as wh:
            finish_job(wh, run.job, "completed")
        run.result.status = "completed"
        run.result.finished_at = utcnow()
        run.result.summary = run.job.summary
    return run.result


def _evaluate(target: Target) -> StepRecord:
    from ml.evaluation import evaluate  # ImportError fails the job: nothing to evaluate with

    return StepRecord("ok", detail={"result": _jsonable(evaluate(target))})


def full_data_tests(target: Target) -> StepRecord:
    """Every dbt data test on whole tables (no cycle scope); a failure fails the job."""
    with test_scope(None, None):
        outcome = run_dbt(target, "test", list(CYCLE_DBT_ARGS), raise_on_failure=False)
    if not outcome.success:
        raise DbtError("full-table data tests failed: " + "; ".join(outcome.failures))
    return StepRecord("ok", detail={"tests": len(outcome.node_timings)})


def _train(target: Target, model_type: str | None) -> StepRecord:
    from ml.training import train

    return StepRecord("ok", detail={"result": _jsonable(train(target, model_type=model_type))})


# --------------------------------------------------------------------------- helpers


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
        from flows.redis_conn import redis_endpoint

        line += f"\npublished {publish['keys']} key(s) to {redis_endpoint().describe()}"
    elif publish.get("status") == "failed":
        line += f"\npublish to Redis FAILED ({publish['error']}); the next cycle publishes again"
    return line


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
    try:
        from ml.registry import ensure_ml_tables
    except ImportError:
        return
    with open_warehouse(target) as wh:
        ensure_ml_tables(wh)


def _jsonable(value: Any) -> Any:
    if is_dataclass(value) and not isinstance(value, type):
        value = asdict(value)
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set):
        return [_jsonable(v) for v in value]
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    if hasattr(value, "item"):
        return value.item()
    return str(value)


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text[:1000] if text else type(exc).__name__


__all__ = [
    "CycleFailed",
    "CycleResult",
    "DirectSteps",
    "GateFailed",
    "WarehouseError",
    "day_chunks",
    "is_transient",
    "prepare_target",
    "run_backfill",
    "run_cycle",
    "run_model_job",
    "transform",
]
