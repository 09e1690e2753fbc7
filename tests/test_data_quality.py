"""data_quality_metrics on generated data, on DuckDB and PostgreSQL.

Twelve to thirteen hours of readings ending now (so ingestion lag is real), with a half-hour gap, a
totaliser running backwards and invalid rows. Each score is checked against what the data
says: completeness against the gap, validity against the quarantine, consistency against
the backwards totaliser, timeliness against loaded_at - reading_at of every reading.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta

import pandas as pd
import pytest

from flows.kernel.dbt_runner import run_dbt
from flows.kernel.warehouse import connect
from flows.loaders.loading import load_synthetic
from flows.loaders.synthetic import Fault, SyntheticConfig, node_metadata
from tests.warehouses import fresh_warehouse as fresh_target

MODELS = ["--select", "+data_quality_metrics"]
TIMELINESS_MAX_LAG_S = 3600  # dbt var quality_timeliness_max_lag_s
CONSISTENCY_TOLERANCE = 0.05  # dbt var quality_consistency_tolerance

# The data ends at the last 5-minute boundary: the newest readings are on time when loaded,
# readings older than an hour are late, and nothing lies in the future. The generator's random
# draws (missing readings, jitter) follow the grid index from `start`, so `start` is pinned to
# a whole hour and the length is fixed: every run puts the same readings in the same UTC hours,
# whatever the wall clock. The readings after END are cut by a gap on every node (faults
# consume no randomness), so the data still ends now.
_NOW = datetime.now(UTC)
END = _NOW.replace(minute=_NOW.minute - _NOW.minute % 5, second=0, microsecond=0)
START = END.replace(minute=0) - timedelta(hours=12)
GAP_HOUR = START + timedelta(hours=3)
GAP = Fault("gap", "N0002", GAP_HOUR + timedelta(minutes=20), GAP_HOUR + timedelta(minutes=50))
BACKWARDS = Fault(
    "totaliser_backwards", "N0004", START + timedelta(hours=5), START + timedelta(hours=6)
)
_NETWORK = SyntheticConfig(nodes=18, days=13 / 24, cadence_s=300, seed=5, start=START, bad_rows=22)
_AFTER_END = tuple(Fault("gap", node, END) for node in node_metadata(_NETWORK).node_id)
CONFIG = replace(_NETWORK, faults=(GAP, BACKWARDS, *_AFTER_END))
LOGGERS = set(node_metadata(CONFIG).query("node_type == 'pressure_logger'").node_id)


@dataclass
class Quality:
    scores: pd.DataFrame
    readings: pd.DataFrame  # valid de-duplicated readings with loaded_at
    rejected: pd.DataFrame


@pytest.fixture(scope="module", params=["duckdb", "postgres"])
def quality(request, tmp_path_factory) -> Iterator[Quality]:
    directory = tmp_path_factory.mktemp(f"quality-{request.param}")
    with fresh_target(request.param, directory) as target:
        with connect(target) as wh:
            load_synthetic(wh, CONFIG, progress=False, landing_dir=directory)
        run_dbt(target, "build", MODELS)
        with connect(target) as wh:
            scores = wh.query_df("select * from water_infrastructure.data_quality_metrics")
            readings = wh.query_df(
                "select node_id, reading_at, loaded_at from water_staging.int_readings_deduplicated"
            )
            rejected = wh.query_df(
                'select node_id, "timestamp" as reading_at from water_infrastructure.rejected_readings'
            )
    for frame, columns in (
        (scores, ["window_start"]),
        (readings, ["reading_at", "loaded_at"]),
        (rejected, ["reading_at"]),
    ):
        for column in columns:
            frame[column] = pd.to_datetime(frame[column], utc=True)
    yield Quality(scores, readings, rejected)


def window(frame: pd.DataFrame, node: str, width: str, start: datetime) -> pd.Series:
    rows = frame[
        (frame.node_id == node)
        & (frame.time_window == width)
        & (frame.window_start == pd.Timestamp(start))
    ]
    assert len(rows) == 1, rows
    return rows.iloc[0]


def test_completeness_shows_the_gap(quality):
    gap_hour = window(quality.scores, "N0002", "1hour", GAP_HOUR)
    # six of the hour's twelve 5-minute readings are missing (one more or less at its edges)
    assert 5 / 12 - 1e-9 <= gap_hour.completeness <= 7 / 12 + 1e-9
    assert "readings_missing" in gap_hour.quality_notes
    hour_before = window(quality.scores, "N0002", "1hour", GAP_HOUR - timedelta(hours=1))
    assert hour_before.completeness >= 11 / 12 - 1e-9
    assert gap_hour.overall_score < hour_before.overall_score


def test_validity_counts_every_attributable_rejected_reading(quality):
    attributable = quality.rejected.dropna(subset=["node_id", "reading_at"])
    assert len(attributable) > 0
    five_minutes = quality.scores[quality.scores.time_window == "5min"]
    assert five_minutes.rejected_count.sum() == len(attributable)
    hit = five_minutes[five_minutes.rejected_count > 0]
    assert (hit.validity < 1).all()
    assert (
        hit.validity - hit.valid_count / hit.received_count
    ).abs().max() < 1e-6  # rounded to 6 places
    # a reading rejected for its 1999 timestamp still lands in a (1999) window of its node
    only_rejected = five_minutes[five_minutes.valid_count == 0]
    assert not only_rejected.empty
    assert (only_rejected.validity == 0).all() and (only_rejected.completeness == 0).all()
    assert only_rejected.quality_notes.str.contains("only_rejected_readings").all()


def test_a_totaliser_running_backwards_is_inconsistent(quality):
    five_minutes = quality.scores[
        (quality.scores.time_window == "5min") & quality.scores.consistency.notna()
    ]
    during = five_minutes[
        (five_minutes.node_id == "N0004")
        & (five_minutes.window_start >= pd.Timestamp(BACKWARDS.start))
        & (five_minutes.window_end <= pd.Timestamp(BACKWARDS.end))
    ]
    assert len(during) >= 6  # a 5-minute cadence leaves some 5-minute windows empty
    assert (~during.is_volume_consistent.astype(bool)).all()
    assert (during.consistency < 0.5).all()
    elsewhere = five_minutes[five_minutes.node_id != "N0004"]
    consistent_share = elsewhere.is_volume_consistent.astype(bool).mean()
    assert consistent_share > 0.95, consistent_share
    # pressure loggers have no totaliser: not measured, not a zero
    loggers = quality.scores[
        quality.scores.node_id.isin(LOGGERS) & (quality.scores.valid_count > 0)
    ]
    assert not loggers.empty and loggers.consistency.isna().all()
    assert loggers.quality_notes.str.contains("consistency_not_measured").all()


def test_timeliness_is_the_share_of_readings_ingested_within_an_hour(quality):
    readings = quality.readings.copy()
    readings["on_time"] = (
        readings.loaded_at - readings.reading_at
    ).dt.total_seconds() <= TIMELINESS_MAX_LAG_S
    readings["window_start"] = readings.reading_at.dt.floor("1h")
    expected = (
        readings.groupby(["node_id", "window_start"])
        .on_time.mean()
        .rename("expected")
        .reset_index()
    )
    hours = quality.scores[quality.scores.time_window == "1hour"].merge(
        expected, on=["node_id", "window_start"]
    )
    assert len(hours) > 100
    assert (hours.timeliness - hours.expected).abs().max() < 1e-6
    assert (
        hours.timeliness.min() == 0 and hours.timeliness.max() > 0
    )  # old hours late, the newest on time


def test_overall_score_is_the_weighted_mean_of_the_scores_that_apply(quality):
    rows = quality.scores.copy()
    parts = [
        (0.4, rows.completeness),
        (0.2, rows.validity),
        (0.2, rows.consistency),
        (0.2, rows.timeliness),
    ]
    weighted = sum(weight * score.fillna(0) for weight, score in parts)
    weights = sum(weight * score.notna() for weight, score in parts)
    assert ((weighted / weights) - rows.overall_score).abs().max() < 2e-6
    assert rows.overall_score.between(0, 1).all()
