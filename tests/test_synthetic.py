"""Tests for the synthetic sensor-network generator (fast: small configs only)."""

from __future__ import annotations

import dataclasses
import hashlib
from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from flows.loaders.synthetic import (
    BAD_ROW_KINDS,
    METADATA_COLUMNS,
    RAW_SCHEMA,
    Fault,
    SyntheticConfig,
    data_window,
    generate,
    iter_batches,
    natural_resets,
    node_measurements,
    node_metadata,
    write_parquet,
)

START = datetime(2024, 3, 4, tzinfo=UTC)  # a Monday
CFG = SyntheticConfig(nodes=20, days=7, cadence_s=60, seed=42, start=START)
MEASURES = ["flow_rate", "pressure", "temperature", "volume"]
COLUMNS = ["timestamp", "node_id", "node_name", *MEASURES, "quality_score"]


@pytest.fixture(scope="module")
def meta() -> pd.DataFrame:
    return node_metadata(CFG)


@pytest.fixture(scope="module")
def base() -> pd.DataFrame:
    return generate(CFG)


def _table(config: SyntheticConfig) -> pa.Table:
    return pa.Table.from_batches(list(iter_batches(config)), schema=RAW_SCHEMA)


def _pick(meta: pd.DataFrame, district: str, role: str, node_type: str | None = None) -> str:
    m = meta[(meta.district == district) & (meta.balance_role == role)]
    if node_type is not None:
        m = m[m.node_type == node_type]
    assert len(m), f"no {role}/{node_type} node in {district}"
    return str(m.node_id.iloc[0])


def _differs(a: pd.Series, b: pd.Series) -> np.ndarray:
    x, y = a.to_numpy(dtype=float), b.to_numpy(dtype=float)
    return ~((x == y) | (np.isnan(x) & np.isnan(y)))


# --------------------------------------------------------------------------- schema & metadata


def test_schema_and_columns(base: pd.DataFrame) -> None:
    assert RAW_SCHEMA.names == COLUMNS
    assert RAW_SCHEMA.field("timestamp").type == pa.timestamp("us", tz="UTC")
    for name in ["node_id", "node_name"]:
        assert RAW_SCHEMA.field(name).type == pa.string()
    for name in [*MEASURES, "quality_score"]:
        assert RAW_SCHEMA.field(name).type == pa.float64()
    for batch in iter_batches(CFG):
        assert batch.schema.equals(RAW_SCHEMA)
    assert list(base.columns) == COLUMNS
    assert str(base["timestamp"].dtype) == "datetime64[us, UTC]"


def test_metadata(meta: pd.DataFrame) -> None:
    assert tuple(meta.columns) == METADATA_COLUMNS
    assert meta.node_id.is_unique and len(meta) == CFG.nodes
    assert set(meta.balance_role) <= {"inlet", "outlet", "consumption", "monitoring"}
    assert (meta.expected_cadence_s == CFG.cadence_s).all()
    assert meta.expected_cadence_s.dtype == np.int64
    assert meta.is_bidirectional.dtype == bool
    assert meta.pressure_min_bar.dtype == np.float64
    assert meta.latitude.between(35, 48).all() and meta.longitude.between(6, 19).all()
    for district, group in meta.groupby("district"):
        assert district.startswith("DMA-")
        assert 1 <= (group.balance_role == "inlet").sum() <= 2
        assert (group.balance_role == "consumption").sum() >= 1
    caps = node_measurements(CFG)
    with_p = meta.node_id.map(lambda n: "pressure" in caps[n])
    assert meta.pressure_min_bar[with_p].notna().all()
    assert (meta.pressure_min_bar[with_p] < meta.pressure_max_bar[with_p]).all()


