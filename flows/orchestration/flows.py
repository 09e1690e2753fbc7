"""Prefect flows: thin wrappers over `flows.pipeline.cycle`, the code `water cycle` also runs.

Deployments (schedules, parameters, concurrency) are declared in `prefect.yaml`;
`water serve` serves them all from one process. Each step of a cycle is a Prefect task
(retries with exponential backoff on transient database/Redis errors, a timeout per step),
and the dbt build is one of them; with WATER_DBT_NODE_TASKS=1 dbt runs through
`prefect_dbt.PrefectDbtRunner` and every dbt model and test shows up as its own task. A
cycle or backfill leaves a markdown summary artifact; a failed, gate-blocked or crashed run
posts a notification to WATER_NOTIFY_URL (flows/orchestration/report.py). Cycles never overlap: the run
lock in the target database skips (and records) a trigger that finds one running, whoever
triggered it.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from datetime import date
from pathlib import Path
from typing import Any, TypeVar

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.client.orchestration import get_client
from prefect.runtime import deployment, flow_run
from prefect.settings import PREFECT_UI_URL
from prefect.states import Completed
from prefect.tasks import exponential_backoff

from flows.kernel.dbt_runner import DbtOutcome, dbt_environment, run_dbt, summarize
from flows.kernel.settings import DBT_PROJECT_DIR, PROJECT_ROOT, Target, load_settings
from flows.loaders.synthetic import SyntheticConfig
from flows.orchestration.report import failure_payload, new_anomalies, notify, run_markdown
from flows.pipeline.backfill import run_backfill
from flows.pipeline.backup import backup
from flows.pipeline.cycle import run_cycle
from flows.pipeline.model_jobs import run_model_job
from flows.pipeline.results import CycleFailed, CycleResult
from flows.pipeline.steps import (
    STEP_BACKOFF_S,
    STEP_RETRIES,
    STEP_TIMEOUTS_S,
    cycle_dbt_args,
    is_transient,
)

T = TypeVar("T")
log = logging.getLogger("water.flows")


def _retry_if_transient(_task, _task_run, state) -> bool:
    exc = state.data if isinstance(state.data, BaseException) else None
    if exc is None:
        try:
            exc = state.result(raise_on_failure=False)
        except Exception as error:  # noqa: BLE001 - whatever it is, decide on it
            exc = error
    return isinstance(exc, BaseException) and is_transient(exc)


class PrefectSteps:
    """Runs each cycle step as a Prefect task and dbt through PrefectDbtRunner."""

    name = "prefect"

    def run(
        self, name: str, fn: Callable[..., T], *args: Any, retries: int | None = None, **kwargs: Any
    ) -> T:
        kind = name.split(" ", 1)[0]
        step = task(
            fn,
            name=name,
            retries=STEP_RETRIES if retries is None else retries,
            retry_delay_seconds=exponential_backoff(backoff_factor=STEP_BACKOFF_S),
            retry_condition_fn=_retry_if_transient,
            timeout_seconds=STEP_TIMEOUTS_S.get(kind),
            cache_policy=NO_CACHE,
            persist_result=False,
        )
        return step(*args, **kwargs)

    def dbt_build(self, target: Target, select: Sequence[str] = ()) -> DbtOutcome:
        if os.environ.get("WATER_DBT_NODE_TASKS", "0").strip().lower() not in ("1", "true", "yes"):
            # Default: the build runs inside its cycle step's task, so a cycle is a handful of
            # task runs and much less Prefect bookkeeping (docs/operations.md); failures still
            # name the dbt node. WATER_DBT_NODE_TASKS=1 gives one task per dbt node instead.
            return run_dbt(target, "build", cycle_dbt_args(select))
        # prefect_dbt imports dbt (seconds); only the per-node mode needs it.
        from dbt_common.events.base_types import EventLevel
        from prefect_dbt import PrefectDbtRunner, PrefectDbtSettings

        root = os.environ.get("WATER_DBT_TARGET_ROOT")
        settings = PrefectDbtSettings(
            project_dir=DBT_PROJECT_DIR,
            profiles_dir=PROJECT_ROOT,
            target_path=Path(root) / target.name if root else Path("target"),
            # Explicit: derived from PREFECT_LOGGING_LEVEL=WARNING it would be the invalid 'warning'.
            log_level=EventLevel.WARN,
        )
        runner = PrefectDbtRunner(settings=settings, raise_on_failure=False)
        args = ["build", *cycle_dbt_args(select)]
        with dbt_environment(target):
            try:
                result = runner.invoke(args)
            except ValueError as exc:  # dbt raised (compile error, connection refused...)
                return DbtOutcome(success=False, failures=[" ".join(str(exc).split())[:1000]])
        return summarize(result, "build")


def _target(name: str | None) -> Target:
    return load_settings().target(name)


def _run_context() -> tuple[str, str | None]:
    """(triggered_by, flow_run_id) of the current flow run."""

    run_id = flow_run.get_id()
    if deployment.get_id() is None:
        return "prefect:flow", run_id
    try:
        with get_client(sync_client=True) as client:
            details = client.read_flow_run(run_id)
        if details.auto_scheduled:
            return f"prefect:schedule:{deployment.get_name()}", run_id
        by = details.created_by.display_value if details.created_by else None
        return f"prefect:manual:{deployment.get_name()}" + (f":{by}" if by else ""), run_id
    except Exception:  # noqa: BLE001 - the label is informative only
        return f"prefect:{deployment.get_name()}", run_id


def _ui_url(run_id: str) -> str | None:

    base = PREFECT_UI_URL.value()
    return f"{base.rstrip('/')}/runs/flow-run/{run_id}" if base else None


def notify_failure(flow, flow_run, state) -> None:
    """Flow state hook (failed or crashed): post the failure to WATER_NOTIFY_URL, if set."""
    try:
        exc = state.result(raise_on_failure=False)
    except Exception as error:  # noqa: BLE001 - the state may hold no result at all
        exc = error
    message = " ".join(str(state.message or exc or state.name).split())[:2000]
    payload = failure_payload(
        flow.name,
        flow_run.name,
        str(flow_run.id),
        state.name,
        message,
        getattr(exc, "failed_step", None),
        _ui_url(str(flow_run.id)),
    )
    if notify(payload):
        get_run_logger().info("failure notification sent (%s)", payload["kind"])


def _summarise(result: CycleResult) -> None:
    """The run's markdown summary as a Prefect artifact (key water-<kind>-summary)."""

    try:
        anomalies = new_anomalies(_target(result.target), result.started_at)
    except Exception as exc:  # noqa: BLE001 - a summary must not fail the run it summarises
        log.warning("run summary without anomalies: %s", exc)
        anomalies = None
    try:
        create_markdown_artifact(
            markdown=run_markdown(result, anomalies),
            key=f"water-{result.kind}-summary",
            description=f"{result.kind} {result.cycle_id}: {result.status}",
        )
    except Exception as exc:  # noqa: BLE001 - nor can the API being unreachable
        log.warning("could not store the run summary artifact: %s", exc)


