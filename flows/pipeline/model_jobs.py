"""Model jobs: `evaluation` (ml.evaluation.evaluate) and `retraining` (ml.training.train)."""

from __future__ import annotations

import logging

from flows.kernel.dbt_runner import DbtError, run_dbt, test_scope
from flows.kernel.jsonable import jsonable
from flows.kernel.runtime import utcnow
from flows.kernel.settings import Target
from flows.kernel.warehouse import open_warehouse
from flows.pipeline.jobs import (
    finish_job,
)
from flows.pipeline.results import CycleResult, StepRecord
from flows.pipeline.run import Run
from flows.pipeline.steps import CYCLE_DBT_ARGS
from ml.evaluation import evaluate
from ml.training import train

log = logging.getLogger("water.cycle")


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
    run = Run(target, kind, steps, triggered_by, flow_run_id)
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

    return StepRecord("ok", detail={"result": jsonable(evaluate(target))})


def full_data_tests(target: Target) -> StepRecord:
    """Every dbt data test on whole tables (no cycle scope); a failure fails the job."""
    with test_scope(None, None):
        outcome = run_dbt(target, "test", list(CYCLE_DBT_ARGS), raise_on_failure=False)
    if not outcome.success:
        raise DbtError("full-table data tests failed: " + "; ".join(outcome.failures))
    return StepRecord("ok", detail={"tests": len(outcome.node_timings)})


def _train(target: Target, model_type: str | None) -> StepRecord:

    return StepRecord("ok", detail={"result": jsonable(train(target, model_type=model_type))})
