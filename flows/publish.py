"""Publish a cycle's hot results to Redis: read the warehouse, write one atomic snapshot.

Key layout (binding contract, also in docs/operations.md): everything under `water:`,
JSON strings except the anomaly sorted set, every key with TTL `WATER_REDIS_TTL_S`.
The whole snapshot goes out in ONE `MULTI/EXEC` transaction, which also deletes the keys of
the previous snapshot that this one no longer has (their names are kept in `water:keys`,
watched with WATCH so two publishers can never interleave). A reader therefore sees the
previous cycle or the new one, never a mix.

Time references: node status and anomaly windows follow the wall clock (as the API's
database fallback does); the 24-hour series end at `latest_window_end`, the newest 5-minute
window in the warehouse, so a replayed or delayed feed still shows its last day.
"""

from __future__ import annotations

import io
import re
import time
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc
import redis
from pyarrow import csv as pa_csv

from flows.config import PUBLISHED_SCHEMA, Target
from flows.jobs import in_list, open_warehouse
from flows.redis_conn import cache_ttl_seconds, connect_redis
from flows.warehouse import Warehouse

S = PUBLISHED_SCHEMA
SCHEMA_VERSION = 1
STATUS_KEY = "water:status"
NODES_KEY = "water:nodes"
KEYS_KEY = "water:keys"
ANOMALIES_KEY = "water:anomalies:recent"
NETWORK_EFFICIENCY_KEY = "water:network:efficiency"
# network_efficiency's row for the whole network (its other rows are districts).
NETWORK_DISTRICT = "(network)"

SERIES_HOURS = 24
ANOMALY_DAYS = 7
STALE_AFTER = timedelta(minutes=15)
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

_JSON_OPTIONS = orjson.OPT_UTC_Z | orjson.OPT_NAIVE_UTC | orjson.OPT_SERIALIZE_NUMPY
_NAMED = re.compile(r"%\((\w+)\)s")


def node_key(node_id: str, suffix: str) -> str:
    return f"water:node:{node_id}:{suffix}"


def district_key(district: str) -> str:
    return f"water:district:{district}:efficiency"


@dataclass
class Snapshot:
    """Everything one cycle publishes, already encoded."""

    cycle_id: str
    status: dict[str, Any]
    strings: dict[str, bytes] = field(default_factory=dict)
    anomalies: dict[bytes, float] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)  # part -> why it is not published

    @property
    def keys(self) -> list[str]:
        keys = [*self.strings, KEYS_KEY]
        if self.anomalies:
            keys.append(ANOMALIES_KEY)
        return sorted(keys)

    @property
    def size_bytes(self) -> int:
        return sum(len(v) for v in self.strings.values()) + sum(len(m) for m in self.anomalies)


@dataclass
class PublishResult:
    cycle_id: str
    keys: int
    bytes: int
    removed_keys: int
    read_s: float
    write_s: float
    skipped: dict[str, str]

    def summary(self) -> dict[str, Any]:
        return {
            "status": "published",
            "keys": self.keys,
            "bytes": self.bytes,
            "removed_keys": self.removed_keys,
            "read_s": round(self.read_s, 3),
            "write_s": round(self.write_s, 3),
            "skipped": self.skipped,
        }


def publish(
    target: Target,
    cycle_id: str,
    client: redis.Redis | None = None,
    ttl_s: int | None = None,
) -> PublishResult:
    """Build the snapshot from the warehouse and write it to Redis atomically."""
    t0 = time.perf_counter()
    with open_warehouse(target) as wh:
        snapshot = build_snapshot(wh, cycle_id, target_name=target.name)
    t1 = time.perf_counter()
    client = client or connect_redis()
    removed = write_snapshot(client, snapshot, ttl_s or cache_ttl_seconds())
    t2 = time.perf_counter()
    return PublishResult(
        cycle_id=cycle_id,
        keys=len(snapshot.keys),
        bytes=snapshot.size_bytes,
        removed_keys=removed,
        read_s=t1 - t0,
        write_s=t2 - t1,
        skipped=snapshot.skipped,
    )


# --------------------------------------------------------------------------- reading