def _summarised(run: Callable[[], CycleResult]) -> CycleResult:
    """Run, and leave the summary artifact whether the run completes or fails."""
    try:
        result = run()
    except CycleFailed as failure:
        result = getattr(failure, "result", None)
        if result is not None:
            _summarise(result)
        raise
    if result.status != "skipped":
        _summarise(result)
    return result


def _finish(result: CycleResult) -> Any:
    summary = {
        "job_id": result.job_id,
        "kind": result.kind,
        "status": result.status,
        "rows_in": result.rows_in,
        "rows_rejected": result.rows_rejected,
        "steps": {name: step.as_dict() for name, step in result.steps.items()},
        "publish": result.publish,
        "message": result.message,
    }
    get_run_logger().info(
        "%s %s %s: %s row(s) in, %s",
        result.kind,
        result.job_id,
        result.status,
        result.rows_in,
        ", ".join(f"{k} {v:.1f}s" for k, v in result.step_seconds.items()),
    )
    if result.status == "skipped":
        # Another run holds the lock: recorded as a skipped job; the flow run says so too.
        return Completed(name="Skipped", message=result.message, data=summary)
    return summary


@flow(
    name="processing-cycle",
    timeout_seconds=3600,
    log_prints=True,
    on_failure=[notify_failure],
    on_crashed=[notify_failure],
)
def processing_cycle(
    target: str | None = None,
    source: str | None = None,
    synthetic: dict[str, Any] | None = None,
) -> Any:
    """Load what is new from `source` (files/glob, `synthetic`, `bigquery`; none: only what
    was loaded since the last cycle), gate, dbt build, gate, score, publish, record."""
    triggered_by, run_id = _run_context()
    result = _summarised(
        lambda: run_cycle(
            _target(target),
            source=source,
            synthetic_config=_synthetic_config(synthetic) if source == "synthetic" else None,
            triggered_by=triggered_by,
            flow_run_id=run_id,
            steps=PrefectSteps(),
        )
    )
    return _finish(result)


