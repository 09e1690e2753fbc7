"""anomaly_events on DuckDB and PostgreSQL against an independent pandas grouping of `anomalies`.

A realistic network (pumps, tanks, deadband loggers, meter glitches, leaks and bursts; 24 nodes,
3 weeks, 5-minute cadence) is loaded in two chunks with a dbt run after each. The events dbt
publishes must equal the events recomputed here from the published `anomalies` rows, the node
metadata and the data horizon with the quiet-period, persistence and open/closed rules of
docs/anomalies.md "Events" (parameters read from dbt_project.yml, not copied). Node types must
switch off the detectors whose premise does not hold for them, and re-running changes nothing.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest
import yaml

from flows.kernel.dbt_runner import run_dbt
from flows.kernel.settings import Target
from flows.kernel.warehouse import connect
from flows.loaders.files import DateRange
from flows.loaders.loading import load_synthetic
from flows.loaders.synthetic import SyntheticConfig
from tests.warehouses import fresh_warehouse

MODELS = ["--select", "+anomaly_events"]
CONFIG = SyntheticConfig(
    nodes=24,
    days=21,
    cadence_s=300,
    seed=5,
    start=datetime(2024, 9, 30, tzinfo=UTC),
    profile="realistic",
)
CHUNKS = [(date(2024, 9, 30), date(2024, 10, 13)), (date(2024, 10, 14), date(2024, 10, 20))]
VARS = yaml.safe_load(
    (Path(__file__).resolve().parent.parent / "dbt_project" / "dbt_project.yml").read_text()
)["vars"]
RANK = {"info": 1, "warning": 2, "critical": 3}
IMMEDIATE = {
    "data_gap",
    "sensor_silent",
    "totaliser_reset",
    "totaliser_backwards",
    "night_flow_high",
}
COLUMNS = [
    "event_id",
    "subject",
    "district",
    "anomaly_type",
    "measurement_type",
    "severity",
    "started_at",
    "last_seen_at",
    "ended_at",
    "status",
    "alerted_at",
    "window_count",
    "peak_actual_value",
    "peak_deviation_percentage",
    "typical_actual_value",
]


@dataclass
class Built:
    target: Target
    anomalies: pd.DataFrame
    events: pd.DataFrame
    meta: pd.DataFrame
    horizon: pd.Timestamp


def read(target: Target) -> Built:
    with connect(target) as wh:
        anomalies = wh.query_df("select * from water_infrastructure.anomalies")
        # the district balance's own events (district_leak, district_burst) group no anomalies
        # rows: tests/test_district_balance.py checks them
        events = wh.query_df(
            "select * from water_infrastructure.anomaly_events"
            " where anomaly_type not in ('district_leak', 'district_burst')"
        )
        meta = wh.query_df("select node_id, node_type from water_staging.stg_raw__node_metadata")
        horizon = wh.scalar(
            "select max(last_reading_at) from water_staging.int_metrics_windowed"
            " where time_window = '1day'"
        )
    for frame in (anomalies, events):
        for column in frame.columns:
            if column.endswith("_at") or column == "window_start":
                frame[column] = pd.to_datetime(frame[column], utc=True)
    return Built(target, anomalies, events, meta, pd.Timestamp(horizon).tz_convert(UTC))


@pytest.fixture(scope="module", params=["duckdb", "postgres"])
def built(request, tmp_path_factory) -> Iterator[Built]:
    directory = tmp_path_factory.mktemp(f"events-{request.param}")
    with fresh_warehouse(request.param, directory) as target:
        for first, last in CHUNKS:
            with connect(target) as wh:
                load_synthetic(
                    wh, CONFIG, DateRange(first, last), progress=False, landing_dir=directory
                )
            run_dbt(target, "run", MODELS)
        yield read(target)


def reference_events(b: Built) -> pd.DataFrame:
    """Group the anomalies rows into incidents the plain way: walk each condition's windows."""
    node_type = dict(zip(b.meta.node_id, b.meta.node_type, strict=True))
    night_s = 3600 * (VARS["night_flow_end_hour"] - VARS["night_flow_start_hour"])
    rows = []
    a = b.anomalies.assign(mt=b.anomalies.measurement_type.fillna(""))
    for (subject, kind, mt), g in a.sort_values("window_start").groupby(
        ["node_id", "anomaly_type", "mt"]
    ):
        events: list[list] = []
        for w in g.itertuples():
            night = w.detection_method == "night_flow_baseline"
            end = w.window_start + timedelta(seconds=night_s if night else 300)
            quiet = timedelta(
                seconds=VARS[
                    "anomaly_event_night_quiet_period_s"
                    if night
                    else "anomaly_event_quiet_period_s"
                ]
            )
            if events and w.window_start - quiet <= max(x[1] for x in events[-1]):
                events[-1].append((w, end, quiet))
            else:
                events.append([(w, end, quiet)])
        for ev in events:
            windows = [x[0] for x in ev]
            started = windows[0].window_start
            last_seen = max(x[1] for x in ev)
            quiet = max(x[2] for x in ev)
            duration = (last_seen - started).total_seconds()
            peak_rank = max(RANK[w.severity] for w in windows)
            if kind in IMMEDIATE:
                after = 0
            elif (
                kind == "stuck_sensor"
                and node_type.get(subject) in VARS["anomaly_deadband_node_types"]
            ):
                after = VARS["anomaly_event_stuck_deadband_min_duration_s"]
            elif kind == "stuck_sensor":
                after = VARS["anomaly_event_stuck_min_duration_s"]
            else:
                after = VARS["anomaly_event_min_duration_s"]
            if peak_rank == 3 and (
                after == 0 or duration >= VARS["anomaly_event_critical_min_duration_s"]
            ):
                severity = "critical"
            elif peak_rank >= 2 and duration >= after:
                severity = "warning"
            else:
                severity = "info"
            first_warning = (
                min(end for w, end, _ in ev if RANK[w.severity] >= 2) if peak_rank >= 2 else None
            )
            alerted = (
                max(first_warning, started + timedelta(seconds=after))
                if peak_rank >= 2 and duration >= after
                else None
            )
            peak = sorted(
                windows,
                key=lambda w: (
                    -RANK[w.severity],
                    -abs(w.deviation_percentage if pd.notna(w.deviation_percentage) else 0),
                    w.window_start,
                ),
            )[0]
            closed = b.horizon >= last_seen + quiet
            epoch = int(started.timestamp())
            rows.append(
                {
                    "event_id": hashlib.md5(f"{subject}|{kind}|{mt}|{epoch}".encode()).hexdigest(),
                    "subject": subject,
                    "district": windows[0].district,
                    "anomaly_type": kind,
                    "measurement_type": mt or None,
                    "severity": severity,
                    "started_at": started,
                    "last_seen_at": last_seen,
                    "ended_at": last_seen if closed else pd.NaT,
                    "status": "closed" if closed else "open",
                    "alerted_at": alerted if alerted is not None else pd.NaT,
                    "window_count": len(windows),
                    "peak_actual_value": peak.actual_value,
                    "peak_deviation_percentage": peak.deviation_percentage,
                    "typical_actual_value": pd.Series([w.actual_value for w in windows]).median(),
                }
            )
    return pd.DataFrame(rows)