def build_snapshot(
    wh: Warehouse, cycle_id: str, target_name: str, now: datetime | None = None
) -> Snapshot:
    now = now or datetime.now(UTC)
    published_at = now
    snap = Snapshot(cycle_id=cycle_id, status={})
    if not wh.relation_exists(S, "computed_metrics") or not wh.relation_exists(S, "nodes"):
        raise PublishError("nothing to publish yet: computed_metrics / nodes are not built")

    latest_window_end = _as_utc(
        wh.scalar(f"select max(window_end) from {S}.computed_metrics where time_window = '5min'")
    )
    nodes = _records(
        wh,
        f"select node_id, node_name, district, balance_role, last_reading_at from {S}.nodes order by node_id",
    )

    anomalies = _recent_anomalies(wh, now, snap)
    alerting = {
        a["node_id"]
        for a in anomalies
        if a.get("severity") in ALERTING_SEVERITIES
        and a.get("window_start") is not None
        and _as_utc(a["window_start"]) >= now - ANOMALY_STATUS_LOOKBACK
    }

    series: dict[str, bytes] = {}
    latest: dict[str, dict[str, Any]] = {}
    if latest_window_end is not None:
        since = latest_window_end - timedelta(hours=SERIES_HOURS)
        series = _series_blobs(wh, since)
        # The latest full row per node; nodes quiet for over a day are looked up the same way.
        for row in _records(
            wh,
            "select * from (select m.*, row_number() over"
            " (partition by node_id order by window_start desc) as publish_rank"
            f" from {S}.computed_metrics as m where time_window = '5min'"
            f" and (window_start >= %(since)s or {in_list('node_id', 'quiet', wh.type)})) as ranked"
            " where publish_rank = 1",
            {
                "since": since,
                "quiet": [
                    n["node_id"]
                    for n in nodes
                    if n["last_reading_at"] and n["node_id"] not in series
                ]
                or [""],
            },
        ):
            row.pop("publish_rank", None)
            latest[row["node_id"]] = row

    node_entries = []
    for node in nodes:
        node_id = node["node_id"]
        status = node_status(_as_utc(node["last_reading_at"]), node_id in alerting, now)
        node_entries.append({**node, "status": status})
        if node_id in latest:
            snap.strings[node_key(node_id, "latest")] = _dumps(
                {**latest[node_id], "status": status}
            )
        if node_id in series:
            snap.strings[node_key(node_id, "series:5min")] = series[node_id]
    snap.strings[NODES_KEY] = _dumps(node_entries)

    for node_id, rows in _forecasts(wh, now, snap).items():
        snap.strings[node_key(node_id, "forecast")] = _dumps(rows)
    for key, value in _efficiency(wh, snap).items():
        snap.strings[key] = _dumps(value)
    for anomaly in anomalies:
        snap.anomalies[_dumps(anomaly)] = _as_utc(anomaly["window_start"]).timestamp()

    day_ago = now - timedelta(hours=24)
    snap.status = {
        "cycle_id": cycle_id,
        "published_at": published_at,
        "target": target_name,
        "nodes": len(nodes),
        "anomalies_24h": sum(1 for a in anomalies if _as_utc(a["window_start"]) >= day_ago),
        "latest_window_end": latest_window_end,
        "schema_version": SCHEMA_VERSION,
    }
    snap.strings[STATUS_KEY] = _dumps(snap.status)
    return snap


def node_status(last_reading_at: datetime | None, alerting: bool, now: datetime) -> str:
    """ok | stale | anomaly | no_data (the Redis contract's rules)."""
    if last_reading_at is None:
        return "no_data"
    if alerting:
        return "anomaly"
    if now - last_reading_at > STALE_AFTER:
        return "stale"
    return "ok"


def _recent_anomalies(wh: Warehouse, now: datetime, snap: Snapshot) -> list[dict[str, Any]]:
    if not wh.relation_exists(S, "anomalies"):
        snap.skipped["anomalies"] = f"{S}.anomalies does not exist yet"
        return []
    return _records(
        wh,
        f"select {', '.join(ANOMALY_COLUMNS)} from {S}.anomalies"
        " where window_start >= %(since)s order by window_start, anomaly_id",
        {"since": now - timedelta(days=ANOMALY_DAYS)},
    )


