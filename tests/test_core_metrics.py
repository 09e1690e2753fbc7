"""computed_metrics against an independent pandas computation, on both engines.

Also: a late batch plus re-runs equals loading everything at once, and every input row is
accounted for (valid + rejected + removed repeats).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pytest

from flows.kernel.warehouse import connect
from flows.loaders.files import load_files
from flows.loaders.nodes import upsert_nodes
from flows.loaders.synthetic import Fault, SyntheticConfig, generate, node_metadata
from flows.pipeline.cycle import run_cycle
from tests.reference import WINDOW_CLOSE_GRACE, reference_metrics, row_accounting

START = datetime(2024, 3, 30, tzinfo=UTC)  # spans the Europe/Rome DST switch of 2024-03-31
KEY = ["node_id", "time_window", "window_start"]
COMPARED = [
    "reading_count",
    "avg_flow_rate",
    "min_flow_rate",
    "max_flow_rate",
    "avg_pressure",
    "min_pressure",
    "max_pressure",
    "avg_temperature",
    "total_volume",
    "quality_score",
    "window_end",
]


def _config() -> SyntheticConfig:
    t = START
    return SyntheticConfig(
        nodes=7,
        days=2,
        cadence_s=60,
        seed=11,
        start=t,
        bad_rows=33,
        faults=(
            Fault("totaliser_reset", "N0002", t + timedelta(hours=5)),
            Fault("gap", "N0003", t + timedelta(hours=7), t + timedelta(hours=9, minutes=13)),
            Fault("stuck", "N0004", t + timedelta(hours=20), t + timedelta(hours=23)),
            Fault("burst", "N0002", t + timedelta(hours=30), t + timedelta(hours=31)),
            Fault(
                "totaliser_backwards",
                "N0001",
                t + timedelta(hours=12),
                t + timedelta(hours=12, minutes=30),
            ),
            Fault("reverse_flow", "N0005", t + timedelta(hours=40), t + timedelta(hours=41)),
        ),
    )


@pytest.fixture(scope="module")
def readings() -> pd.DataFrame:
    return generate(_config())


def _write(frame: pd.DataFrame, path) -> str:
    frame.reset_index(drop=True).to_parquet(path, index=False)
    return str(path)


def _published(target) -> pd.DataFrame:
    with connect(target) as wh:
        frame = wh.query_df("select * from water_infrastructure.computed_metrics")
    frame["window_start"] = pd.to_datetime(frame["window_start"], utc=True)
    frame["window_end"] = pd.to_datetime(frame["window_end"], utc=True)
    return frame


def _raw(target) -> pd.DataFrame:
    with connect(target) as wh:
        return wh.query_df("select * from raw.sensor_readings")


def _register_nodes(target) -> dict[str, int]:
    meta = node_metadata(_config())
    with connect(target) as wh:
        upsert_nodes(wh, meta)
    return dict(zip(meta["node_id"], meta["expected_cadence_s"], strict=True))


def _assert_same_metrics(actual: pd.DataFrame, expected: pd.DataFrame) -> None:
    merged = expected.merge(actual, on=KEY, how="outer", suffixes=("_ref", ""), indicator=True)
    missing = merged[merged["_merge"] != "both"]
    assert missing.empty, (
        f"{len(missing)} windows differ in presence:\n{missing[KEY + ['_merge']].head()}"
    )
    for column in COMPARED:
        ref, got = merged[f"{column}_ref"], merged[column]
        if column == "window_end":
            assert (ref == got).all()
            continue
        ref = pd.to_numeric(ref, errors="coerce").astype(float)
        got = pd.to_numeric(got, errors="coerce").astype(float)
        assert (ref.isna() == got.isna()).all(), f"{column}: null pattern differs"
        both = ref.notna()
        np.testing.assert_allclose(got[both], ref[both], rtol=1e-9, atol=1e-9, err_msg=column)


def test_computed_metrics_match_an_independent_computation(target, readings, tmp_path):
    cadences = _register_nodes(target)
    with connect(target) as wh:
        load_files(wh, [_write(readings, tmp_path / "all.parquet")], progress=False)
    run_cycle(target)

    expected = reference_metrics(_raw(target), cadences)
    actual = _published(target)
    assert set(actual["time_window"]) == {"5min", "1hour", "1day"}
    _assert_same_metrics(actual, expected)
    # the totaliser is never summed: a day's volume is the delivered volume, far below the counter
    day = actual[actual["time_window"] == "1day"]
    assert (day["total_volume"].dropna() < 1000).all()


def test_late_batch_and_reruns_equal_loading_everything_at_once(
    target, readings, tmp_path, request
):
    """Batch B holds 20 % of the readings, arriving after A was processed (late by up to 2 days),
    plus higher-quality repeats of A's readings that must replace them."""
    rng = np.random.default_rng(5)
    late = rng.random(len(readings)) < 0.2
    first, second = readings[~late], readings[late]
    upgrades = first.sample(200, random_state=3).assign(quality_score=1.0)
    second = pd.concat([second, upgrades])
    path_a, path_b = _write(first, tmp_path / "a.parquet"), _write(second, tmp_path / "b.parquet")

    _register_nodes(target)
    with connect(target) as wh:
        load_files(wh, [path_a], progress=False)
    run_cycle(target)
    with connect(target) as wh:
        load_files(wh, [path_b], progress=False)
    run_cycle(target)
    after_late = _published(target)
    run_cycle(target)
    after_rerun = _published(target)

    # a second warehouse loads both files, then runs a single cycle
    other = request.getfixturevalue("duckdb_target" if target.type == "postgres" else "pg_target")
    _register_nodes(other)
    with connect(other) as wh:
        load_files(wh, [path_a, path_b], progress=False)
    run_cycle(other)
    at_once = _published(other)

    for frame in (after_late, after_rerun, at_once):
        assert not frame.duplicated(KEY).any()
    columns = KEY + COMPARED
    ordered = [
        f.sort_values(KEY)[columns].reset_index(drop=True)
        for f in (after_late, after_rerun, at_once)
    ]
    pd.testing.assert_frame_equal(ordered[0], ordered[1], check_dtype=False)
    _assert_same_metrics(ordered[0], ordered[2])
    computed_at = [
        f.sort_values(KEY)["computed_at"].reset_index(drop=True) for f in (after_late, after_rerun)
    ]
    assert computed_at[0].equals(computed_at[1]), (
        "a re-run without new data must not touch any window"
    )
    _assert_same_metrics(after_late, reference_metrics(_raw(target), _register_nodes(target)))


