"""The child process a local API trigger starts: one processing cycle with the job id the API
already returned to its caller.

    python -m api.cycle_worker --job-id ID --triggered-by WHO --result FILE

The target comes from the environment the API passes down (`Target.dbt_env()`), Redis from
`REDIS_URL`. The outcome (completed | skipped | failed, one-line message) is written to FILE
so the API can report it even when no job row exists (a run that lost the lock race).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from flows.kernel.settings import load_settings
from flows.pipeline.cycle import run_cycle


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="api.cycle_worker")
    parser.add_argument("--job-id", required=True)
    parser.add_argument("--triggered-by", required=True)
    parser.add_argument("--result", required=True, type=Path)
    args = parser.parse_args(argv)

    outcome = {"job_id": args.job_id, "status": "failed", "message": ""}
    try:
        result = run_cycle(
            load_settings().target(), triggered_by=args.triggered_by, job_id=args.job_id
        )
        outcome.update(job_id=result.job_id, status=result.status, message=result.message)
    except Exception as exc:  # noqa: BLE001 - the job row holds the details; keep one line here
        outcome["message"] = " ".join(str(exc).split())[:500] or type(exc).__name__
    partial = args.result.with_suffix(".partial")
    partial.write_text(json.dumps(outcome))
    partial.replace(args.result)
    return 0 if outcome["status"] != "failed" else 1


if __name__ == "__main__":
    sys.exit(main())