def _forecasts(wh: Warehouse, now: datetime, snap: Snapshot) -> dict[str, list[dict[str, Any]]]:
    """Each node's newest 24-hour forecast from the active flow model (absent without one)."""
    for table in ("ml_predictions_cache", "ml_models"):
        if not wh.relation_exists(S, table):
            snap.skipped["forecast"] = f"{S}.{table} does not exist yet"
            return {}
    rows = _records(
        wh,
        "select p.node_id, p.target_timestamp, p.predicted_flow_rate as flow_rate_predicted, p.flow_rate_lower,"
        " p.flow_rate_upper, p.model_id"
        f" from {S}.ml_predictions_cache as p"
        f" inner join {S}.ml_models as m on m.model_id = p.model_id and m.status = 'active'"
        " inner join (select node_id, model_id, max(prediction_timestamp) as origin"
        f" from {S}.ml_predictions_cache group by node_id, model_id) as newest"
        " on newest.node_id = p.node_id and newest.model_id = p.model_id"
        " and p.prediction_timestamp = newest.origin"
        " order by p.node_id, p.target_timestamp",
    )
    if not rows:
        snap.skipped["forecast"] = "no forecasts from an active model"
    out: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        out[row.pop("node_id")].append(row)
    return out


# network_efficiency_latest holds, per area and time_window, the latest complete period and
# the open one (period_status complete | partial); the API's database fallback reads it too.
EFFICIENCY_LATEST = "network_efficiency_latest"
EFFICIENCY_LATEST_SQL = f"select * from {S}.{EFFICIENCY_LATEST} order by district, time_window"
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


def _efficiency(wh: Warehouse, snap: Snapshot) -> dict[str, dict[str, Any]]:
    """The water balance per district and for the whole network (efficiency_entries)."""
    if not wh.relation_exists(S, EFFICIENCY_LATEST):
        snap.skipped["efficiency"] = f"{S}.{EFFICIENCY_LATEST} does not exist yet"
        return {}
    entries = efficiency_entries(_records(wh, EFFICIENCY_LATEST_SQL))
    return {
        NETWORK_EFFICIENCY_KEY if district == NETWORK_DISTRICT else district_key(district): entry
        for district, entry in entries.items()
    }


# --------------------------------------------------------------------------- series encoding
# The 24-hour series are most of a snapshot (500 nodes x 288 rows). They are encoded column-
# wise in Arrow instead of row by row in Python: each value becomes its JSON text, rows are
# joined element-wise, and each node's rows are concatenated into one JSON array.

_TIMESTAMP_SERIES_COLUMNS = ("window_start", "window_end")
_NON_FINITE_TEXT = ("NaN", "Infinity", "-Infinity", "nan", "inf", "-inf")


def _series_blobs(wh: Warehouse, since: datetime) -> dict[str, bytes]:
    """node_id -> JSON array (bytes) of its 5-minute rows since `since`, oldest first."""
    sql = (
        f"select node_id, {', '.join(SERIES_COLUMNS)} from {S}.computed_metrics"
        " where time_window = '5min' and window_start >= %(since)s order by node_id, window_start"
    )
    table = _fetch_arrow(wh, sql, {"since": since})
    if table.num_rows == 0:
        return {}
    pieces: list[Any] = []
    for i, name in enumerate(SERIES_COLUMNS):
        pieces.append(("{" if i == 0 else ",") + orjson.dumps(name).decode() + ":")
        pieces.append(pc.fill_null(_json_texts(table[name], name), "null"))
    pieces.append("}")
    rows = pc.binary_join_element_wise(*pieces, "")
    # rows are sorted by node: one list per run of equal node_id, joined in Arrow
    runs = pc.run_end_encode(table["node_id"].combine_chunks())
    offsets = pa.array(np.concatenate([[0], runs.run_ends.to_numpy()]), type=pa.int32())
    per_node = pa.ListArray.from_arrays(offsets, rows.combine_chunks())
    arrays = pc.binary_join_element_wise("[", pc.binary_join(per_node, ","), "]", "")
    blobs = pc.cast(arrays, pa.binary()).to_pylist()  # bytes straight from Arrow's buffers
    return dict(zip(runs.values.to_pylist(), blobs, strict=True))


