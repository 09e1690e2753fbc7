"""The BigQuery tier on the offline emulator (crucible): dbt build, late data, the extractor.

The emulator is a real BigQuery-API server backed by DuckDB, started once per session on a free
127.0.0.1 port (tests/bigquery_emulator.py). Where it differs from BigQuery's documented
semantics the project follows BigQuery and the difference is stated where it matters:
- it cannot create partitioned tables, so these tests set WATER_BIGQUERY_PARTITIONS=0 (the
  partition layout, and require_partition_filter, are for real BigQuery; docs/bigquery.md);
- it rejects query parameters, so the extractor renders its one value as a validated literal;
- it reports no bytes scanned and has no dry run, so the cost model is derived from the layout.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pandas as pd
import pytest

from flows.kernel.dbt_runner import run_dbt
from flows.kernel.settings import Target
from flows.kernel.warehouse import connect
from flows.loaders.bigquery import (
    LANDING_TABLE,
    build_extract_query,
    extract_incremental,
    land_new_rows,
    table_path,
)
from flows.loaders.files import DateRange
from flows.loaders.synthetic import SyntheticConfig, generate
from tests.bigquery_emulator import (
    append_rows,
    create_production_table,
    fresh_target,
    query,
    running_emulator,
)

# Processing-time columns: they say when a run happened, not what it computed.
RUN_TIME_COLUMNS = {
    "computed_at",
    "scored_at",
    "detected_at",
    "evaluated_at",
    "rejected_at",
    "created_at",
}
COMPARED = ("computed_metrics", "rejected_readings", "data_quality_metrics", "anomalies")


@pytest.fixture(scope="session")
def bigquery_endpoint(tmp_path_factory):
    with running_emulator(tmp_path_factory.mktemp("bq-emulator") / "crucible.log") as endpoint:
        yield endpoint


@pytest.fixture
def bq_target(bigquery_endpoint, monkeypatch) -> Target:
    """A fresh project on the emulator, configured the way a user would: environment only."""
    target = fresh_target(bigquery_endpoint)
    for key, value in target.dbt_env().items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("WATER_BIGQUERY_PARTITIONS", "0")  # the emulator has no partitions
    create_production_table(target)
    return target


def _hour_now() -> datetime:
    return datetime.now(UTC).replace(minute=0, second=0, microsecond=0)


def _reading(ts, node="N-late", flow=1.5, quality=0.9) -> dict:
    return {
        "timestamp": ts,
        "node_id": node,
        "node_name": node,
        "flow_rate": flow,
        "pressure": 3.0,
        "temperature": 12.0,
        "volume": None,
        "quality_score": quality,
    }


def _published(target: Target, table: str) -> pd.DataFrame:
    # Published tables live in the target's dataset (generate_schema_name), here BIGQUERY_DATASET.
    frame = query(
        target, f"select * from `{target.bigquery_project}.{target.bigquery_dataset}.{table}`"
    )
    frame = frame.drop(columns=[c for c in frame.columns if c in RUN_TIME_COLUMNS])
    return frame.sort_values(list(frame.columns)).reset_index(drop=True)


def test_query_renders_validated_literals_only():
    watermark = datetime(2026, 12, 7, 12, 30, 1, 250000, tzinfo=UTC)
    sql = build_extract_query("my-project-1", "water_raw", watermark)
    assert f"`my-project-1.water_raw.{LANDING_TABLE}`" in sql
    assert "loaded_at > timestamp '2026-12-07 12:30:01.250000+00'" in sql
    assert "where" not in build_extract_query("my-project-1", "water_raw", None)
    for project, dataset in (("my-project-1", "water; drop table x"), ("x", "water_raw")):
        with pytest.raises(ValueError, match="BIGQUERY_"):
            table_path(project, dataset)
    with pytest.raises(ValueError, match="aware"):
        build_extract_query("my-project-1", "water_raw", datetime(2026, 1, 1))


def test_dbt_build_on_bigquery_folds_in_late_rows_and_equals_a_full_rebuild(bq_target):
    now = _hour_now()
    readings = generate(
        SyntheticConfig(nodes=3, days=1, cadence_s=300, seed=11, start=now - timedelta(hours=30))
    )
    readings["timestamp"] = pd.to_datetime(readings["timestamp"], utc=True)
    first = readings[readings["timestamp"] < now - timedelta(hours=10)]
    late_at = now - timedelta(hours=14, minutes=2, seconds=30)
    late = pd.DataFrame([_reading(late_at)])
    future = pd.DataFrame([_reading(datetime(2030, 1, 1, tzinfo=UTC), node="N-2030")])

    append_rows(bq_target, first)
    land_new_rows(bq_target)
    run_dbt(bq_target, "build")  # green on the first run
    # 10 more hours arrive, with a reading 14 h late (after the watermark passed its time)
    # and one dated 2030.
    append_rows(bq_target, pd.concat([readings.drop(first.index), late, future]))
    land_new_rows(bq_target)
    run_dbt(bq_target, "build")  # incremental
    incremental = {name: _published(bq_target, name) for name in COMPARED}

    windows = incremental["computed_metrics"]
    late_window = windows[(windows["node_id"] == "N-late") & (windows["time_window"] == "5min")]
    assert len(late_window) == 1 and late_window["reading_count"].iloc[0] == 1
    assert pd.Timestamp(late_window["window_start"].iloc[0]) == pd.Timestamp(
        late_at - timedelta(seconds=late_at.timestamp() % 300)
    )
    rejected = incremental["rejected_readings"]
    future_rows = rejected[rejected["node_id"] == "N-2030"]
    assert len(future_rows) == 1
    assert "timestamp_in_future" in future_rows["rejection_reasons"].iloc[0]
    # The 2030 row moved no watermark: the network clock is the real one.
    assert pd.Timestamp(windows["window_start"].max()) < pd.Timestamp(now + timedelta(hours=1))

    run_dbt(bq_target, "build", ["--full-refresh"])
    for name in COMPARED:
        pd.testing.assert_frame_equal(incremental[name], _published(bq_target, name), obj=name)


def test_extractor_lands_every_row_once_and_copies_them_across_page_boundaries(
    bq_target, duckdb_target
):
    now = _hour_now()
    t = now - timedelta(hours=3)
    rows = [
        # Six nodes at one timestamp, and a repeat of a (node, timestamp) with another
        # quality: with 2-row pages every boundary falls inside equal timestamps.
        *[_reading(t, node=f"N{i}", flow=float(i)) for i in range(6)],
        _reading(t, node="N0", flow=0.5, quality=0.2),
        _reading(t + timedelta(minutes=1), node="N0", flow=2.0),
        _reading(None, node="N-null"),
        _reading(datetime(1969, 12, 31, 23, tzinfo=UTC), node="N-1969"),
        _reading(datetime(2030, 1, 1, tzinfo=UTC), node="N-2030"),
    ]
    append_rows(bq_target, pd.DataFrame(rows))

    def raw(wh) -> pd.DataFrame:
        return wh.query_df('select node_id, "timestamp", flow_rate from raw.sensor_readings')

    with connect(duckdb_target) as wh:
        pages = extract_incremental(wh, DateRange(), batch_size=2, progress=False)
        assert [p.rows for p in pages] == [2] * (len(rows) // 2) + [1]  # one query, 2-row pages
        got = raw(wh)
        assert len(got) == len(rows)
        assert sorted(zip(got["node_id"], got["flow_rate"], strict=True)) == sorted(
            (r["node_id"], r["flow_rate"]) for r in rows
        )
        # Nothing new: nothing landed, nothing copied.
        assert sum(r.rows for r in extract_incremental(wh, DateRange(), 2, False)) == 0
        assert len(raw(wh)) == len(rows)

        # A reading 14 h late arrives after both runs: landed and copied exactly once.
        late = _reading(now - timedelta(hours=14), node="N-late")
        append_rows(bq_target, pd.DataFrame([late]))
        extract_incremental(wh, DateRange(), batch_size=2, progress=False)
        got = raw(wh)
        assert len(got) == len(rows) + 1
        assert (got["node_id"] == "N-late").sum() == 1

    path = table_path(bq_target.bigquery_project, bq_target.bigquery_dataset, LANDING_TABLE)
    landed = query(bq_target, f"select count(*) as n, count(distinct batch_id) as b from {path}")
    assert (landed["n"].iloc[0], landed["b"].iloc[0]) == (len(rows) + 1, 2)

    run_dbt(duckdb_target, "build", ["--select", "+rejected_readings"])
    with connect(duckdb_target) as wh:
        reasons = dict(
            wh.query(
                "select node_id, rejection_reasons from water_infrastructure.rejected_readings"
            )
        )
    assert "timestamp_in_future" in reasons["N-2030"]
    assert "timestamp_missing" in reasons["N-null"]
    assert "timestamp_too_old" in reasons["N-1969"]
