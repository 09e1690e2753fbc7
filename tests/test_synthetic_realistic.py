"""The realistic profile of the synthetic generator (pure: no engine, small configs).

Each property is checked on the emitted rows against an independent computation: the rows'
own totalisers, a clean twin of the same network, or the default profile's recorded output.
"""

from __future__ import annotations

import dataclasses
import hashlib
from datetime import UTC, date, datetime

import numpy as np
import pandas as pd
import pytest

from flows.loaders.synthetic import Fault, SyntheticConfig, generate, node_metadata
from flows.loaders.synthetic_realistic import (
    BURST_SIZES,
    GROWING_LEAK,
    LEAK_SIZES,
    holiday_dates,
    node_deadbands,
    realistic_truth,
)

START = datetime(2024, 10, 21, tzinfo=UTC)  # a Monday; 1 November 2024 is a Friday holiday
CFG = SyntheticConfig(nodes=20, days=14, cadence_s=60, seed=13, start=START, profile="realistic")
CLEAN = dataclasses.replace(CFG, incidents=False, glitches=False)
NO_GLITCH = dataclasses.replace(CFG, glitches=False)


@pytest.fixture(scope="module")
def rows() -> pd.DataFrame:
    return generate(CFG)


@pytest.fixture(scope="module")
def truth():
    return realistic_truth(CFG)


@pytest.fixture(scope="module")
def meta() -> pd.DataFrame:
    return node_metadata(CFG)


@pytest.fixture(scope="module")
def clean() -> pd.DataFrame:
    return generate(CLEAN)


def _node(df: pd.DataFrame, node_id: str) -> pd.DataFrame:
    return df[df.node_id == node_id].sort_values("timestamp").drop_duplicates("timestamp")


def _of_type(meta: pd.DataFrame, node_type: str) -> list[str]:
    return meta[meta.node_type == node_type].node_id.tolist()


def _local_day(ts: pd.Series) -> pd.Series:
    return ts.dt.tz_convert("Europe/Rome").dt.date


def _daily_delta(df: pd.DataFrame, node_id: str) -> pd.Series:
    """m³ per local day from the node's own totaliser (the delta belongs to the later reading)."""
    g = _node(df, node_id)
    return g.volume.diff().groupby(_local_day(g.timestamp.dt.round("60s"))).sum()


# --------------------------------------------------------------------------- contracts


def test_default_profile_unchanged() -> None:
    # recorded from the generator before the realistic profile existed (same numpy stack)
    cfg = SyntheticConfig(
        nodes=12,
        days=2,
        seed=5,
        start=datetime(2024, 3, 4, tzinfo=UTC),
        bad_rows=11,
        faults=(Fault("leak", "DMA-01", datetime(2024, 3, 5, tzinfo=UTC)),),
    )
    df = generate(cfg)
    h = hashlib.sha256()
    h.update(df.timestamp.astype("int64").to_numpy().tobytes())
    h.update("\x00".join(df.node_id).encode())
    h.update("\x00".join(df.node_name).encode())
    for c in ["flow_rate", "pressure", "temperature", "volume", "quality_score"]:
        h.update(df[c].to_numpy(dtype=np.float64).tobytes())
    assert len(df) == 34469
    assert h.hexdigest() == "f2705788a70d9e4ba44ade80a7e240e8bf3f473718ee7f1f3c5185a7b7ea71ea"


def test_deterministic_for_a_seed(rows: pd.DataFrame, truth) -> None:
    pd.testing.assert_frame_equal(generate(CFG), rows)
    again = realistic_truth(CFG)
    pd.testing.assert_frame_equal(again.incidents, truth.incidents)
    pd.testing.assert_frame_equal(again.glitches, truth.glitches)
    other = generate(dataclasses.replace(CFG, seed=12))
    assert not other.flow_rate.equals(rows.flow_rate)


def test_refuses_default_profile_options() -> None:
    with pytest.raises(ValueError, match="profile"):
        SyntheticConfig(profile="unkind")
    with pytest.raises(ValueError, match="faults and bad_rows"):
        generate(dataclasses.replace(CFG, bad_rows=3))
    with pytest.raises(ValueError, match="multiple of 60"):
        generate(dataclasses.replace(CFG, cadence_s=90))


# --------------------------------------------------------------------------- behaviour


def test_cadences_present(clean: pd.DataFrame, meta: pd.DataFrame) -> None:
    expected = meta.set_index("node_id").expected_cadence_s
    assert {60, 300, 900} <= set(expected)
    for node_id, g in clean.groupby("node_id"):
        step = np.median(np.diff(g.timestamp.astype("int64").to_numpy())) / 1e6
        assert step == pytest.approx(expected[node_id], abs=5), node_id
    tanks = meta[meta.node_type == "tank"]
    assert (tanks.expected_cadence_s == 300).all()