def test_every_input_row_is_accounted_for(target, readings, tmp_path):
    with connect(target) as wh:
        load_files(wh, [_write(readings, tmp_path / "all.parquet")], progress=False)
    run_cycle(target)
    with connect(target) as wh:
        raw_rows = wh.scalar("select count(*) from raw.sensor_readings")
        kept = wh.scalar("select count(*) from water_staging.int_readings_deduplicated")
        rejected = wh.scalar("select count(*) from water_infrastructure.rejected_readings")
        valid = wh.scalar(
            "select count(*) from water_staging.stg_raw__sensor_readings where is_valid"
        )
        valid_keys = wh.scalar(
            "select count(*) from (select distinct node_id, reading_at"
            " from water_staging.stg_raw__sensor_readings where is_valid) as valid_keys"
        )
        reasons = wh.query_df(
            "select rejection_reasons from water_infrastructure.rejected_readings"
        )
    # A repeat is a valid row that loses to another valid row of its (node, time).
    repeats = valid - valid_keys
    assert kept == valid_keys, "one kept reading per valid (node_id, reading_at), none lost"
    assert raw_rows == kept + rejected + repeats, "every raw row is kept, rejected or a repeat"
    expected = row_accounting(_raw(target))
    assert (raw_rows, kept, rejected, repeats) == (
        expected["input"],
        expected["valid"],
        expected["rejected"],
        expected["repeats"],
    )
    codes = set(",".join(reasons["rejection_reasons"]).split(","))
    assert {
        "node_id_missing",
        "timestamp_too_old",
        "no_measurement",
        "flow_rate_out_of_range",
        "pressure_out_of_range",
        "temperature_out_of_range",
        "volume_out_of_range",
        "quality_score_out_of_range",
    } <= codes
    assert repeats >= 3  # the generator's injected duplicates


def test_hours_and_days_are_published_once_closed_even_for_a_node_that_fell_silent(
    target, readings, tmp_path
):
    """A 1hour/1day window appears once its node reported past its end, or once the network's
    clock is the grace past it: never an open partial window (its window_end in the future
    would make a silent node look fresh), never a silent node's last partial hour lost."""
    silent_from = START + timedelta(hours=30, minutes=10)
    frame = readings[(readings["node_id"] != "N0003") | (readings["timestamp"] < silent_from)]
    cuts = [START + timedelta(hours=31), START + timedelta(hours=33, minutes=30)]
    batches = [
        frame[frame["timestamp"] < cuts[0]],
        frame[(frame["timestamp"] >= cuts[0]) & (frame["timestamp"] < cuts[1])],
        frame[frame["timestamp"] >= cuts[1]],
    ]
    cadences = _register_nodes(target)
    silent_hour = ("N0003", "1hour", pd.Timestamp(START + timedelta(hours=30)))
    silent_day = ("N0003", "1day", pd.Timestamp(START + timedelta(days=1)))
    for step, batch in enumerate(batches):
        with connect(target) as wh:
            load_files(wh, [_write(batch, tmp_path / f"batch{step}.parquet")], progress=False)
        run_cycle(target)
        actual = _published(target)
        _assert_same_metrics(actual, reference_metrics(_raw(target), cadences))
        keys = set(actual[KEY].itertuples(index=False, name=None))
        # closed by the network's clock alone in the second cycle, without a new N0003 reading
        assert (silent_hour in keys) == (step >= 1)
        assert silent_day not in keys  # still open: nobody reported past its end
        # so the freshness query's MAX(window_end) never runs ahead of a node's own readings
        # by more than one 5-minute window, unless the whole network has moved 2 hours past it
        closing = pd.Timestamp(actual["last_reading_at"].max()) - WINDOW_CLOSE_GRACE
        for _, rows in actual.groupby("node_id"):
            node_clock = pd.Timestamp(rows["last_reading_at"].max())
            assert rows["window_end"].max() <= max(node_clock + pd.Timedelta(minutes=5), closing)