@flow(
    name="backfill",
    timeout_seconds=24 * 3600,
    log_prints=True,
    on_failure=[notify_failure],
    on_crashed=[notify_failure],
)
def backfill(
    start_date: date,
    end_date: date,
    source: str,
    target: str | None = None,
    chunk_days: int = 1,
    synthetic: dict[str, Any] | None = None,
) -> Any:
    """Load and process `start_date..end_date` (UTC, inclusive) in day chunks; a re-run
    after a kill continues with the first chunk not completed."""
    triggered_by, run_id = _run_context()
    logger = get_run_logger()
    result = _summarised(
        lambda: run_backfill(
            _target(target),
            [source],
            start_date,
            end_date,
            chunk_days=chunk_days,
            synthetic_config=_synthetic_config(synthetic) if source == "synthetic" else None,
            triggered_by=triggered_by,
            flow_run_id=run_id,
            steps=PrefectSteps(),
            on_chunk=lambda s, e, what: logger.info("chunk %s..%s: %s", s, e, what),
        )
    )
    return _finish(result)


@flow(
    name="evaluate-models",
    timeout_seconds=3600,
    log_prints=True,
    on_failure=[notify_failure],
    on_crashed=[notify_failure],
)
def evaluate_models(target: str | None = None) -> Any:
    """Daily: evaluate served predictions whose targets are now observed."""
    triggered_by, run_id = _run_context()
    return _finish(
        run_model_job(
            _target(target),
            "evaluation",
            triggered_by=triggered_by,
            flow_run_id=run_id,
            steps=PrefectSteps(),
        )
    )


@flow(
    name="retrain-models",
    timeout_seconds=3 * 3600,
    log_prints=True,
    on_failure=[notify_failure],
    on_crashed=[notify_failure],
)
def retrain_models(target: str | None = None, model_type: str | None = None) -> Any:
    """Weekly: train challengers and promote those that beat the champion."""
    triggered_by, run_id = _run_context()
    return _finish(
        run_model_job(
            _target(target),
            "retraining",
            model_type=model_type,
            triggered_by=triggered_by,
            flow_run_id=run_id,
            steps=PrefectSteps(),
        )
    )


@flow(
    name="backup-warehouse",
    timeout_seconds=3 * 3600,
    log_prints=True,
    on_failure=[notify_failure],
    on_crashed=[notify_failure],
)
def backup_warehouse(target: str | None = None, keep: int | None = None) -> Any:
    """Daily: back up the warehouse and the model artifacts (flows/pipeline/backup.py, `water backup`)."""
    triggered_by, run_id = _run_context()
    result = backup(_target(target), keep=keep, triggered_by=triggered_by, flow_run_id=run_id)
    get_run_logger().info("backup %s: %s", result.job_id, result.path)
    return {"job_id": result.job_id, "path": str(result.path), "pruned": result.pruned}


def _synthetic_config(options: dict[str, Any] | None):

    return SyntheticConfig(**(options or {}))


ALL_FLOWS = (processing_cycle, backfill, evaluate_models, retrain_models, backup_warehouse)
