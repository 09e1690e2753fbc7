"""The database fallback: parameterised reads of the published tables.

Each function takes an open ReadOnlyWarehouse and returns JSON-ready values. Tables that a
later stage builds (anomalies, network_efficiency, ml_*, processing_jobs) may not exist yet on
a fresh warehouse: the functions then say so (`None` or `available=False`) instead of failing.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from api.jsonable import json_column, jsonable
from api.store import ReadOnlyWarehouse
from flows.config import PUBLISHED_SCHEMA

# The publisher's node-status rules, so the fallback answers exactly as the cache would.
from flows.publish import (
    ALERTING_SEVERITIES,
    ANOMALY_COLUMNS,
    ANOMALY_STATUS_LOOKBACK,
    EFFICIENCY_LATEST,
    EFFICIENCY_LATEST_SQL,
    NETWORK_DISTRICT,
    SERIES_COLUMNS,
    efficiency_entries,
    empty_efficiency_entry,
    node_status,
)

S = PUBLISHED_SCHEMA


def _row(record: dict[str, Any]) -> dict[str, Any]:
    return {k: jsonable(v) for k, v in record.items()}


def exists(wh: ReadOnlyWarehouse, table: str) -> bool:
    return wh.relation_exists(S, table)


# -- nodes -----------------------------------------------------------------------------------
def _alerting_nodes(wh: ReadOnlyWarehouse, now: datetime) -> set[str]:
    if not exists(wh, "anomalies"):
        return set()
    rows = wh.query(
        f"select distinct node_id from {S}.anomalies "
        "where window_start >= %(since)s and severity in (%(sev1)s, %(sev2)s)",
        {
            "since": now - ANOMALY_STATUS_LOOKBACK,
            "sev1": ALERTING_SEVERITIES[0],
            "sev2": ALERTING_SEVERITIES[1],
        },
    )
    return {r[0] for r in rows}


def nodes(wh: ReadOnlyWarehouse, now: datetime) -> list[dict[str, Any]] | None:
    if not exists(wh, "nodes"):
        return None
    alerting = _alerting_nodes(wh, now)
    out = []
    for r in wh.records(
        f"select node_id, node_name, district, balance_role, last_reading_at from {S}.nodes order by node_id"
    ):
        last = r["last_reading_at"]
        if last is not None and last.tzinfo is None:
            last = last.replace(tzinfo=now.tzinfo)
        row = _row(r)
        row["status"] = node_status(last, r["node_id"] in alerting, now)
        out.append(row)
    return out


def node_exists(wh: ReadOnlyWarehouse, node_id: str) -> bool:
    if not exists(wh, "nodes"):
        return False
    return bool(wh.scalar(f"select count(*) from {S}.nodes where node_id = %(n)s", {"n": node_id}))


# -- windowed metrics ------------------------------------------------------------------------
def latest_metrics(wh: ReadOnlyWarehouse, node_id: str, window: str) -> dict[str, Any] | None:
    if not exists(wh, "computed_metrics"):
        return None
    rows = wh.records(
        f"select * from {S}.computed_metrics where node_id = %(n)s and time_window = %(w)s "
        "order by window_start desc limit 1",
        {"n": node_id, "w": window},
    )
    return _row(rows[0]) if rows else None


def latest_window_end(wh: ReadOnlyWarehouse, window: str) -> datetime | None:
    """End of the newest window of this width over all nodes."""
    if not exists(wh, "computed_metrics"):
        return None
    return wh.scalar(
        f"select max(window_end) from {S}.computed_metrics where time_window = %(w)s", {"w": window}
    )


def metrics_history(
    wh: ReadOnlyWarehouse,
    node_id: str,
    window: str,
    start: datetime,
    end: datetime,
    after: datetime | None,
    limit: int,
) -> list[dict[str, Any]]:
    """Rows with start <= window_start < end (and > `after`), oldest first, at most `limit`;
    the columns of the published series, so cache and database answers have one shape."""
    if not exists(wh, "computed_metrics"):
        return []
    params = {"n": node_id, "w": window, "start": start, "end": end, "limit": limit}
    cursor_clause = ""
    if after is not None:
        cursor_clause = "and window_start > %(after)s "
        params["after"] = after
    return [
        _row(r)
        for r in wh.records(
            f"select {', '.join(SERIES_COLUMNS)} from {S}.computed_metrics"
            " where node_id = %(n)s and time_window = %(w)s "
            f"and window_start >= %(start)s and window_start < %(end)s {cursor_clause}"
            "order by window_start limit %(limit)s",
            params,
        )
    ]


def freshness(wh: ReadOnlyWarehouse) -> list[dict[str, Any]] | None:
    """Per node: the latest reading and the end of the latest 5-minute window."""
    if not exists(wh, "nodes"):
        return None
    return [
        _row(r)
        for r in wh.records(
            f"select n.node_id, n.last_reading_at, m.latest_window_end from {S}.nodes as n "
            f"left join (select node_id, max(window_end) as latest_window_end from {S}.computed_metrics "
            "where time_window = '5min' group by node_id) as m on m.node_id = n.node_id "
            "order by n.node_id"
        )
    ]


# -- anomalies -------------------------------------------------------------------------------
def anomalies(
    wh: ReadOnlyWarehouse,
    since: datetime,
    node_id: str | None,
    severity: str | None,
    before: tuple[datetime, str] | None,
    limit: int,
) -> list[dict[str, Any]] | None:
    """Newest first by (window_start, anomaly_id); `before` is the keyset cursor."""
    if not exists(wh, "anomalies"):
        return None
    clauses = ["window_start >= %(since)s"]
    params: dict[str, Any] = {"since": since, "limit": limit}
    if node_id is not None:
        clauses.append("node_id = %(node_id)s")
        params["node_id"] = node_id
    if severity is not None:
        clauses.append("severity = %(severity)s")
        params["severity"] = severity
    if before is not None:
        clauses.append(
            "(window_start < %(b_ts)s or (window_start = %(b_ts)s and cast(anomaly_id as varchar) < %(b_id)s))"
        )
        params["b_ts"], params["b_id"] = before
    rows = wh.records(
        f"select {', '.join(ANOMALY_COLUMNS)} from {S}.anomalies where {' and '.join(clauses)} "
        "order by window_start desc, cast(anomaly_id as varchar) desc limit %(limit)s",
        params,
    )
    out = []
    for r in rows:
        row = _row(r)
        if "details" in r:
            row["details"] = json_column(r["details"])
        out.append(row)
    return out


def anomaly_counts_by_severity(wh: ReadOnlyWarehouse, since: datetime) -> dict[str, int] | None:
    if not exists(wh, "anomalies"):
        return None
    return {
        str(sev): int(n)
        for sev, n in wh.query(
            f"select severity, count(*) from {S}.anomalies where window_start >= %(since)s group by severity",
            {"since": since},
        )
    }


# -- forecasts and efficiency ---------------------------------------------------------------
def predictions(wh: ReadOnlyWarehouse, node_id: str) -> list[dict[str, Any]] | None:
    """The node's newest forecast from each active model, as flows.publish selects it for the
    cache (tests/test_api.py checks that both answers agree)."""
    if not exists(wh, "ml_predictions_cache") or not exists(wh, "ml_models"):
        return None
    return [
        _row(r)
        for r in wh.records(
            "select p.target_timestamp, p.predicted_flow_rate as flow_rate_predicted, p.flow_rate_lower, p.flow_rate_upper,"
            f" p.model_id from {S}.ml_predictions_cache as p"
            f" inner join {S}.ml_models as m on m.model_id = p.model_id and m.status = 'active'"
            " inner join (select model_id, max(prediction_timestamp) as origin"
            f" from {S}.ml_predictions_cache where node_id = %(n)s group by model_id) as newest"
            " on newest.model_id = p.model_id and p.prediction_timestamp = newest.origin"
            " where p.node_id = %(n)s order by p.target_timestamp",
            {"n": node_id},
        )
    ]


def efficiency(wh: ReadOnlyWarehouse) -> dict[str, Any] | None:
    """Latest complete hour and day, and the open ones, of the network and of each district,
    as flows.publish selects them for the cache."""
    if not exists(wh, EFFICIENCY_LATEST):
        return None
    entries = efficiency_entries([_row(r) for r in wh.records(EFFICIENCY_LATEST_SQL)])
    network = entries.pop(NETWORK_DISTRICT, None) or empty_efficiency_entry()
    return {
        "network": network,
        "districts": [{"district": d, **entries[d]} for d in sorted(entries)],
    }


# -- processing jobs -------------------------------------------------------------------------
def job(wh: ReadOnlyWarehouse, job_id: str) -> dict[str, Any] | None:
    """A job by its id, or by the Prefect flow run that carried it out."""
    if not exists(wh, "processing_jobs"):
        return None
    rows = wh.records(
        f"select * from {S}.processing_jobs where cast(job_id as varchar) = %(j)s "
        "or cast(flow_run_id as varchar) = %(j)s order by created_at desc limit 1",
        {"j": job_id},
    )
    return _job(rows[0]) if rows else None


def _job(record: dict[str, Any]) -> dict[str, Any]:
    row = _row(record)
    row["result_summary"] = json_column(record.get("result_summary"))
    return row


def recent_jobs(
    wh: ReadOnlyWarehouse, job_type: str, limit: int = 1, status: str | None = None
) -> list[dict[str, Any]]:
    if not exists(wh, "processing_jobs"):
        return []
    params: dict[str, Any] = {"t": job_type, "limit": limit}
    status_clause = ""
    if status is not None:
        status_clause = "and status = %(s)s "
        params["s"] = status
    return [
        _job(r)
        for r in wh.records(
            f"select * from {S}.processing_jobs where job_type = %(t)s {status_clause}"
            "order by started_at desc nulls last, created_at desc limit %(limit)s",
            params,
        )
    ]