def test_pumps_switch_between_off_and_duty_points(clean: pd.DataFrame, meta: pd.DataFrame) -> None:
    pumps = _of_type(meta, "pump")
    assert pumps
    for node_id in pumps:
        q = _node(clean, node_id).flow_rate.to_numpy()
        on = q > 0
        assert 0.3 < on.mean() < 0.97, node_id
        switches = np.count_nonzero(np.diff(on.astype(int)))
        assert switches >= 14, node_id  # at least once a day each way
        duty = np.median(q[on])
        ratio = q[on] / duty  # one pump ~1, two pumps ~1.8, nothing in between
        assert np.all((np.abs(ratio - 1) < 0.03) | (np.abs(ratio - 1.8) < 0.05)), node_id
        # off means exactly 0: no "low flow" that a detector should chase
        assert set(np.unique(q[~on])) == {0.0}


def test_tank_fills_while_pumping(clean: pd.DataFrame, meta: pd.DataFrame) -> None:
    for district, group in meta.groupby("district"):
        pump = _of_type(group, "pump")
        tank = _of_type(group, "tank")
        if not pump:
            continue
        level = _node(clean, tank[0]).set_index("timestamp").pressure
        q = _node(clean, pump[0]).set_index("timestamp").flow_rate
        hourly = pd.DataFrame(
            {"rise": level.resample("1h").last().diff(), "on": (q > 0).resample("1h").mean()}
        ).dropna()
        assert hourly.rise[hourly.on == 1].mean() > 0 > hourly.rise[hourly.on == 0].mean()
        # the level sits flat for hours (a slow night drain under the sensor's deadband)
        values = level.to_numpy()
        runs = np.diff(np.flatnonzero(np.diff(values) != 0))
        assert runs.max() * 300 >= 2 * 3600, district


def test_deadband_sensors_repeat(clean: pd.DataFrame, meta: pd.DataFrame) -> None:
    deadbands = node_deadbands(CLEAN)
    types = meta.set_index("node_id").node_type
    checked = set()
    for node_id, db in deadbands.items():
        if db <= 0:
            continue
        column = "pressure" if types[node_id] in ("tank", "pressure_logger") else "flow_rate"
        v = _node(clean, node_id)[column].to_numpy()
        step = np.abs(np.diff(v))
        # a reading either repeats the last reported value or moved by more than the deadband
        assert np.all((step == 0) | (step > db - 1.5e-3)), node_id
        assert (step == 0).mean() > 0.1, node_id
        checked.add(types[node_id])
    assert {"tank", "pressure_logger", "flow_meter"} & checked >= {"tank", "pressure_logger"}


def test_holiday_demand_lower(clean: pd.DataFrame, meta: pd.DataFrame) -> None:
    assert date(2024, 11, 1) in holiday_dates(CFG)
    holiday, friday = date(2024, 11, 1), date(2024, 10, 25)  # both Fridays
    business = meta[meta.node_name.str.contains("Commercial|Industrial")].node_id
    inlets = meta[meta.balance_role == "inlet"].node_id
    for ids, limit in ((business, 0.5), (inlets, 0.9)):
        hol = sum(_daily_delta(clean, n).get(holiday, 0) for n in ids)
        normal = sum(_daily_delta(clean, n).get(friday, 0) for n in ids)
        assert hol < limit * normal


# --------------------------------------------------------------------------- ground truth


def test_incident_plan(truth) -> None:
    inc = truth.incidents
    districts = sorted(truth.district_demand)
    assert sorted(inc.district.unique()) == districts
    leaks, bursts = inc[inc.kind == "leak"], inc[inc.kind == "burst"]
    assert len(leaks) == len(bursts) == len(districts)
    assert set(leaks.magnitude) <= {*LEAK_SIZES, GROWING_LEAK[0]}
    assert set(bursts.magnitude) <= set(BURST_SIZES)
    assert ((bursts.end - bursts.start) == pd.Timedelta(hours=2)).all()
    demand = pd.Series(truth.district_demand)
    assert np.allclose(inc.flow_l_s, inc.magnitude * demand[inc.district].to_numpy())
    # the nominal demand the magnitudes refer to is the true mean demand (within noise)
    f = truth.district_flows
    mean = (f.metered_demand + f.unmetered_demand).groupby(f.district).mean()
    assert np.allclose(mean[demand.index], demand, rtol=0.1)
    assert realistic_truth(CLEAN).incidents.empty


def _incident_flow_from_table(incidents: pd.DataFrame, district: str, t: pd.Series) -> np.ndarray:
    """L/s of the district's incidents at times ``t``, from the incidents table alone."""
    out = np.zeros(len(t))
    for inc in incidents[incidents.district == district].itertuples():
        on = (t >= inc.start) & (pd.isna(inc.end) | (t < inc.end))
        share = 1.0
        if inc.shape == "ramp":
            share = np.clip((t - inc.start) / pd.Timedelta(days=inc.ramp_days), 0, 1)
        out += np.where(on, inc.flow_l_s * share, 0.0)
    return out