def normalised(frame: pd.DataFrame) -> pd.DataFrame:
    out = frame[COLUMNS].sort_values("event_id").reset_index(drop=True)
    for column in ("started_at", "last_seen_at", "ended_at", "alerted_at"):
        out[column] = pd.to_datetime(out[column], utc=True)
    for column in ("peak_actual_value", "peak_deviation_percentage", "typical_actual_value"):
        out[column] = out[column].astype(float)
    out["window_count"] = out["window_count"].astype(int)
    out["measurement_type"] = (
        out["measurement_type"].astype(object).where(out["measurement_type"].notna(), None)
    )
    return out


def test_events_equal_an_independent_grouping_of_the_anomalies(built):
    assert len(built.anomalies) > 100 and len(built.events) > 10
    expected = reference_events(built)
    pd.testing.assert_frame_equal(
        normalised(built.events), normalised(expected), check_dtype=False, rtol=1e-9
    )
    # the grouping is not trivial: some events span many windows, some conditions recur
    assert built.events.window_count.max() > 3
    assert built.events.duplicated(["subject", "anomaly_type", "measurement_type"]).any()
    # ... and the persistence rules decide: short events stay info, lasting ones alarm
    assert {"info", "warning"} <= set(built.events.severity)
    assert (built.events.severity == "info").sum() > (built.events.severity != "info").sum()


def test_node_types_switch_off_detectors_whose_premise_does_not_hold(built):
    kinds = built.anomalies.merge(built.meta, on="node_id")
    pumps = kinds[kinds.node_type == "pump"]
    tanks = kinds[kinds.node_type == "tank"]
    assert not pumps[
        pumps.detection_method.isin(["robust_zscore", "step_change"])
        & (pumps.measurement_type == "flow_rate")
    ].size
    assert not kinds[
        kinds.node_type.isin(["pump", "tank"])
        & kinds.detection_method.isin(["robust_zscore", "step_change"])
        & (kinds.measurement_type == "pressure")
    ].size
    # the gated nodes are still watched by the detectors that apply to them
    assert len(built.meta[built.meta.node_type.isin(["pump", "tank"])]) >= 4
    assert len(pumps) + len(tanks) > 0


def test_rerunning_changes_nothing(built):
    run_dbt(built.target, "run", MODELS)
    again = read(built.target)
    pd.testing.assert_frame_equal(
        normalised(built.events), normalised(again.events), check_dtype=False
    )
