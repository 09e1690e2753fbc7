"""The contracts other tools read, each defined once: the Redis key layout and snapshot shape,
published column lists, node status rules and staleness, the latest-efficiency read.

The publisher (flows/publish), the API's cache reader and database fallback (api/), the ML
modules and the dashboard all import these; none keeps a copy.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from flows.kernel.settings import PUBLISHED_SCHEMA

# dbt's staging models (views) live here; the gates and the cycle read stg_raw__sensor_readings.
STAGING_SCHEMA = "water_staging"

# -- Redis: key layout (README "Redis"; docs/operations.md) ----------------------------------
SCHEMA_VERSION = 1
REDIS_PREFIX = "water:"
STATUS_KEY = f"{REDIS_PREFIX}status"
NODES_KEY = f"{REDIS_PREFIX}nodes"
KEYS_KEY = f"{REDIS_PREFIX}keys"  # the names of the current snapshot's keys
ANOMALIES_KEY = f"{REDIS_PREFIX}anomalies:recent"
NETWORK_EFFICIENCY_KEY = f"{REDIS_PREFIX}network:efficiency"
DISTRICT_KEY_PREFIX = f"{REDIS_PREFIX}district:"
_DISTRICT_KEY_SUFFIX = ":efficiency"
# network_efficiency's row for the whole network (its other rows are districts).
NETWORK_DISTRICT = "(network)"

SERIES_HOURS = 24
ANOMALY_DAYS = 7
# A node whose newest reading is older than this is `stale` (Redis, API, dashboard).
STALE_AFTER = timedelta(minutes=15)
# `water status` and the API's /status call the data lagging past this (API: WATER_API_STALE_AFTER_S).
FRESHNESS_LAG = timedelta(hours=1)
ANOMALY_STATUS_LOOKBACK = timedelta(hours=1)
ALERTING_SEVERITIES = ("critical", "warning")
ANOMALY_COLUMNS = (
    "anomaly_id",
    "node_id",
    "district",
    "window_start",
    "detected_at",
    "anomaly_type",
    "severity",
    "measurement_type",
    "actual_value",
    "expected_value",
    "deviation_percentage",
    "detection_method",
    "details",
)
FORECAST_HOURS = 24
# A series row carries what a dashboard plots; the full row is in `...:latest` and the API.
SERIES_COLUMNS = (
    "window_start",
    "window_end",
    "reading_count",
    "avg_flow_rate",
    "min_flow_rate",
    "max_flow_rate",
    "avg_pressure",
    "min_pressure",
    "max_pressure",
    "avg_temperature",
    "total_volume",
    "anomaly_count",
    "quality_score",
)


def node_key(node_id: str, suffix: str) -> str:
    return f"{REDIS_PREFIX}node:{node_id}:{suffix}"


def district_key(district: str) -> str:
    return f"{DISTRICT_KEY_PREFIX}{district}{_DISTRICT_KEY_SUFFIX}"


def district_of_key(key: str) -> str:
    """The district named by a `district_key`."""
    return key[len(DISTRICT_KEY_PREFIX) : -len(_DISTRICT_KEY_SUFFIX)]


# -- node status ---------------------------------------------------------------------------
def node_status(last_reading_at: datetime | None, alerting: bool, now: datetime) -> str:
    """ok | stale | anomaly | no_data (the Redis contract's rules)."""
    if last_reading_at is None:
        return "no_data"
    if alerting:
        return "anomaly"
    if now - last_reading_at > STALE_AFTER:
        return "stale"
    return "ok"


# -- latest water balance ------------------------------------------------------------------
# network_efficiency_latest holds, per area and time_window, the latest complete period and
# the open one (period_status complete | partial); the API's database fallback reads it too.
EFFICIENCY_LATEST = "network_efficiency_latest"
# ml_forecast_latest (a dbt view): each node's newest forecast from each active model.
FORECAST_LATEST = "ml_forecast_latest"
EFFICIENCY_LATEST_SQL = (
    f"select * from {PUBLISHED_SCHEMA}.{EFFICIENCY_LATEST} order by district, time_window"
)
_EFFICIENCY_PERIODS = {
    ("1hour", "complete"): "hourly",
    ("1day", "complete"): "daily",
    ("1hour", "partial"): "hourly_partial",
    ("1day", "partial"): "daily_partial",
}


def empty_efficiency_entry() -> dict[str, Any]:
    return dict.fromkeys(_EFFICIENCY_PERIODS.values())


def efficiency_entries(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """district -> {hourly, daily, hourly_partial, daily_partial}: the latest complete hour
    and day, and the open hour and day so far (None when there is none)."""
    out: dict[str, dict[str, Any]] = {}
    for row in rows:
        entry = out.setdefault(row["district"], empty_efficiency_entry())
        entry[_EFFICIENCY_PERIODS[(row["time_window"], row["period_status"])]] = row
    return out
