"""Starting a processing cycle from the API.

With a Prefect server configured (`PREFECT_API_URL`) the trigger creates a flow run of the cycle
deployment (`WATER_CYCLE_DEPLOYMENT`, default `processing-cycle/on-demand` from prefect.yaml)
and returns at once (`run_deployment(..., timeout=0)`); the flow run id is the job id (the cycle
records it in `processing_jobs.flow_run_id`; the run carries the tag `trigger:api`). Without one, the API starts `water cycle`
in a child process of its own (the cycle changes process-wide state such as dbt's environment,
so it does not run in an API thread) and returns the job id it assigned.

A cycle already in progress answers 409: the run lock (flows/pipeline/lock.py) is held (by any process,
scheduled or triggered), or a run this API started has not taken the lock yet, or (Prefect) a
flow run of the deployment is pending or running.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any
from uuid import UUID

from api.settings import ApiSettings
from flows.kernel.jsonable import iso_utc, now_utc
from flows.kernel.runtime import new_job_id
from flows.kernel.settings import PROJECT_ROOT, Target
from flows.pipeline.lock import LOCK_FOR_JOB, lock_is_free

log = logging.getLogger(__name__)

API_TRIGGER_TAG = "trigger:api"
# The cycle needs none of the API's token keys.
CHILD_ENV_EXCLUDED = {"WATER_API_JWT_SECRET", "WATER_API_JWT_PUBLIC_KEY"}


class TriggerFailed(RuntimeError):
    """The cycle could not be started (the reason is logged; clients get a generic message)."""


@dataclass(frozen=True)
class Launch:
    job_id: str
    flow_run_id: str | None = None


@dataclass
class LocalRun:
    job_id: str
    triggered_by: str
    process: subprocess.Popen
    result_path: Path
    created_at: datetime = field(default_factory=now_utc)

    def as_job(self) -> dict[str, Any]:
        """What is known before (or without) a job row: the process state and its outcome."""
        code = self.process.poll()
        job = {
            "job_id": self.job_id,
            "job_type": "cycle",
            "status": "running" if code is None else "failed",
            "triggered_by": self.triggered_by,
            "created_at": iso_utc(self.created_at),
        }
        if code is not None and self.result_path.exists():
            outcome = json.loads(self.result_path.read_text())
            job["status"] = outcome["status"]
            job["error_message"] = outcome["message"] or None
        return job


def cycle_lock_held(target: Target) -> bool:
    return not lock_is_free(target, LOCK_FOR_JOB["cycle"])


class LocalLauncher:
    mode = "local"

    def __init__(self, settings: ApiSettings):
        self.target = settings.target
        self.redis_url = settings.redis_url
        self._runs: dict[str, LocalRun] = {}
        self._lock = threading.Lock()
        self._log_dir = Path(tempfile.mkdtemp(prefix="water-api-cycles-"))

    def busy_job(self) -> str | None:
        """A cycle this API started that is still running (it may not hold the lock yet)."""
        with self._lock:
            for run in self._runs.values():
                if run.process.poll() is None:
                    return run.job_id
        return None

    def launch(self, triggered_by: str) -> Launch:
        job_id = new_job_id()
        # The child works on the API's target and publishes to the Redis the API reads.
        env = {k: v for k, v in os.environ.items() if k not in CHILD_ENV_EXCLUDED}
        env.update(self.target.dbt_env())
        if self.redis_url:
            env["REDIS_URL"] = self.redis_url
        result_path = self._log_dir / f"cycle-{job_id}.json"
        command = [
            sys.executable,
            "-m",
            "api.cycle_worker",
            "--job-id",
            job_id,
            "--triggered-by",
            triggered_by,
            "--result",
            str(result_path),
        ]
        with open(self._log_dir / f"cycle-{job_id}.log", "wb") as out:
            try:
                process = subprocess.Popen(  # noqa: S603 - fixed argv, no shell
                    command,
                    cwd=PROJECT_ROOT,
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,  # a cycle outlives an API restart
                )
            except OSError as exc:
                raise TriggerFailed(f"cannot start the cycle process: {exc}") from exc
        with self._lock:
            self._runs[job_id] = LocalRun(job_id, triggered_by, process, result_path)
        log.info("cycle job %s started locally (pid %s) for %s", job_id, process.pid, triggered_by)
        return Launch(job_id=job_id)

    def pending_job(self, job_id: str) -> dict[str, Any] | None:
        with self._lock:
            run = self._runs.get(job_id)
        return run.as_job() if run else None

    def close(self) -> None:
        with self._lock:
            for run in self._runs.values():
                run.process.poll()


class PrefectLauncher:
    mode = "prefect"

    def __init__(self, settings: ApiSettings):
        self.target = settings.target
        self.deployment = settings.cycle_deployment

    def busy_job(self) -> str | None:
        return None  # asked asynchronously: see busy_flow_run

    async def busy_flow_run(self) -> str | None:
        """A flow run of the cycle deployment that is pending or running, or that this API
        created and that is still scheduled."""
        # Imported when a Prefect server is configured: prefect costs seconds to import.
        from flows.orchestration.trigger import active_flow_run

        return await active_flow_run(self.deployment, API_TRIGGER_TAG)

    async def launch(self, triggered_by: str) -> Launch:
        # Imported when a Prefect server is configured: prefect costs seconds to import.
        from flows.orchestration.trigger import create_flow_run

        run_id = await create_flow_run(
            self.deployment, API_TRIGGER_TAG, {"target": self.target.name}
        )
        log.info("cycle flow run %s created for %s", run_id, triggered_by)
        return Launch(job_id=run_id, flow_run_id=run_id)

    async def pending_job(self, job_id: str) -> dict[str, Any] | None:
        """A flow run not yet recorded in processing_jobs (scheduled, pending, or just started)."""
        # Imported when a Prefect server is configured: prefect costs seconds to import.
        from flows.orchestration.trigger import read_flow_run

        try:
            run_id = UUID(job_id)
        except ValueError:
            return None
        run = await read_flow_run(run_id)
        if run is None:
            return None
        state = run.state_type or "scheduled"
        status = {
            "scheduled": "queued",
            "pending": "queued",
            "running": "running",
            "completed": "completed",
        }.get(state, "failed")
        return {
            "job_id": job_id,
            "job_type": "cycle",
            "status": status,
            "flow_run_id": job_id,
            "prefect_state": run.state_name,
            "created_at": iso_utc(run.created) if run.created else None,
            "started_at": iso_utc(run.start_time) if run.start_time else None,
        }

    def close(self) -> None:
        pass


def make_launcher(settings: ApiSettings) -> LocalLauncher | PrefectLauncher:
    return PrefectLauncher(settings) if settings.prefect_api_url else LocalLauncher(settings)