def _json_texts(values: pa.ChunkedArray, name: str) -> pa.ChunkedArray:
    """Each value as its JSON text (nulls stay null)."""
    if name in _TIMESTAMP_SERIES_COLUMNS:
        # Few distinct window starts: format each once, then index.
        encoded = pc.dictionary_encode(values).combine_chunks()
        texts = [_iso_z(v) for v in encoded.dictionary.to_pylist()]
        return pc.take(pa.array(texts, pa.string()), encoded.indices)
    if not pa.types.is_string(values.type):
        values = pc.cast(values, pa.string())  # shortest round-trip text, as orjson prints
    return pc.if_else(
        pc.is_in(values, pa.array(_NON_FINITE_TEXT)), pa.scalar(None, pa.string()), values
    )


def _iso_z(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, str):  # PostgreSQL text, e.g. '2025-06-04 00:05:00+00'
        value = datetime.fromisoformat(value)
    return orjson.dumps(value, option=_JSON_OPTIONS).decode()


def _fetch_arrow(wh: Warehouse, sql: str, params: dict[str, Any]) -> pa.Table:
    """A query's result as Arrow. PostgreSQL: its own text for each value, via CSV COPY."""
    if wh.type == "duckdb":
        return wh.raw_connection.sql(_NAMED.sub(r"$\1", sql), params=params).to_arrow_table()
    buffer = io.BytesIO()
    with (
        wh.raw_connection.cursor() as cur,
        cur.copy(f"copy ({sql}) to stdout with (format csv, header true)", params) as copy,
    ):
        for chunk in copy:
            buffer.write(chunk)
    buffer.seek(0)
    header = buffer.readline().decode().strip().split(",")
    return pa_csv.read_csv(
        buffer,
        read_options=pa_csv.ReadOptions(column_names=header),
        convert_options=pa_csv.ConvertOptions(
            column_types=dict.fromkeys(header, pa.string()),
            strings_can_be_null=True,
            null_values=[""],
        ),
    )


# --------------------------------------------------------------------------- writing


def write_snapshot(client: redis.Redis, snap: Snapshot, ttl_s: int) -> int:
    """One MULTI/EXEC: set every key with its TTL, drop keys the new snapshot no longer has.

    Returns how many stale keys were removed.
    """
    new_keys = snap.keys
    keys_blob = _dumps(new_keys)
    while True:
        with client.pipeline(transaction=True) as pipe:
            try:
                pipe.watch(KEYS_KEY)
                previous = pipe.get(KEYS_KEY)
                old_keys = set(orjson.loads(previous)) if previous else set()
                stale = sorted(old_keys - set(new_keys))
                pipe.multi()
                if stale:
                    pipe.delete(*stale)
                for key, value in snap.strings.items():
                    pipe.set(key, value, ex=ttl_s)
                pipe.delete(ANOMALIES_KEY)
                if snap.anomalies:
                    pipe.zadd(ANOMALIES_KEY, snap.anomalies)
                    pipe.expire(ANOMALIES_KEY, ttl_s)
                pipe.set(KEYS_KEY, keys_blob, ex=ttl_s)
                pipe.execute()
                return len(stale)
            except redis.WatchError:
                continue  # another publisher changed the key set meanwhile: recompute


class PublishError(RuntimeError):
    """The snapshot cannot be built (nothing published yet, or a table is unreadable)."""


# --------------------------------------------------------------------------- helpers


def _records(wh: Warehouse, sql: str, params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Rows as dicts (column names from the driver), for both engines."""
    con = wh.raw_connection
    if wh.type == "duckdb":
        result = con.execute(_NAMED.sub(r"$\1", sql), params or None)
        columns = [d[0] for d in result.description]
        rows = result.fetchall()
    else:
        with con.cursor() as cur:
            cur.execute(sql, params)
            columns = [d.name for d in cur.description]
            rows = cur.fetchall()
    return [dict(zip(columns, row, strict=True)) for row in rows]


def _dumps(value: Any) -> bytes:
    return orjson.dumps(value, default=_default, option=_JSON_OPTIONS)


def _default(value: Any) -> Any:
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, datetime):  # pandas Timestamp and other subclasses
        return datetime.fromisoformat(value.isoformat())
    raise TypeError(f"cannot publish a value of type {type(value).__name__}")


def _as_utc(value: Any) -> datetime | None:
    if value is None:
        return None
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)