def test_inlet_minus_consumption_is_the_injected_loss(meta: pd.DataFrame, clean) -> None:
    """Independent recomputation: the same network with and without incidents shares every noise
    sample, so per day (inlet - metered consumption) from the rows' totalisers differs exactly by
    the truth's incident volume; and the balance closes on the truth's components."""
    leaky = generate(NO_GLITCH)
    truth = realistic_truth(NO_GLITCH)
    f = truth.district_flows
    # the flow of step [t, t + 60 s) reaches the counter's reading at t + 60 s
    f_day = _local_day(f.timestamp + pd.Timedelta(seconds=60))
    for district, group in meta.groupby("district"):
        inlet = group[group.balance_role == "inlet"].node_id.iloc[0]
        consumers = group[group.balance_role == "consumption"].node_id

        def net(df, inlet=inlet, consumers=consumers):
            return _daily_delta(df, inlet) - sum(_daily_delta(df, c) for c in consumers)

        extra = (net(leaky) - net(clean)).iloc[1:-1]  # whole days
        at = f.district == district
        expected_flow = _incident_flow_from_table(truth.incidents, district, f.timestamp[at])
        assert np.allclose(expected_flow, (f.leak_flow + f.burst_flow)[at])
        incident_m3 = pd.Series(expected_flow * 0.06, index=f.index[at]).groupby(f_day[at]).sum()
        assert extra.to_numpy() == pytest.approx(incident_m3[extra.index].to_numpy(), abs=0.01)
        assert incident_m3.max() > 1  # incidents did happen in this district
        unaccounted = (f.unmetered_demand + f.background_leakage + f.leak_flow + f.burst_flow)[at]
        truth_m3 = (unaccounted * 0.06).groupby(f_day[at]).sum()[extra.index]
        inflow = _daily_delta(leaky, inlet)[extra.index]
        assert np.abs(net(leaky)[extra.index] - truth_m3).max() < 0.005 * inflow.min()


def test_totaliser_is_the_integral_of_flow_except_at_glitches(rows, truth, meta) -> None:
    glitches = truth.glitches
    counter = glitches[
        glitches.kind.isin(["totaliser_spike", "totaliser_reset", "totaliser_rollover"])
    ]
    assert set(counter.kind) >= {"totaliser_spike", "totaliser_rollover"}
    cadence = meta.set_index("node_id").expected_cadence_s
    flagged: set[tuple[str, int]] = set()
    for node_id, g in rows.dropna(subset=["volume"]).groupby("node_id"):
        g = g.sort_values("timestamp").drop_duplicates("timestamp")
        grid = g.timestamp.dt.round(f"{cadence[node_id]}s")
        dv = np.diff(g.volume.to_numpy())
        dt = np.diff(grid.astype("int64").to_numpy()) / 1e6
        mine = glitches[glitches.node_id == node_id]
        if cadence[node_id] == 60:  # a reading per internal step: exact up to meter noise
            expect = g.flow_rate.to_numpy()[:-1] * 0.06
            ok = np.abs(dv - expect) <= 0.02 * np.abs(expect) + 2e-3
        else:  # instantaneous readings against the counter: only close over the day
            ok = (dv >= -1e-9) & (dv < 50)
        # readings next to a gap, stuck flow or flow spike compare against a wrong flow
        near = np.zeros(len(dv), dtype=bool)
        t = grid.iloc[1:].reset_index(drop=True)
        for item in mine[mine.kind.isin(["gap", "stuck", "flow_spike"])].itertuples():
            near |= ((t >= item.start) & (t <= item.end)).to_numpy()
        near |= dt > cadence[node_id] * 1.5
        bad = ~ok & ~near
        for i in np.flatnonzero(bad):
            flagged.add((node_id, int(t[i].value)))
        # every counter glitch shows up at its reading (or the one after a spike)
        for item in mine[mine.kind.isin(counter.kind.unique())].itertuples():
            hit = np.flatnonzero(
                (t >= item.start) & (t < item.end + pd.Timedelta(seconds=cadence[node_id]))
            )
            assert hit.size and (~ok[hit]).any() or near[hit].any(), (node_id, item)
    expected = set()
    for item in counter.itertuples():
        step = pd.Timedelta(seconds=int(cadence[item.node_id]))
        expected |= {(item.node_id, item.start.value), (item.node_id, (item.start + step).value)}
    assert flagged <= expected
    assert flagged  # the glitches are there to be found


def test_write_truth(tmp_path, truth) -> None:
    from flows.loaders.synthetic_realistic import write_truth

    out = write_truth(CFG, tmp_path / "truth")
    incidents = pd.read_csv(out / "incidents.csv", parse_dates=["start", "end"])
    assert incidents.incident_id.tolist() == truth.incidents.incident_id.tolist()
    assert (incidents.start == truth.incidents.start).all()
    assert len(pd.read_csv(out / "glitches.csv")) == len(truth.glitches)
    flows = pd.read_parquet(out / "district_flows.parquet")
    assert np.allclose(flows.leak_flow, truth.district_flows.leak_flow)
