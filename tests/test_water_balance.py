"""network_efficiency on generated data, on DuckDB and PostgreSQL: the IWA balance against the
generator's truth, local days, and the awkward layouts (a meter gap, a district without inlet
meter, a node moving district, a node without metadata)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path

import pandas as pd
import pytest

from flows.kernel.dbt_runner import run_dbt
from flows.kernel.settings import Target
from flows.kernel.warehouse import connect
from flows.loaders.files import DateRange
from flows.loaders.loading import load_synthetic
from flows.loaders.nodes import upsert_nodes
from flows.loaders.synthetic import Fault, SyntheticConfig, generate, node_metadata
from tests.warehouses import fresh_warehouse as fresh_target

MODELS = ["--select", "+network_efficiency"]
LOCAL_TZ = "Europe/Rome"


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


# Three local days (2024-03-11..13 Europe/Rome = from 2024-03-10 23:00 UTC); DMA-01's only
# inlet is silent for three hours on the second day.
INLET_GAP = Fault("gap", "N0001", at("2024-03-12 06:00"), at("2024-03-12 09:00"))
CONFIG = SyntheticConfig(
    nodes=18, days=4, cadence_s=300, seed=7, start=at("2024-03-10 23:00"), faults=(INLET_GAP,)
)


@dataclass
class Balance:
    target: Target
    before: pd.DataFrame  # after the first three days, original layout
    after: pd.DataFrame  # after the fourth day, with N0015 in a district without inlet meter


def efficiency(target: Target) -> pd.DataFrame:
    with connect(target) as wh:
        frame = wh.query_df("select * from water_infrastructure.network_efficiency")
    frame["window_start"] = pd.to_datetime(frame["window_start"], utc=True)
    frame["local_date"] = pd.to_datetime(frame["local_date"]).dt.date
    return frame


@pytest.fixture(scope="module", params=["duckdb", "postgres"])
def balance(request, tmp_path_factory) -> Iterator[Balance]:
    directory: Path = tmp_path_factory.mktemp(f"balance-{request.param}")
    with fresh_target(request.param, directory) as target:
        with connect(target) as wh:
            load_synthetic(
                wh,
                CONFIG,
                DateRange(date(2024, 3, 10), date(2024, 3, 13)),
                progress=False,
                landing_dir=directory,
            )
            # a logger that reports but was never registered
            wh.execute("delete from raw.node_metadata where node_id = %(n)s", {"n": "N0017"})
        run_dbt(target, "run", MODELS)
        before = efficiency(target)
        with connect(target) as wh:
            # (load_synthetic registers the generator's metadata again, so changes come after it)
            load_synthetic(
                wh,
                CONFIG,
                DateRange(date(2024, 3, 14), date(2024, 3, 14)),
                progress=False,
                landing_dir=directory,
            )
            wh.execute("delete from raw.node_metadata where node_id = %(n)s", {"n": "N0017"})
            # N0015 (consumption) moves to a district without inlet meter, N0005 to DMA-02
            upsert_nodes(
                wh, pd.DataFrame({"node_id": ["N0015", "N0005"], "district": ["DMA-09", "DMA-02"]})
            )
        run_dbt(target, "build", MODELS)  # incremental, with every data test
        yield Balance(target, before, efficiency(target))


def local_day_truth() -> pd.DataFrame:
    """System input and consumption per district and local day, integrated from the raw readings."""
    readings = generate(CONFIG)
    roles = node_metadata(CONFIG).set_index("node_id")
    readings = readings.join(roles[["district", "balance_role"]], on="node_id")
    readings["local_date"] = readings["timestamp"].dt.tz_convert(LOCAL_TZ).dt.date
    readings["m3"] = readings["flow_rate"] * CONFIG.cadence_s / 1000.0
    sign = readings["balance_role"].map({"inlet": 1.0, "outlet": -1.0})
    readings["input_m3"] = readings["m3"] * sign
    readings["consumed_m3"] = readings["m3"].where(readings["balance_role"] == "consumption")
    return readings.groupby(["district", "local_date"])[["input_m3", "consumed_m3"]].sum()


def test_daily_balance_matches_the_generated_flows(balance):
    truth = local_day_truth()
    days = balance.before[(balance.before.time_window == "1day") & balance.before.is_complete]
    checked = 0
    for row in days[days.area_type == "district"].itertuples():
        expected = truth.loc[(row.district, row.local_date)]
        # the model extrapolates each hour's mean over the 0.3 % of readings lost at random
        assert row.system_input_volume_m3 == pytest.approx(expected.input_m3, rel=0.01)
        assert row.metered_consumption_m3 == pytest.approx(expected.consumed_m3, rel=0.01)
        # the generator's background leakage is 8-15 % of demand
        assert 5 < row.water_loss_percent < 20
        assert row.efficiency_percent == pytest.approx(100 - row.water_loss_percent)
        checked += 1
    assert checked >= 3


def test_days_are_local_and_add_up_their_hours(balance):
    frame = balance.before
    day = frame[
        (frame.district == "DMA-02")
        & (frame.time_window == "1day")
        & (frame.local_date == date(2024, 3, 11))
    ]
    (row,) = day.itertuples()
    assert row.window_start == pd.Timestamp("2024-03-10 23:00", tz="UTC")  # local midnight, CET
    assert row.is_complete
    hours = frame[
        (frame.district == "DMA-02")
        & (frame.time_window == "1hour")
        & (frame.window_start >= row.window_start)
        & (frame.window_start < pd.Timestamp(row.window_end))
    ]
    assert len(hours) == 24
    assert hours.system_input_volume_m3.sum() == pytest.approx(row.system_input_volume_m3, rel=1e-9)
    assert hours.metered_consumption_m3.sum() == pytest.approx(row.metered_consumption_m3, rel=1e-9)
    assert row.min_night_flow_lps > 0


def test_network_rows_sum_the_districts(balance):
    frame = balance.before
    network = frame[(frame.area_type == "network") & frame.is_complete]
    assert not network.empty
    districts = frame[frame.area_type == "district"]
    for row in network.itertuples():
        parts = districts[
            (districts.time_window == row.time_window)
            & (districts.window_start == row.window_start)
        ]
        assert parts.system_input_volume_m3.sum() == pytest.approx(
            row.system_input_volume_m3, rel=1e-9
        )
        assert parts.metered_consumption_m3.sum() == pytest.approx(
            row.metered_consumption_m3, rel=1e-9
        )


def test_a_silent_inlet_leaves_the_balance_unknown_with_a_reason(balance):
    frame = balance.before
    dma1 = frame[frame.district == "DMA-01"]
    gap_hours = dma1[
        (dma1.time_window == "1hour")
        & (dma1.window_start >= pd.Timestamp(INLET_GAP.start))
        & (dma1.window_start < pd.Timestamp(INLET_GAP.end))
    ]
    assert len(gap_hours) == 3
    assert gap_hours.system_input_volume_m3.isna().all()
    assert gap_hours.water_loss_percent.isna().all()
    assert (gap_hours.incomplete_reasons == "inlet_data_incomplete").all()
    (day,) = dma1[
        (dma1.time_window == "1day") & (dma1.local_date == date(2024, 3, 12))
    ].itertuples()
    assert pd.isna(day.system_input_volume_m3) and "inlet_data_incomplete" in day.incomplete_reasons
    assert day.metered_consumption_m3 > 0  # what is known stays known


def test_a_node_without_metadata_is_in_district_unknown(balance):
    unknown = balance.before[balance.before.district == "unknown"]
    assert not unknown.empty
    assert set(unknown.incomplete_reasons) == {"no_inlet_meter,no_consumption_meters"}
    assert set(unknown.total_nodes) == {1}


def test_a_district_without_inlet_meter_and_a_moved_node(balance):
    frame = balance.after
    new_day = frame[frame.local_date == date(2024, 3, 14)]
    (dma9,) = new_day[(new_day.district == "DMA-09") & (new_day.time_window == "1day")].itertuples()
    assert pd.isna(dma9.system_input_volume_m3) and pd.isna(dma9.water_loss_percent)
    assert dma9.incomplete_reasons.startswith("no_inlet_meter")
    assert dma9.metered_consumption_m3 > 0
    (network,) = new_day[
        (new_day.area_type == "network") & (new_day.time_window == "1day")
    ].itertuples()
    assert pd.isna(network.system_input_volume_m3)
    assert "district_without_inlet_meter" in network.incomplete_reasons
    (dma2,) = new_day[(new_day.district == "DMA-02") & (new_day.time_window == "1day")].itertuples()
    (dma2_before,) = balance.before[
        (balance.before.district == "DMA-02")
        & (balance.before.time_window == "1day")
        & (balance.before.local_date == date(2024, 3, 11))
    ].itertuples()
    # N0005 joined, N0015 left: same count, and the new layout applies from the new rows on
    assert dma2.total_nodes == dma2_before.total_nodes
    assert dma2.is_complete
    # rows computed before the move keep the layout they were computed with
    unchanged = balance.after.merge(
        balance.before, on=["district", "time_window", "window_start"], suffixes=("", "_b")
    )
    unchanged = unchanged[unchanged.local_date < date(2024, 3, 13)]
    assert (unchanged.total_nodes == unchanged.total_nodes_b).all()
