"""The processing cycle: the code every entry point runs (backfill.py and model_jobs.py beside it).

`water cycle`, `water load --process`, `water train/evaluate` and the Prefect flows in
`flows/orchestration/flows.py` all call the functions here; only the *step runner* differs:

* `DirectSteps` (CLI, tests, demo) calls each step in-process and retries transient
  database/Redis errors itself. No Prefect server, no 10-15 s ephemeral start-up.
* `flows.orchestration.flows.PrefectSteps` runs each step as a Prefect task (retries with exponential
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

import logging
from collections.abc import Sequence

from flows.kernel.settings import Target
from flows.pipeline.results import CycleResult
from flows.pipeline.run import Run, complete, process_scope

log = logging.getLogger("water.cycle")


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
    run = Run(target, "cycle", steps, triggered_by, flow_run_id)
    run.job_id = job_id
    if not run.begin(lock_wait_s):
        return run.result
    with run.closing():
        sources = [source] if isinstance(source, str) else list(source or [])
        if sources:
            run.step("load", run.load, sources, None, None, synthetic_config)
        scope = run.step("scope", run.scope)
        process_scope(run, scope)
        run.step("ml_scoring", run.score)
        run.publish(publish_to_redis, redis_client)
        complete(run, scope)
    return run.result
