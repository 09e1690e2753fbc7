"""What a run tells its operator: a markdown summary (a Prefect artifact per cycle) and the
failure notification posted to `WATER_NOTIFY_URL`. Plain functions, no Prefect imports."""

from __future__ import annotations

import json
import logging
import os
import urllib.error
import urllib.request
from typing import Any

from flows.kernel.settings import PUBLISHED_SCHEMA, Target
from flows.kernel.warehouse import open_warehouse

log = logging.getLogger("water.report")

NOTIFY_URL_ENV = "WATER_NOTIFY_URL"
NOTIFY_TIMEOUT_S = 10.0
GATE_STEPS = ("raw_gate", "marts_gate")


def new_anomalies(target: Target, since) -> dict[str, int]:
    """Anomalies first detected at or after `since`, by severity ({} before the mart exists)."""

    with open_warehouse(target) as wh:
        if not wh.relation_exists(PUBLISHED_SCHEMA, "anomalies"):
            return {}
        sql = f"select severity, count(*) from {PUBLISHED_SCHEMA}.anomalies"  # noqa: S608
        rows = wh.query(
            sql + " where detected_at >= %(since)s group by severity order by severity",
            {"since": since},
        )
    return {str(severity): int(n) for severity, n in rows}


def run_markdown(result, anomalies: dict[str, int] | None = None) -> str:
    """The run's summary: rows, gates, anomalies, publish (result: flows.pipeline.results.CycleResult)."""
    lines = [
        f"# {result.kind} `{result.cycle_id}`: {result.status}",
        "",
        f"- target: {result.target}; {result.duration_seconds:.1f} s",
        f"- rows loaded: {result.rows_in:,} (rejected to quarantine: {result.rows_rejected:,})",
    ]
    if result.message:
        lines.append(f"- message: {result.message}")
    lines += ["", "## Quality gates", "", "| gate | status | critical failures | warnings |"]
    lines.append("|---|---|---|---|")
    for name in GATE_STEPS:
        step = result.steps.get(name)
        if step is None:
            lines.append(f"| {name} | not run | | |")
            continue
        critical = step.detail.get("critical_failures") or []
        warnings = step.detail.get("warnings") or []
        reason = step.detail.get("reason") or step.detail.get("error") or ""
        status = step.status + (f" ({reason})" if reason and step.status != "ok" else "")
        lines.append(
            f"| {name} | {status} | {_cell(critical)} | {_cell(warnings)} |".replace("\n", " ")
        )
    lines += ["", "## Anomalies detected in this run", ""]
    if anomalies:
        lines += [f"- {severity}: {n}" for severity, n in sorted(anomalies.items())]
    else:
        lines.append("- none")
    publish = result.publish or {}
    lines += ["", "## Publish", ""]
    if publish.get("status") == "published":
        lines.append(f"- published {publish['keys']} Redis key(s), {publish['bytes']:,} bytes")
    elif publish:
        detail = publish.get("error") or ""
        lines.append(f"- {publish.get('status')}" + (f": {detail}" if detail else ""))
    else:
        lines.append("- not published (the run stopped before)")
    lines += ["", "## Steps", "", "| step | status | seconds |", "|---|---|---|"]
    lines += [f"| {n} | {s.status} | {s.seconds:.2f} |" for n, s in result.steps.items()]
    return "\n".join(lines) + "\n"


def _cell(items: list[Any]) -> str:
    if not items:
        return "0"
    shown = ", ".join(str(i) for i in items[:5])
    return f"{len(items)}: {shown}" + (" …" if len(items) > 5 else "")


def failure_payload(
    flow_name: str,
    run_name: str,
    run_id: str,
    state_name: str,
    message: str,
    failed_step: str | None,
    ui_url: str | None = None,
) -> dict[str, Any]:
    """JSON of a failure notification; `text` makes it readable in Slack/Teams webhooks."""
    kind = "gate_blocked" if failed_step in GATE_STEPS else "failed"
    what = "blocked by a quality gate" if kind == "gate_blocked" else state_name.lower()
    text = f"water-infrastructure: {flow_name} run {run_name} {what}: {message}"
    return {
        "event": "water.run_failed",
        "kind": kind,
        "flow": flow_name,
        "flow_run_id": run_id,
        "flow_run_name": run_name,
        "state": state_name,
        "failed_step": failed_step,
        "message": message,
        "ui_url": ui_url,
        "text": text + (f" ({ui_url})" if ui_url else ""),
    }


def notify(payload: dict[str, Any], url: str | None = None) -> bool:
    """POST the payload as JSON to `url` (default $WATER_NOTIFY_URL). False when no URL is
    configured or the receiver failed; a notification never fails the run it reports."""
    url = url or os.environ.get(NOTIFY_URL_ENV, "").strip()
    if not url:
        return False
    request = urllib.request.Request(  # noqa: S310 - an operator-configured URL
        url,
        data=json.dumps(payload, default=str).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=NOTIFY_TIMEOUT_S) as response:  # noqa: S310
            return 200 <= response.status < 300
    except (urllib.error.URLError, OSError, ValueError) as exc:
        log.warning("failure notification failed: %s", exc)  # the URL may hold a token
        return False