def test_nulls_follow_capabilities_and_no_nan() -> None:
    table = _table(CFG)
    caps = node_measurements(CFG)
    for name in [*MEASURES, "quality_score"]:
        values = table[name].to_numpy(zero_copy_only=False)
        present = ~pc.is_null(table[name]).to_numpy(zero_copy_only=False)
        assert np.isfinite(values[present]).all(), f"NaN/inf in {name} without bad_rows"
    df = table.to_pandas()
    for node_id, group in df.groupby("node_id"):
        for col in MEASURES:
            if col in caps[node_id]:
                assert group[col].notna().all(), (node_id, col)
            else:
                assert group[col].isna().all(), (node_id, col)
    q = df.quality_score
    assert 0.0005 < q.isna().mean() < 0.01
    assert q.dropna().between(0, 1).all()
    assert q.dropna().between(0.95, 1.0).mean() > 0.9


def test_timestamps_grid_jitter_missing(base: pd.DataFrame) -> None:
    n_steps = 7 * 1440
    assert 0.99 * CFG.nodes * n_steps < len(base) < 0.9995 * CFG.nodes * n_steps
    start_us = int(pd.Timestamp(START).value // 1000)
    for _, group in base.groupby("node_id", sort=False):
        ts = group["timestamp"].dt.tz_localize(None).to_numpy().astype("datetime64[us]")
        ts = ts.astype(np.int64)
        assert (np.diff(ts) > 0).all()
        offset = (ts - start_us) % (CFG.cadence_s * 1_000_000)
        jitter = np.minimum(offset, CFG.cadence_s * 1_000_000 - offset)
        assert jitter.max() <= 2_000_000
        assert jitter.mean() > 100_000  # really jittered


def test_default_window_ends_now_floored_to_cadence() -> None:
    cfg = SyntheticConfig(nodes=2, days=1, cadence_s=300)
    before = datetime.now(UTC)
    start, end = data_window(cfg)
    assert end - start == timedelta(days=1)
    assert end <= before + timedelta(seconds=1) and before - end < timedelta(seconds=301)
    assert int(end.timestamp()) % 300 == 0
    assert data_window(CFG) == (START, START + timedelta(days=7))


# --------------------------------------------------------------------------- determinism / streaming


def test_deterministic_bytes(tmp_path) -> None:
    cfg = SyntheticConfig(nodes=6, days=1, seed=7, start=START, bad_rows=11)
    p1, p2, p3 = tmp_path / "a.parquet", tmp_path / "b.parquet", tmp_path / "c.parquet"
    rows = write_parquet(cfg, p1)
    assert write_parquet(cfg, p2) == rows
    assert hashlib.sha256(p1.read_bytes()).digest() == hashlib.sha256(p2.read_bytes()).digest()
    write_parquet(dataclasses.replace(cfg, seed=8), p3)
    assert p1.read_bytes() != p3.read_bytes()
    written = pq.read_table(p1)
    assert written.schema.equals(RAW_SCHEMA)
    assert written.num_rows == rows
    pd.testing.assert_frame_equal(written.to_pandas(), generate(cfg))  # NaN-aware
    assert not list(tmp_path.glob("*.tmp"))


def test_streaming_equals_generate(base: pd.DataFrame) -> None:
    batches = list(iter_batches(CFG))
    assert len(batches) == CFG.nodes  # one batch per node
    streamed = pa.Table.from_batches(batches).to_pandas()
    pd.testing.assert_frame_equal(streamed, base)
    assert base.node_id.unique().tolist() == sorted(base.node_id.unique())


# --------------------------------------------------------------------------- realism


def test_totalisers_monotonic_except_natural_resets() -> None:
    cfg = SyntheticConfig(nodes=20, days=365, cadence_s=3600, seed=3, start=START)
    df = generate(cfg)
    truth = natural_resets(cfg)
    assert len(truth) >= 5  # ~1 per node-year
    found = set()
    for node_id, group in df.dropna(subset=["volume"]).groupby("node_id"):
        vol = group.volume.to_numpy()
        ts = group.timestamp.to_numpy()
        drops = np.flatnonzero(np.diff(vol) < 0)
        for i in drops:
            # a reset to 0: the reading after the drop is a small count from zero
            assert vol[i + 1] < 100, (node_id, vol[i], vol[i + 1])
            found.add((node_id, pd.Timestamp(ts[i + 1]).round("h").to_pydatetime()))
    assert found == {(n, t) for n, t in truth}


def test_water_balance(base: pd.DataFrame, meta: pd.DataFrame) -> None:
    roles = meta.set_index("node_id")
    delta = {}
    for node_id, group in base.dropna(subset=["volume"]).groupby("node_id"):
        d = np.diff(group.volume.to_numpy())
        delta[node_id] = d[d >= 0].sum()  # skip a natural reset, if any
    for district, group in meta.groupby("district"):
        ids = group.node_id
        inflow = sum(delta[i] for i in ids if roles.balance_role[i] == "inlet")
        outflow = sum(delta[i] for i in ids if roles.balance_role[i] == "outlet")
        consumed = sum(delta[i] for i in ids if roles.balance_role[i] == "consumption")
        ratio = (inflow - outflow) / consumed
        assert 1.06 < ratio < 1.18, (district, ratio)  # 8-15 % background leakage


def test_night_flow_lower_than_day(base: pd.DataFrame, meta: pd.DataFrame) -> None:
    local = base.timestamp.dt.tz_convert("Europe/Rome").dt.hour
    night = base[local.between(2, 3)].groupby("node_id").flow_rate.mean()
    day = base[local.between(7, 21)].groupby("node_id").flow_rate.mean()
    flow_nodes = meta[meta.balance_role.isin(["inlet", "consumption"])].node_id
    for node_id in flow_nodes:
        assert night[node_id] < 0.8 * day[node_id], node_id
    residential = meta[meta.node_name.str.contains("Residential")].node_id
    assert all(night[n] < 0.5 * day[n] for n in residential)
    inlets = meta[meta.balance_role == "inlet"].node_id
    assert night[inlets].sum() < 0.6 * day[inlets].sum()


def test_pressure_falls_with_flow(base: pd.DataFrame, meta: pd.DataFrame) -> None:
    inlet = _pick(meta, "DMA-01", "inlet")
    g = base[base.node_id == inlet]
    assert np.corrcoef(g.flow_rate, g.pressure)[0, 1] < -0.5
    assert g.pressure.between(3, 6.5).all()
    assert base.temperature.dropna().between(4, 26).all()


# --------------------------------------------------------------------------- faults

F0 = START + timedelta(days=2, hours=1)
F1 = START + timedelta(days=4, hours=1)


def _with(fault: Fault) -> pd.DataFrame:
    return generate(dataclasses.replace(CFG, faults=(fault,)))


def _window(df: pd.DataFrame, start=F0, end=F1) -> np.ndarray:
    ts = df.timestamp
    # grid-based windows: a reading jittered across the boundary belongs by its grid time
    grid = ts.dt.round(f"{CFG.cadence_s}s")
    return ((grid >= start) & (grid < end)).to_numpy()


def _assert_only(
    base: pd.DataFrame, faulty: pd.DataFrame, allowed: dict[str, set[str]], *, after_ok=()
) -> None:
    """Rows are aligned; only ``allowed[node] -> columns`` may differ, and only inside
    the fault window (columns in ``after_ok`` may also differ after it)."""
    assert len(base) == len(faulty)
    assert (base.node_id.to_numpy() == faulty.node_id.to_numpy()).all()
    assert (base.timestamp.to_numpy() == faulty.timestamp.to_numpy()).all()
    win = _window(base)
    after = _window(base, F1, START + timedelta(days=30))
    for col in [*MEASURES, "quality_score"]:
        diff = _differs(base[col], faulty[col])
        for node_id in base.node_id[diff].unique():
            assert col in allowed.get(node_id, set()), f"{col} changed at {node_id}"
        ok = win | (after if col in after_ok else False)
        assert not (diff & ~ok).any(), f"{col} changed outside the window"


def test_fault_burst(base: pd.DataFrame, meta: pd.DataFrame) -> None:
    node = _pick(meta, "DMA-01", "consumption", "multi_sensor")
    faulty = _with(Fault("burst", node, F0, F1, magnitude=3.0))
    inlets = set(meta[(meta.district == "DMA-01") & (meta.balance_role == "inlet")].node_id)
    dma1 = set(meta[meta.district == "DMA-01"].node_id)
    allowed = {n: {"pressure"} for n in dma1}
    for n in inlets | {node}:
        allowed[n] = {"flow_rate", "pressure", "volume"}
    _assert_only(base, faulty, allowed, after_ok=("volume",))
    win = _window(base)
    at = (base.node_id == node).to_numpy()
    extra = (faulty.flow_rate - base.flow_rate)[at & win]
    assert (extra > 0).all() and extra.std() < 1e-2
    at_in = base.node_id.isin(inlets).to_numpy()
    inlet_extra = (faulty.flow_rate - base.flow_rate)[at_in & win].sum()
    node_extra = extra.mean() * (at_in & win).sum() / len(inlets)
    assert inlet_extra == pytest.approx(node_extra, rel=0.1)  # same extra on the inlets
    drop = (base.pressure - faulty.pressure)[at & win]
    assert drop.min() > 0.5


def test_fault_leak(base: pd.DataFrame, meta: pd.DataFrame) -> None:
    faulty = _with(Fault("leak", "DMA-02", F0, None, magnitude=0.4))
    inlets = set(meta[(meta.district == "DMA-02") & (meta.balance_role == "inlet")].node_id)
    _assert_only(
        base,
        faulty,
        {n: {"flow_rate", "pressure", "volume"} for n in inlets},
        after_ok=("flow_rate", "pressure", "volume"),
    )
    at = base.node_id.isin(inlets).to_numpy()
    extra = (faulty.flow_rate - base.flow_rate)[at]
    ts = base.timestamp[at]
    assert (extra[ts < F0] == 0).all()
    first_day = extra[(ts >= F0) & (ts < F0 + timedelta(days=1))].mean()
    last_day = extra[ts >= START + timedelta(days=6)].mean()
    assert 0 < first_day < last_day  # growing
    consumption = base[
        base.node_id.isin(
            meta[(meta.district == "DMA-02") & (meta.balance_role == "consumption")].node_id
        )
    ]
    demand = consumption.flow_rate.sum() / (len(consumption) / len(set(consumption.node_id)))
    near_end = extra[ts >= START + timedelta(days=6, hours=23)].mean() * len(inlets)
    assert near_end == pytest.approx(0.4 * demand, rel=0.15)


def test_fault_stuck(base: pd.DataFrame, meta: pd.DataFrame) -> None:
    node = _pick(meta, "DMA-01", "consumption", "multi_sensor")
    faulty = _with(Fault("stuck", node, F0, F1))
    _assert_only(base, faulty, {node: {"flow_rate", "pressure", "volume"}}, after_ok=("volume",))
    at = (base.node_id == node).to_numpy()
    win = _window(base)
    before = base[at & (base.timestamp < F0).to_numpy()].iloc[-1]
    for col in ["flow_rate", "pressure"]:
        frozen = faulty[col][at & win].unique()
        assert len(frozen) == 1
        assert frozen[0] == pytest.approx(before[col], abs=2e-3)
        assert base[col][at & win].nunique() > 100


def test_fault_gap(base: pd.DataFrame, meta: pd.DataFrame) -> None:
    node = _pick(meta, "DMA-02", "monitoring")
    faulty = _with(Fault("gap", node, F0, F1))
    at = (faulty.node_id == node) & (faulty.timestamp >= F0 - timedelta(seconds=3))
    assert not (at & (faulty.timestamp < F1 - timedelta(seconds=3))).any()
    expected = base[~((base.node_id == node) & _window(base))].reset_index(drop=True)
    pd.testing.assert_frame_equal(faulty, expected)


def test_fault_pressure_drop(base: pd.DataFrame, meta: pd.DataFrame) -> None:
    node = _pick(meta, "DMA-01", "monitoring")
    faulty = _with(Fault("pressure_drop", node, F0, F1, magnitude=1.5))
    _assert_only(base, faulty, {node: {"pressure"}})
    at = (base.node_id == node).to_numpy() & _window(base)
    assert (base.pressure - faulty.pressure)[at].to_numpy() == pytest.approx(1.5, abs=2e-3)


def test_fault_totaliser_reset(base: pd.DataFrame, meta: pd.DataFrame) -> None:
    node = _pick(meta, "DMA-02", "consumption")
    faulty = _with(Fault("totaliser_reset", node, F0))
    _assert_only(base, faulty, {node: {"volume"}}, after_ok=("volume",))
    g = faulty[faulty.node_id == node]
    assert (g.volume[g.timestamp < F0 - timedelta(seconds=3)] > 100).all()
    after = g.volume[g.timestamp >= F0 + timedelta(seconds=3)].to_numpy()
    assert 0 <= after[0] < 1 and (np.diff(after) >= 0).all() and after[-1] > 10


def test_fault_totaliser_backwards(base: pd.DataFrame, meta: pd.DataFrame) -> None:
    node = _pick(meta, "DMA-02", "consumption")
    faulty = _with(Fault("totaliser_backwards", node, F0, F1))
    _assert_only(base, faulty, {node: {"volume"}}, after_ok=("volume",))
    at = (faulty.node_id == node).to_numpy()
    inside = faulty.volume[at & _window(faulty)].to_numpy()
    assert (np.diff(inside) < 0).all()
    after = faulty.volume[at & (faulty.timestamp >= F1 + timedelta(seconds=3)).to_numpy()]
    assert (np.diff(after.to_numpy()) >= 0).all()


def test_fault_reverse_flow(base: pd.DataFrame, meta: pd.DataFrame) -> None:
    node = _pick(meta, "DMA-01", "inlet")
    faulty = _with(Fault("reverse_flow", node, F0, F1))
    _assert_only(base, faulty, {node: {"flow_rate", "volume"}}, after_ok=("volume",))
    at = (base.node_id == node).to_numpy() & _window(base)
    assert (faulty.flow_rate[at] < 0).all()
    assert faulty.flow_rate[at].to_numpy() == pytest.approx(-base.flow_rate[at].to_numpy())


def test_fault_validation(meta: pd.DataFrame) -> None:
    logger = _pick(meta, "DMA-01", "monitoring")
    bad = [
        Fault("burst", "N9999", F0),
        Fault("leak", "N0001", F0),
        Fault("reverse_flow", logger, F0),
        Fault("totaliser_reset", logger, F0),
    ]
    for fault in bad:
        with pytest.raises(ValueError):
            iter_batches(dataclasses.replace(CFG, faults=(fault,)))
    with pytest.raises(ValueError):
        Fault("meteor", "N0001", F0)
    with pytest.raises(ValueError):
        Fault("gap", "N0001", datetime(2024, 1, 1))
    with pytest.raises(ValueError):
        Fault("gap", "N0001", F1, F0)
    with pytest.raises(ValueError):
        SyntheticConfig(start=datetime(2024, 1, 1))


# --------------------------------------------------------------------------- bad rows


def test_bad_rows() -> None:
    cfg = dataclasses.replace(CFG, bad_rows=2 * len(BAD_ROW_KINDS) + 3)
    table = _table(cfg)
    clean = _table(CFG)
    n_bad = cfg.bad_rows
    assert table.num_rows == clean.num_rows + n_bad
    assert table.slice(0, clean.num_rows).equals(clean)  # appended after the valid rows
    df = table.to_pandas()  # NumPy floats: null and NaN both read as NaN here
    bad = df.iloc[-n_bad:]
    flow, pressure = df.flow_rate, df.pressure
    expected = {kind: 2 + (i < 3) for i, kind in enumerate(BAD_ROW_KINDS)}
    assert pc.sum(pc.is_nan(table["flow_rate"])).as_py() == expected["nan_flow"]
    assert pc.sum(pc.is_inf(table["pressure"])).as_py() == expected["inf_pressure"]
    for col in ["pressure", "temperature", "volume", "quality_score"]:
        assert not pc.any(pc.is_nan(table[col])).as_py()
    for col in ["flow_rate", "temperature", "volume", "quality_score"]:
        assert not pc.any(pc.is_inf(table[col])).as_py()
    assert (flow > 10_000).sum() == expected["flow_too_high"]
    assert (pressure < 0).sum() == expected["negative_pressure"]
    assert (df.temperature == 99).sum() == expected["temperature_99"]
    assert (df.volume < 0).sum() == expected["negative_volume"]
    assert (df.quality_score == 1.5).sum() == expected["quality_1_5"]
    assert (df.node_id == "").sum() == expected["empty_node_id"]
    assert (df.timestamp.dt.year == 1999).sum() == expected["timestamp_1999"]
    all_null = pc.and_(
        pc.and_(pc.is_null(table["flow_rate"]), pc.is_null(table["pressure"])),
        pc.and_(pc.is_null(table["temperature"]), pc.is_null(table["volume"])),
    )
    assert pc.sum(all_null).as_py() == expected["all_null"]
    dup = df[df.duplicated(["node_id", "timestamp"], keep=False)]
    assert len(dup) == 2 * expected["duplicate"]
    for _, pair in dup.groupby(["node_id", "timestamp"]):
        original, copy = pair.iloc[0], pair.iloc[1]
        assert copy.name >= len(df) - n_bad
        for col in MEASURES:
            assert (pd.isna(original[col]) and pd.isna(copy[col])) or original[col] == copy[col]
        assert copy.quality_score < (
            1.0 if pd.isna(original.quality_score) else original.quality_score
        )
    assert bad.node_id.nunique() > 5  # spread across nodes
    assert (bad.timestamp.dt.year == 1999).sum() + bad.timestamp.dt.year.eq(2024).sum() == n_bad
    assert bad.timestamp[bad.timestamp.dt.year == 2024].dt.day.nunique() > 3  # and time


# --------------------------------------------------------------------------- tiny networks


@pytest.mark.parametrize("nodes", [1, 2, 3])
def test_tiny_networks(nodes: int) -> None:
    cfg = SyntheticConfig(nodes=nodes, days=2, seed=1, start=START)
    meta = node_metadata(cfg)
    roles = list(meta.balance_role)
    assert roles[0] == "inlet" and len(meta) == nodes
    assert (meta.district == "DMA-01").all()
    if nodes >= 2:
        assert "consumption" in roles
    if nodes == 3:
        assert roles == ["inlet", "consumption", "monitoring"]
    df = generate(cfg)
    assert set(df.node_id) == set(meta.node_id)
    assert df[df.node_id == "N0001"][MEASURES].notna().all().all()  # the inlet has everything
    caps = set().union(*node_measurements(cfg).values())
    assert caps == set(MEASURES)
    vol = {n: g.volume.iloc[-1] - g.volume.iloc[0] for n, g in df.groupby("node_id")}
    if nodes >= 2:
        ratio = vol["N0001"] / vol["N0002"]
        assert 1.05 < ratio < 1.2
    leaky = generate(dataclasses.replace(cfg, faults=(Fault("leak", "DMA-01", START),)))
    assert leaky.flow_rate.sum() > df.flow_rate.sum()
