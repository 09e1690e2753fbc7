"""Deterministic, streaming synthetic sensor network of a water utility.

The generator builds a small but coherent distribution network and emits one raw
row per sensor reading (see :data:`RAW_SCHEMA`).  Everything is seeded: the same
:class:`SyntheticConfig` always yields byte-identical data (provided ``start`` is
given explicitly, see *Time window* below).

This docstring describes the ``default`` profile.  ``profile="realistic"`` (pump stations,
tanks, deadband sensors, mixed cadences, public holidays, meter glitches, leaks and bursts with a
ground truth) lives in :mod:`flows.loaders.synthetic_realistic`; docs/synthetic.md covers both.

Network
-------
Nodes are grouped into districts (DMAs, ``DMA-01``, ``DMA-02``...; about one per
9 nodes).  Node ids are ``N0001``, ``N0002``... in district order; each district
lists its inlets first, then consumption meters, pressure loggers and finally an
optional outlet.  ``balance_role`` / ``node_type`` and the measured columns:

=============  ===================  ============================================
balance_role   node_type            measurements (others are null)
=============  ===================  ============================================
inlet          ``bulk_meter``       flow, pressure, volume; temperature on some
outlet         ``bulk_meter``       flow, pressure, volume
consumption    ``flow_meter``       flow, volume
consumption    ``multi_sensor``     flow, volume, pressure, temperature
monitoring     ``pressure_logger``  pressure; temperature on some
=============  ===================  ============================================

:func:`node_measurements` returns the exact measured set per node.  ``N0001`` is
always an inlet that measures all four quantities.  Tiny networks: ``nodes=1`` is
a single inlet (its district demand is unmetered), ``nodes=2`` an inlet plus a
``multi_sensor`` consumption meter, ``nodes=3`` adds a pressure logger.

Water balance (per district, before faults)::

    sum(inlet flow) - sum(outlet flow) = sum(consumption flow) + background leakage

Background leakage is a per-district 8-15 % of the nominal demand, roughly
constant with a small (N1 = 1) pressure dependence: slightly more at night.
Outlets export water to a neighbouring network (they are not another district's
inlet).  Volumes are the cumulative integral of the *reported* flow
(m³ = L/s · s / 1000, left Riemann sum on the cadence grid, counting on during
missing readings and gaps) from a random meter reading; a rare natural register
reset to 0 happens about once per node-year (see :func:`natural_resets`).

Signals: demand follows customer-class diurnal profiles (residential / commercial /
industrial; local Europe/Rome time, night minimum around 03:00, morning and
evening peaks, different weekends) times a per-node scale (mean L/s) and smooth
multiplicative noise.  Pressure = static head (3-6 bar) - k·Q² with Q the
district flow (the inlet's own flow for inlets) plus noise.  Temperature is
seasonal (day of year) plus a small diurnal swing.  ``quality_score`` is mostly
0.95-1.0 with occasional dips and ~0.2 % nulls.

Timestamps are on the cadence grid ``start + k * cadence_s`` with a uniform jitter
of up to ±2 s (±cadence/4 when cadence < 8 s); about 0.3 % of readings are missing
at random.  Rows come out node by node, each node sorted by time; injected bad rows
(if any) come last.

Time window
-----------
With ``start`` given, readings cover ``[start, start + n * cadence_s)`` with
``n = round(days * 86400 / cadence_s)``.  With ``start=None`` the window ends at
*now* floored to the cadence (``end = floor(now, cadence_s)``) and
``start = end - n * cadence_s``, so the newest reading is less than one cadence
(+ jitter) old.  That default depends on the wall clock: pass ``start``
explicitly (or use :func:`data_window`) whenever byte-identical output matters.

Faults
------
Fault windows are half-open ``[start, end)`` on the nominal grid times; ``end=None``
means until the end of the data.  Faults consume no randomness, so all nodes a
fault does not touch are bit-identical to the fault-free run.
``magnitude <= 0`` selects the kind's default (:data:`DEFAULT_MAGNITUDE`).

``burst``  (target: any node; default 2.0)
    Sudden extra flow ``magnitude * mean flow`` of the target (for a pressure
    logger: of its district's demand).  It shows on the target's flow (if it has
    flow) and on the district inlets (split by inlet share; a burst on an inlet
    shows on that inlet only).  District pressures fall through the k·Q² head
    loss, and the target's own pressure drops by a further
    ``min(0.4 * magnitude, 0.5 * static head)`` bar.
``leak``  (target: a district name, e.g. ``"DMA-01"``; default 0.3)
    Unmetered loss on the district inlets only: extra inlet flow growing linearly
    from 0 at ``start`` to ``magnitude * nominal district demand`` at ``end`` (or
    data end), gone after ``end``.  Inlet pressures fall slightly with their own
    flow; consumption meters and loggers are unchanged.
``stuck``  (target: any node; magnitude unused)
    Flow and pressure (those the node has) frozen at the last value before
    ``start`` (the volume keeps integrating the frozen flow).
``gap``  (target: any node; magnitude unused)
    No rows at all for the node in the window (the totaliser keeps counting).
``pressure_drop``  (target: node with pressure; default 1.0)
    Reported pressure reduced by ``magnitude`` bar (floored at 0).
``totaliser_reset``  (target: node with volume; magnitude unused, ``end`` ignored)
    Volume is exactly 0 at ``start`` and keeps counting from there.
``totaliser_backwards``  (target: node with volume; default 0.2)
    Volume decreases over the window by ``magnitude * |flow| * dt`` per reading
    instead of increasing; normal counting resumes after ``end``.
``reverse_flow``  (target: node with flow; default 1.0)
    Reported flow becomes ``-magnitude * |flow|`` (so the volume counts down).

Bad rows
--------
``bad_rows=k`` appends ``k`` invalid rows after all valid rows, cycling through
:data:`BAD_ROW_KINDS` in order (so ``k >= 11`` covers every kind).  Each is built
from a real emitted reading of a random eligible node and, except ``duplicate``,
is shifted to ``reading time + cadence/2 + i µs`` so it collides with no other row:

* ``nan_flow`` flow NaN; ``inf_pressure`` pressure +inf; ``flow_too_high`` flow in
  (10000, 50000]; ``negative_pressure`` pressure < 0; ``temperature_99``
  temperature 99.0; ``negative_volume`` volume < 0; ``quality_1_5`` quality 1.5;
  ``empty_node_id`` node_id ``""`` (node_name kept); ``timestamp_1999`` timestamp in
  1999; ``duplicate`` same node_id, timestamp and measurements as an existing row
  but a lower (non-null) quality_score; ``all_null`` the four measurements null.

These are the only NaN / inf values in the data.  :func:`generate` returns NumPy
float columns, where both nulls and the NaN bad row read as NaN; use
:func:`iter_batches` / Parquet (or ``types_mapper=pd.ArrowDtype``) to tell them apart.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from pathlib import Path
from zoneinfo import ZoneInfo

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from flows.kernel import progress as show
from flows.kernel.raw_store import NODE_COLUMNS

__all__ = [
    "BAD_ROW_KINDS",
    "DEFAULT_MAGNITUDE",
    "FAULT_KINDS",
    "LOCAL_TZ",
    "PROFILES",
    "METADATA_COLUMNS",
    "RAW_SCHEMA",
    "Fault",
    "SyntheticConfig",
    "data_window",
    "generate",
    "iter_batches",
    "natural_resets",
    "node_measurements",
    "node_metadata",
    "write_parquet",
]

RAW_SCHEMA = pa.schema(
    [
        pa.field("timestamp", pa.timestamp("us", tz="UTC")),
        pa.field("node_id", pa.string()),
        pa.field("node_name", pa.string()),
        pa.field("flow_rate", pa.float64()),
        pa.field("pressure", pa.float64()),
        pa.field("temperature", pa.float64()),
        pa.field("volume", pa.float64()),
        pa.field("quality_score", pa.float64()),
    ]
)

METADATA_COLUMNS = NODE_COLUMNS  # the node metadata contract (flows.kernel.raw_store)

FAULT_KINDS = (
    "burst",
    "leak",
    "stuck",
    "gap",
    "pressure_drop",
    "totaliser_reset",
    "reverse_flow",
    "totaliser_backwards",
)

DEFAULT_MAGNITUDE = {
    "burst": 2.0,
    "leak": 0.3,
    "pressure_drop": 1.0,
    "reverse_flow": 1.0,
    "totaliser_backwards": 0.2,
    "stuck": 0.0,
    "gap": 0.0,
    "totaliser_reset": 0.0,
}

BAD_ROW_KINDS = (
    "nan_flow",
    "inf_pressure",
    "flow_too_high",
    "negative_pressure",
    "temperature_99",
    "negative_volume",
    "quality_1_5",
    "empty_node_id",
    "timestamp_1999",
    "duplicate",
    "all_null",
)

LOCAL_TZ = "Europe/Rome"
PROFILES = ("default", "realistic")

_MEASURES = ("flow_rate", "pressure", "temperature", "volume")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_US = 1_000_000
_MISSING_RATE = 0.003
_QUALITY_NULL_RATE = 0.002
_ROW_GROUP_ROWS = 100_000
_CENTER = (44.4949, 11.3426)  # a fictional utility around Bologna


# --------------------------------------------------------------------------- API types


@dataclass(frozen=True)
class Fault:
    """A known fault injected into the synthetic data.

    ``kind`` is one of :data:`FAULT_KINDS`; ``target`` a node_id (a district name
    such as ``"DMA-01"`` for ``leak``); ``start``/``end`` tz-aware datetimes, the
    window is ``[start, end)`` and ``end=None`` means until the end of the data.
    ``magnitude`` (``<= 0`` selects :data:`DEFAULT_MAGNITUDE`):

    * burst: extra flow as a multiple of the target's mean flow (pressure logger:
      of the district demand); the target's pressure also drops by
      ``min(0.4 * magnitude, 0.5 * static head)`` bar.
    * leak: extra district-inlet flow as a fraction of the district's nominal
      demand, growing linearly from 0 at ``start`` to ``magnitude`` at
      ``end`` / data end.
    * pressure_drop: bar subtracted from the node's pressure.
    * reverse_flow: reported flow = ``-magnitude * |flow|``.
    * totaliser_backwards: volume decreases by ``magnitude * |flow| * dt`` per step.
    * stuck, gap, totaliser_reset: unused.
    """

    kind: str
    target: str
    start: datetime
    end: datetime | None = None
    magnitude: float = 0.0

    def __post_init__(self) -> None:
        if self.kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {self.kind!r}; expected one of {FAULT_KINDS}")
        if not isinstance(self.target, str) or not self.target:
            raise ValueError("Fault.target must be a non-empty string")
        _require_aware(self.start, "Fault.start")
        if self.end is not None:
            _require_aware(self.end, "Fault.end")
            if self.end <= self.start:
                raise ValueError("Fault.end must be after Fault.start")
        if not math.isfinite(self.magnitude) or self.magnitude < 0:
            raise ValueError("Fault.magnitude must be finite and >= 0")

    @property
    def effective_magnitude(self) -> float:
        """``magnitude``, or the kind's default when it is <= 0."""
        return self.magnitude if self.magnitude > 0 else DEFAULT_MAGNITUDE[self.kind]


@dataclass(frozen=True)
class SyntheticConfig:
    """What to generate; see the module docstring for the model.

    ``start=None``: the window ends at now floored to ``cadence_s`` and starts
    ``round(days * 86400 / cadence_s)`` readings earlier (wall-clock dependent!).
    """

    nodes: int = 20
    days: float = 7
    cadence_s: int = 60
    seed: int = 42
    start: datetime | None = None
    faults: tuple[Fault, ...] = ()
    bad_rows: int = 0
    # "realistic": pumps, tanks, deadband sensors, mixed cadences, holidays, glitches and
    # incidents with ground truth (flows/loaders/synthetic_realistic.py, docs/synthetic.md)
    profile: str = "default"
    incidents: bool = True  # realistic only: inject leaks and bursts
    glitches: bool = True  # realistic only: inject meter glitches

    def __post_init__(self) -> None:
        if self.profile not in PROFILES:
            raise ValueError(f"unknown profile {self.profile!r}; expected one of {PROFILES}")
        if int(self.nodes) != self.nodes or self.nodes < 1:
            raise ValueError("nodes must be an integer >= 1")
        if int(self.cadence_s) != self.cadence_s or self.cadence_s < 1:
            raise ValueError("cadence_s must be an integer >= 1")
        if not (isinstance(self.days, int | float) and math.isfinite(self.days) and self.days > 0):
            raise ValueError("days must be a positive number")
        if round(self.days * 86400 / self.cadence_s) < 1:
            raise ValueError("days * 86400 / cadence_s must give at least one reading")
        if int(self.bad_rows) != self.bad_rows or self.bad_rows < 0:
            raise ValueError("bad_rows must be an integer >= 0")
        if int(self.seed) != self.seed:
            raise ValueError("seed must be an integer")
        if self.start is not None:
            _require_aware(self.start, "SyntheticConfig.start")
        faults = tuple(self.faults)
        for f in faults:
            if not isinstance(f, Fault):
                raise TypeError(f"faults must contain Fault instances, got {type(f).__name__}")
        object.__setattr__(self, "faults", faults)


def _require_aware(value: datetime, what: str) -> None:
    if not isinstance(value, datetime):
        raise TypeError(f"{what} must be a datetime")
    if value.tzinfo is None or value.tzinfo.utcoffset(value) is None:
        raise ValueError(f"{what} must be timezone-aware (UTC)")


def _to_us(value: datetime) -> int:
    return (value - _EPOCH) // timedelta(microseconds=1)


def _from_us(us: int) -> datetime:
    return _EPOCH + timedelta(microseconds=int(us))


def _n_steps(config: SyntheticConfig) -> int:
    return int(round(config.days * 86400 / config.cadence_s))


def data_window(config: SyntheticConfig) -> tuple[datetime, datetime]:
    """Resolved ``(start, end)`` of the nominal grid (UTC); readings are in
    ``[start, end)`` up to the ±2 s jitter.  Pin a config with
    ``dataclasses.replace(config, start=data_window(config)[0])``."""
    n = _n_steps(config)
    step_us = config.cadence_s * _US
    if config.start is not None:
        t0 = _to_us(config.start)
    else:
        now_us = _to_us(datetime.now(UTC))
        t0 = (now_us // step_us) * step_us - n * step_us
    return _from_us(t0), _from_us(t0 + n * step_us)


# --------------------------------------------------------------------------- layout


@dataclass
class _Node:
    idx: int
    node_id: str
    name: str
    node_type: str
    district: int
    role: str
    lat: float
    lon: float
    has: frozenset[str]
    demand_class: str = ""
    scale: float = 0.0  # nominal mean flow L/s (consumption, outlet)
    head: float = 0.0  # static head, bar
    loss_frac: float = 0.0  # head loss at twice the nominal flow, fraction of head
    bidirectional: bool = False
    pmin: float = float("nan")
    pmax: float = float("nan")
    temp_offset: float = 0.0
    v0: float = 0.0


@dataclass
class _District:
    idx: int
    name: str
    nodes: list[int] = field(default_factory=list)
    leak_frac: float = 0.1
    hidden_scale: float = 0.0  # unmetered demand when the district has no consumption meter
    share0: float = 1.0  # share of the first inlet when there are two


def _realistic():
    from flows.loaders import synthetic_realistic  # imports this module: import lazily

    return synthetic_realistic


def _rng(seed: int, *key: int) -> np.random.Generator:
    ss = np.random.SeedSequence(entropy=int(seed) & 0xFFFFFFFFFFFFFFFF, spawn_key=key)
    return np.random.default_rng(ss)


def _log_uniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(math.exp(rng.uniform(math.log(lo), math.log(hi))))


@lru_cache(maxsize=32)
def _layout(nodes: int, seed: int) -> tuple[tuple[_Node, ...], tuple[_District, ...]]:
    rng = _rng(seed, 0)
    n_d = max(1, round(nodes / 9))
    sizes = [nodes // n_d + (1 if i < nodes % n_d else 0) for i in range(n_d)]
    for _ in range(n_d):  # uneven districts
        a, b = (int(x) for x in rng.integers(0, n_d, 2))
        k = int(rng.integers(1, 3))
        if a != b and sizes[a] - k >= 5:
            sizes[a] -= k
            sizes[b] += k

    # roles per district
    plans: list[list[str]] = []
    outlet_candidates = []
    for d, s in enumerate(sizes):
        n_in = 2 if s >= 7 and rng.random() < 0.35 else 1
        plans.append(["inlet"] * n_in)
        if n_d >= 2 and s - n_in >= 5:
            outlet_candidates.append(d)
    outlets = {d for d in outlet_candidates if rng.random() < 0.15}
    if not outlets and outlet_candidates and nodes >= 20:
        outlets = {outlet_candidates[int(rng.integers(0, len(outlet_candidates)))]}
    for d, s in enumerate(sizes):
        n_in = len(plans[d])
        n_out = 1 if d in outlets else 0
        rest = s - n_in - n_out
        if rest <= 0:
            continue
        n_mon = 0 if rest < 2 else max(1, round(rest * rng.uniform(0.15, 0.3)))
        n_mon = min(n_mon, rest - 1)
        plans[d] += ["consumption"] * (rest - n_mon) + ["monitoring"] * n_mon + ["outlet"] * n_out

    node_list: list[_Node] = []
    districts: list[_District] = []
    for d, roles in enumerate(plans):
        dname = f"DMA-{d + 1:02d}"
        dist = _District(idx=d, name=dname, leak_frac=float(rng.uniform(0.08, 0.15)))
        dlat = _CENTER[0] + float(rng.normal(0, 0.03))
        dlon = _CENTER[1] + float(rng.normal(0, 0.04))
        counters: dict[str, int] = {}
        for role in roles:
            idx = len(node_list)
            lat = round(dlat + float(rng.normal(0, 0.004)), 6)
            lon = round(dlon + float(rng.normal(0, 0.005)), 6)
            nd = _Node(
                idx=idx,
                node_id=f"N{idx + 1:04d}",
                name="",
                node_type="",
                district=d,
                role=role,
                lat=lat,
                lon=lon,
                has=frozenset(),
                temp_offset=float(rng.normal(0, 0.4)),
            )
            if role == "inlet":
                k = counters["inlet"] = counters.get("inlet", 0) + 1
                nd.name = f"{dname} Inlet {'AB'[k - 1]}"
                nd.node_type = "bulk_meter"
                temp = idx == 0 or rng.random() < 0.5
                nd.has = frozenset(
                    {"flow_rate", "pressure", "volume"} | ({"temperature"} if temp else set())
                )
                nd.head = float(rng.uniform(4.5, 6.0))
                nd.loss_frac = float(rng.uniform(0.04, 0.1))
                nd.bidirectional = k == 2 and rng.random() < 0.5
                nd.v0 = _log_uniform(rng, 1e5, 1e7)
            elif role == "outlet":
                nbr = f"DMA-{d + 2:02d}" if d < n_d - 1 else f"DMA-{d:02d}"
                nd.name = f"{dname} Outlet to {nbr}"
                nd.node_type = "bulk_meter"
                nd.has = frozenset({"flow_rate", "pressure", "volume"})
                nd.head = float(rng.uniform(3.0, 5.5))
                nd.loss_frac = float(rng.uniform(0.1, 0.25))
                nd.bidirectional = True
                nd.v0 = _log_uniform(rng, 1e5, 1e7)
            elif role == "consumption":
                u = rng.random()
                cls = "residential" if u < 0.7 else ("commercial" if u < 0.9 else "industrial")
                k = counters[cls] = counters.get(cls, 0) + 1
                nd.name = f"{dname} {cls.capitalize()} {k:02d}"
                nd.demand_class = cls
                full = rng.random() < 0.3 or nodes <= 3
                nd.node_type = "multi_sensor" if full else "flow_meter"
                nd.has = frozenset(
                    {"flow_rate", "volume"} | ({"pressure", "temperature"} if full else set())
                )
                if cls == "residential":
                    nd.scale = _log_uniform(rng, 0.5, 5.0)
                elif cls == "commercial":
                    nd.scale = _log_uniform(rng, 0.5, 3.0)
                else:
                    nd.scale = float(rng.uniform(1.5, 5.0))
                nd.head = float(rng.uniform(3.0, 5.5))
                nd.loss_frac = float(rng.uniform(0.1, 0.25))
                nd.v0 = _log_uniform(rng, 1e3, 3e5)
            else:  # monitoring
                k = counters["monitoring"] = counters.get("monitoring", 0) + 1
                nd.name = f"{dname} Pressure Logger {k:02d}"
                nd.node_type = "pressure_logger"
                temp = rng.random() < 0.4 or nodes <= 3
                nd.has = frozenset({"pressure"} | ({"temperature"} if temp else set()))
                nd.head = float(rng.uniform(3.0, 5.5))
                nd.loss_frac = float(rng.uniform(0.1, 0.25))
            if "pressure" in nd.has:
                nd.pmin = round(max(1.0, nd.head * (1 - nd.loss_frac) - 0.8), 1)
                nd.pmax = round(nd.head + 0.5, 1)
            dist.nodes.append(idx)
            node_list.append(nd)
        members = [node_list[i] for i in dist.nodes]
        demand = sum(m.scale for m in members if m.role == "consumption")
        if demand == 0:
            dist.hidden_scale = float(rng.uniform(5.0, 15.0))
        for m in members:
            if m.role == "outlet":
                m.scale = float(rng.uniform(0.2, 0.4)) * max(demand, dist.hidden_scale)
        dist.share0 = float(rng.uniform(0.55, 0.7))
        districts.append(dist)
    return tuple(node_list), tuple(districts)


def _district_demand(dist: _District, nodes: tuple[_Node, ...]) -> float:
    """Nominal mean demand of a district (L/s)."""
    return dist.hidden_scale + sum(
        nodes[i].scale for i in dist.nodes if nodes[i].role == "consumption"
    )


def _district_total(dist: _District, nodes: tuple[_Node, ...]) -> float:
    """Nominal mean total inflow (demand + leakage + export), L/s."""
    m = _district_demand(dist, nodes)
    out = sum(nodes[i].scale for i in dist.nodes if nodes[i].role == "outlet")
    return m * (1 + dist.leak_frac) + out


def _inlet_shares(dist: _District, nodes: tuple[_Node, ...]) -> dict[int, float]:
    inlets = [i for i in dist.nodes if nodes[i].role == "inlet"]
    if len(inlets) == 1:
        return {inlets[0]: 1.0}
    return {inlets[0]: dist.share0, inlets[1]: 1.0 - dist.share0}


def node_metadata(config: SyntheticConfig) -> pd.DataFrame:
    """One row per node with the columns in :data:`METADATA_COLUMNS`.

    ``pressure_min_bar``/``pressure_max_bar`` are the node's normal operating range
    (NaN for nodes without a pressure sensor)."""
    if config.profile == "realistic":
        return _realistic().node_metadata(config)
    nodes, districts = _layout(config.nodes, config.seed)
    df = pd.DataFrame(
        {
            "node_id": [n.node_id for n in nodes],
            "node_name": [n.name for n in nodes],
            "node_type": [n.node_type for n in nodes],
            "district": [districts[n.district].name for n in nodes],
            "latitude": np.array([n.lat for n in nodes], dtype=np.float64),
            "longitude": np.array([n.lon for n in nodes], dtype=np.float64),
            "balance_role": [n.role for n in nodes],
            "expected_cadence_s": np.full(len(nodes), int(config.cadence_s), dtype=np.int64),
            "pressure_min_bar": np.array([n.pmin for n in nodes], dtype=np.float64),
            "pressure_max_bar": np.array([n.pmax for n in nodes], dtype=np.float64),
            "is_bidirectional": np.array([n.bidirectional for n in nodes], dtype=bool),
        }
    )
    return df[list(METADATA_COLUMNS)]


def node_measurements(config: SyntheticConfig) -> dict[str, frozenset[str]]:
    """node_id -> the measurement columns the node reports (the others are null)."""
    if config.profile == "realistic":
        return _realistic().node_measurements(config)
    nodes, _ = _layout(config.nodes, config.seed)
    return {n.node_id: n.has for n in nodes}


def natural_resets(config: SyntheticConfig) -> list[tuple[str, datetime]]:
    """Ground truth of the rare natural totaliser resets: ``(node_id, nominal time)``.

    The volume is exactly 0 at that grid time (which may itself be a missing row).
    The realistic profile has none: its resets and rollovers are in its truth's glitches."""
    if config.profile == "realistic":
        return []
    nodes, _ = _layout(config.nodes, config.seed)
    n = _n_steps(config)
    start, _ = data_window(config)
    out = []
    for nd in nodes:
        for i in _reset_positions(config, nd, n):
            out.append((nd.node_id, start + timedelta(seconds=int(i) * config.cadence_s)))
    return out


def _reset_positions(config: SyntheticConfig, nd: _Node, n: int) -> np.ndarray:
    if "volume" not in nd.has or n < 2:
        return np.empty(0, dtype=np.int64)
    rng = _rng(config.seed, 4, nd.idx)
    years = n * config.cadence_s / (365.25 * 86400)
    count = int(rng.poisson(years))
    return np.unique(rng.integers(1, n, count))


# --------------------------------------------------------------------------- time grid


def _bump(h: np.ndarray, center: float, width: float) -> np.ndarray:
    d = (h - center + 12.0) % 24.0 - 12.0
    return np.exp(-0.5 * (d / width) ** 2)


def _plateau(h: np.ndarray, on: float, off: float, w: float) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-(h - on) / w)) / (1.0 + np.exp(-(off - h) / w))


def _raw_profile(cls: str, h: np.ndarray, dow: np.ndarray) -> np.ndarray:
    weekday = dow < 5
    saturday = dow == 5
    if cls == "residential":
        wd = (
            0.25
            + 1.25 * _bump(h, 7.25, 1.1)
            + 0.55 * _bump(h, 12.5, 2.0)
            + 0.95 * _bump(h, 20.0, 1.7)
        )
        we = (
            0.28
            + 0.95 * _bump(h, 9.5, 1.8)
            + 0.75 * _bump(h, 13.0, 2.2)
            + 0.85 * _bump(h, 20.0, 1.9)
        )
        return np.where(weekday, wd, we)
    if cls == "commercial":
        wd = 0.12 + 1.0 * _plateau(h, 7.5, 19.0, 0.5) + 0.25 * _bump(h, 12.5, 1.5)
        sat = 0.12 + 0.6 * _plateau(h, 8.5, 13.5, 0.5)
        sun = 0.13 + 0.05 * _bump(h, 11.0, 3.0)
        return np.where(weekday, wd, np.where(saturday, sat, sun))
    # industrial: two shifts on weekdays, one on Saturday
    wd = 0.45 + 0.8 * _plateau(h, 6.0, 22.0, 0.3)
    sat = 0.45 + 0.4 * _plateau(h, 6.0, 14.0, 0.3)
    return np.where(weekday, wd, np.where(saturday, sat, 0.42))


@lru_cache(maxsize=8)
def _profile_norm(cls: str) -> float:
    h = np.tile(np.arange(1440) / 60.0, 7)
    dow = np.repeat(np.arange(7), 1440)
    return float(_raw_profile(cls, h, dow).mean())


class _Grid:
    """Nominal time grid shared by all nodes of one run."""

    def __init__(self, config: SyntheticConfig) -> None:
        start, _ = data_window(config)
        self.n = _n_steps(config)
        self.cadence_s = int(config.cadence_s)
        self.step_us = self.cadence_s * _US
        self.t0_us = _to_us(start)
        self.t_us = self.t0_us + np.arange(self.n, dtype=np.int64) * self.step_us
        self.end_us = self.t0_us + self.n * self.step_us
        t_s = self.t_us // _US
        tz = ZoneInfo(LOCAL_TZ)
        h_first = int(t_s[0] // 3600)
        h_last = int(t_s[-1] // 3600)
        offsets = np.array(
            [
                datetime.fromtimestamp(h * 3600, tz=tz).utcoffset().total_seconds()
                for h in range(h_first, h_last + 1)
            ],
            dtype=np.int64,
        )
        local_s = t_s + offsets[t_s // 3600 - h_first]
        local_day = local_s // 86400
        frac = (self.t_us % _US) / _US
        self.local_hour = ((local_s - local_day * 86400) + frac) / 3600.0
        self.dow = ((local_day + 3) % 7).astype(np.int8)  # 1970-01-01 was a Thursday
        days = self.t_us / (86400.0 * _US)
        self.season = np.cos(2 * np.pi * (days - 213.0) / 365.2425)  # peak ~1 August
        self.diurnal_temp = np.cos(2 * np.pi * (self.local_hour - 16.0) / 24.0)
        self._profiles: dict[str, np.ndarray] = {}

    def profile(self, cls: str) -> np.ndarray:
        if cls not in self._profiles:
            self._profiles[cls] = _raw_profile(cls, self.local_hour, self.dow) / _profile_norm(cls)
        return self._profiles[cls]

    def index(self, when: datetime | None, default: int) -> int:
        """First grid index whose nominal time is >= ``when``."""
        if when is None:
            return default
        us = _to_us(when)
        i = -((self.t0_us - us) // self.step_us)  # ceil division
        return int(min(max(i, 0), self.n))

    def smooth(self, rng: np.random.Generator, period_s: float, sigma: float) -> np.ndarray:
        """Piecewise-linear noise with knots every ``period_s``."""
        step = max(1, int(round(period_s / self.cadence_s)))
        m = self.n // step + 2
        knots = rng.standard_normal(m) * sigma
        return np.interp(np.arange(self.n) / step, np.arange(m), knots)


# --------------------------------------------------------------------------- signals


def _demand(grid: _Grid, rng: np.random.Generator, cls: str, scale: float) -> np.ndarray:
    noise = (
        grid.smooth(rng, 86400, 0.05) + grid.smooth(rng, 7200, 0.07) + grid.smooth(rng, 900, 0.05)
    )
    white = 1.0 + 0.06 * rng.standard_normal(grid.n)
    q = scale * grid.profile(cls) * np.exp(noise) * white
    return np.maximum(q, 0.0)


def _pressure_noise(grid: _Grid, rng: np.random.Generator) -> np.ndarray:
    return grid.smooth(rng, 3600, 0.03) + 0.015 * rng.standard_normal(grid.n)


def _temperature(grid: _Grid, rng: np.random.Generator, nd: _Node) -> np.ndarray:
    return (
        14.0
        + nd.temp_offset
        + 5.5 * grid.season
        + 0.35 * grid.diurnal_temp
        + grid.smooth(rng, 6 * 3600, 0.15)
        + 0.03 * rng.standard_normal(grid.n)
    )


def _quality(grid: _Grid, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    n = grid.n
    q = 1.0 - 0.05 * rng.random(n) ** 2
    days = n * grid.cadence_s / 86400
    n_dips = int(rng.poisson(0.7 * days))
    starts = rng.integers(0, n, n_dips)
    lengths = np.maximum(1, (rng.uniform(300, 3600, n_dips) / grid.cadence_s).astype(np.int64))
    levels = rng.uniform(0.5, 0.9, n_dips)
    for s, length, v in zip(starts.tolist(), lengths.tolist(), levels.tolist(), strict=True):
        q[s : s + length] = np.minimum(q[s : s + length], v)
    null = rng.random(n) < _QUALITY_NULL_RATE
    return np.round(q, 3), null


def _window(grid: _Grid, f: Fault) -> tuple[int, int]:
    return grid.index(f.start, 0), grid.index(f.end, grid.n)


def _volume(
    grid: _Grid, nd: _Node, flow: np.ndarray, faults: list[Fault], resets: np.ndarray
) -> np.ndarray:
    inc = flow * (grid.cadence_s / 1000.0)
    for f in faults:
        if f.kind == "totaliser_backwards":
            i0, i1 = _window(grid, f)
            inc[i0:i1] = -f.effective_magnitude * np.abs(inc[i0:i1])
    cum = np.cumsum(inc)
    points = set(resets.tolist())
    for f in faults:
        if f.kind == "totaliser_reset":
            i0, _ = _window(grid, f)
            if i0 < grid.n:
                points.add(i0)
    if not points:
        return cum + nd.v0
    rs = np.array(sorted(points), dtype=np.int64)
    offsets = np.concatenate(([-nd.v0], cum[rs]))
    seg = np.searchsorted(rs, np.arange(grid.n), side="right")
    return cum - offsets[seg]


def _string_array(value: str, n: int) -> pa.Array:
    raw = value.encode()
    offsets = np.arange(n + 1, dtype=np.int32) * len(raw)
    return pa.StringArray.from_buffers(n, pa.py_buffer(offsets), pa.py_buffer(raw * n))


def _float_array(values: np.ndarray | None, n: int, mask: np.ndarray | None = None) -> pa.Array:
    if values is None:
        return pa.nulls(n, pa.float64())
    if mask is not None and mask.any():
        return pa.array(values, type=pa.float64(), mask=mask)
    return pa.array(values, type=pa.float64())


def _batch(
    ts_us: np.ndarray,
    node_id: str,
    name: str,
    cols: dict[str, np.ndarray | None],
    quality: np.ndarray,
    quality_null: np.ndarray,
) -> pa.RecordBatch:
    n = len(ts_us)
    arrays = [
        pa.array(ts_us, type=pa.int64()).view(pa.timestamp("us", tz="UTC")),
        _string_array(node_id, n),
        _string_array(name, n),
        *(_float_array(cols.get(c), n) for c in _MEASURES),
        _float_array(quality, n, quality_null),
    ]
    return pa.RecordBatch.from_arrays(arrays, schema=RAW_SCHEMA)


# --------------------------------------------------------------------------- generation


@dataclass
class _BadPlan:
    i: int
    kind: str
    node: int
    u: float
    value: float
    row: dict | None = None


def _plan_bad_rows(config: SyntheticConfig, nodes: tuple[_Node, ...]) -> list[_BadPlan]:
    rng = _rng(config.seed, 3)
    need = {
        "nan_flow": "flow_rate",
        "flow_too_high": "flow_rate",
        "inf_pressure": "pressure",
        "negative_pressure": "pressure",
        "temperature_99": "temperature",
        "negative_volume": "volume",
    }
    plans = []
    for i in range(config.bad_rows):
        kind = BAD_ROW_KINDS[i % len(BAD_ROW_KINDS)]
        measure = need.get(kind)
        eligible = [nd.idx for nd in nodes if measure is None or measure in nd.has] or [0]
        node = eligible[int(rng.integers(0, len(eligible)))]
        u = float(rng.random())
        if kind == "flow_too_high":
            value = round(float(rng.uniform(10_000.5, 50_000.0)), 3)
        elif kind == "negative_pressure":
            value = -round(float(rng.uniform(0.2, 3.0)), 3)
        elif kind == "negative_volume":
            value = -round(float(rng.uniform(1.0, 10_000.0)), 3)
        elif kind == "duplicate":
            value = float(rng.uniform(0.1, 0.4))
        elif kind == "timestamp_1999":
            value = float(rng.uniform(0.0, 364.0 * 86400))
        else:
            float(rng.random())  # keep one draw per row for stability
            value = 0.0
        plans.append(_BadPlan(i, kind, node, u, value))
    return plans


def _validate_faults(
    config: SyntheticConfig, nodes: tuple[_Node, ...], districts: tuple[_District, ...]
) -> None:
    by_id = {n.node_id: n for n in nodes}
    names = {d.name for d in districts}
    for f in config.faults:
        if f.kind == "leak":
            if f.target not in names:
                raise ValueError(
                    f"leak target must be a district ({sorted(names)}), got {f.target!r}"
                )
            continue
        nd = by_id.get(f.target)
        if nd is None:
            raise ValueError(f"{f.kind} target {f.target!r} is not a node_id of this network")
        required = {
            "pressure_drop": "pressure",
            "reverse_flow": "flow_rate",
            "totaliser_reset": "volume",
            "totaliser_backwards": "volume",
        }.get(f.kind)
        if required and required not in nd.has:
            raise ValueError(
                f"{f.kind} needs a node with {required}; {f.target} has {sorted(nd.has)}"
            )


def iter_batches(config: SyntheticConfig) -> Iterator[pa.RecordBatch]:
    """Stream the raw readings as RecordBatches with :data:`RAW_SCHEMA`.

    One batch per node (node_id order, each sorted by time), then one batch of bad
    rows if ``config.bad_rows``.  Memory is bounded by one district's signals.
    Invalid faults raise ``ValueError`` here, before the first batch."""
    if config.profile == "realistic":
        return _realistic().iter_batches(config)
    nodes, districts = _layout(config.nodes, config.seed)
    _validate_faults(config, nodes, districts)
    return _generate_batches(config, nodes, districts)


def _generate_batches(
    config: SyntheticConfig, nodes: tuple[_Node, ...], districts: tuple[_District, ...]
) -> Iterator[pa.RecordBatch]:
    grid = _Grid(config)
    plans = _plan_bad_rows(config, nodes)
    plans_by_node: dict[int, list[_BadPlan]] = {}
    for p in plans:
        plans_by_node.setdefault(p.node, []).append(p)
    first_row: dict | None = None
    for dist in districts:
        for batch, nd, rows in _district(config, grid, dist, nodes):
            if first_row is None and rows["ts"].size:
                first_row = _row_at(rows, 0, nd)
            for p in plans_by_node.get(nd.idx, ()):
                m = rows["ts"].size
                if m:
                    p.row = _row_at(rows, min(int(p.u * m), m - 1), nd)
            yield batch
    if plans:
        yield _bad_batch(config, grid, plans, nodes, first_row)


def _row_at(rows: dict, j: int, nd: _Node) -> dict:
    out = {"ts": int(rows["ts"][j]), "node_id": nd.node_id, "node_name": nd.name}
    for c in _MEASURES:
        v = rows[c]
        out[c] = None if v is None else float(v[j])
    out["quality_score"] = None if rows["qnull"][j] else float(rows["quality"][j])
    return out


def _district(
    config: SyntheticConfig, grid: _Grid, dist: _District, nodes: tuple[_Node, ...]
) -> Iterator[tuple[pa.RecordBatch, _Node, dict]]:
    n = grid.n
    members = [nodes[i] for i in dist.nodes]
    node_faults: dict[int, list[Fault]] = {nd.idx: [] for nd in members}
    by_id = {nd.node_id: nd for nd in members}
    leaks = [f for f in config.faults if f.kind == "leak" and f.target == dist.name]
    for f in config.faults:
        if f.kind != "leak" and f.target in by_id:
            node_faults[by_id[f.target].idx].append(f)

    rngs = {nd.idx: _rng(config.seed, 1, nd.idx) for nd in members}
    drng = _rng(config.seed, 2, dist.idx)
    demand_mean = _district_demand(dist, nodes)
    total_mean = _district_total(dist, nodes)
    shares = _inlet_shares(dist, nodes)

    # --- physical flows
    flow: dict[int, np.ndarray] = {}
    demand = np.zeros(n)
    exports = np.zeros(n)
    for nd in members:
        if nd.role == "consumption":
            flow[nd.idx] = _demand(grid, rngs[nd.idx], nd.demand_class, nd.scale)
            demand += flow[nd.idx]
        elif nd.role == "outlet":
            q = _demand(grid, rngs[nd.idx], "industrial", nd.scale)
            flow[nd.idx] = q
            exports += q
    if dist.hidden_scale > 0:
        demand += _demand(grid, drng, "residential", dist.hidden_scale)

    burst_district = np.zeros(n)
    burst_inlet = {i: np.zeros(n) for i in shares}
    local_drop = {nd.idx: np.zeros(n) for nd in members}
    for nd in members:
        for f in node_faults[nd.idx]:
            if f.kind != "burst":
                continue
            i0, i1 = _window(grid, f)
            mag = f.effective_magnitude
            if nd.role == "inlet":
                burst_inlet[nd.idx][i0:i1] += mag * shares[nd.idx] * total_mean
            elif nd.role == "monitoring":
                burst_district[i0:i1] += mag * demand_mean
            else:
                extra = mag * nd.scale
                flow[nd.idx][i0:i1] += extra
                burst_district[i0:i1] += extra
            local_drop[nd.idx][i0:i1] += min(0.4 * mag, 0.5 * nd.head)

    q_pre = demand + exports + burst_district + sum(burst_inlet.values())
    # background leakage: constant-ish with N1 = 1 pressure dependence
    rel = (q_pre / (2.0 * total_mean)) ** 2
    zone = (1.0 - 0.2 * rel) / (1.0 - 0.2 * 0.25)
    background = dist.leak_frac * demand_mean * zone * np.exp(grid.smooth(drng, 6 * 3600, 0.03))
    q_zone = q_pre + background  # drives the pressures inside the district
    leak_extra = np.zeros(n)
    for f in leaks:
        i0, i1 = _window(grid, f)
        if i0 >= i1:
            continue
        ramp_end = _to_us(f.end) if f.end is not None else grid.end_us
        frac = (grid.t_us[i0:i1] - _to_us(f.start)) / max(ramp_end - _to_us(f.start), 1)
        leak_extra[i0:i1] += f.effective_magnitude * demand_mean * np.clip(frac, 0.0, 1.0)
    q_inlets_total = q_zone - sum(burst_inlet.values()) + leak_extra
    if len(shares) == 2:
        first = min(shares)
        s = np.clip(shares[first] + grid.smooth(drng, 6 * 3600, 0.03), 0.3, 0.85)
        share_t = {first: s, max(shares): 1.0 - s}
    else:
        share_t = {i: np.ones(n) for i in shares}

    # --- per node sensors
    for nd in members:
        rng = rngs[nd.idx]
        cols: dict[str, np.ndarray | None] = dict.fromkeys(_MEASURES)
        ref_q = 2.0 * total_mean
        if nd.role == "inlet":
            true_q = q_inlets_total * share_t[nd.idx] + burst_inlet[nd.idx]
            reported = true_q * (1.0 + 0.003 * rng.standard_normal(n))
            cols["flow_rate"] = reported
            ref_q = 2.0 * total_mean * shares[nd.idx]
            head_q = true_q
        else:
            if "flow_rate" in nd.has:
                cols["flow_rate"] = flow[nd.idx]
            head_q = q_zone
        if "pressure" in nd.has:
            k = nd.loss_frac * nd.head / ref_q**2
            p = nd.head - k * head_q**2 + _pressure_noise(grid, rng) - local_drop[nd.idx]
            cols["pressure"] = p
        if "temperature" in nd.has:
            cols["temperature"] = np.round(_temperature(grid, rng, nd), 2)
        quality, qnull = _quality(grid, rng)
        missing = rng.random(n) < _MISSING_RATE
        jit = min(2000, grid.step_us // 4000)
        jitter = rng.integers(-jit, jit + 1, n) * 1000

        faults = node_faults[nd.idx]
        for f in faults:
            i0, i1 = _window(grid, f)
            if f.kind == "pressure_drop":
                cols["pressure"][i0:i1] -= f.effective_magnitude
            elif f.kind == "reverse_flow":
                cols["flow_rate"][i0:i1] = -f.effective_magnitude * np.abs(cols["flow_rate"][i0:i1])
        for f in faults:
            if f.kind == "stuck":
                i0, i1 = _window(grid, f)
                src = max(i0 - 1, 0)
                for c in ("flow_rate", "pressure"):
                    v = cols[c]
                    if v is not None and i0 < n:
                        v[i0:i1] = round(float(v[src]), 3)
        if cols["pressure"] is not None:
            cols["pressure"] = np.round(np.maximum(cols["pressure"], 0.0), 3)
        if cols["flow_rate"] is not None:
            cols["flow_rate"] = np.round(cols["flow_rate"], 3)
        if "volume" in nd.has:
            resets = _reset_positions(config, nd, n)
            cols["volume"] = np.round(_volume(grid, nd, cols["flow_rate"], faults, resets), 3)

        keep = ~missing
        for f in faults:
            if f.kind == "gap":
                i0, i1 = _window(grid, f)
                keep[i0:i1] = False
        idx = np.flatnonzero(keep)
        ts = grid.t_us[idx] + jitter[idx]
        out = {c: (None if v is None else v[idx]) for c, v in cols.items()}
        rows = {"ts": ts, **out, "quality": quality[idx], "qnull": qnull[idx]}
        yield _batch(ts, nd.node_id, nd.name, out, rows["quality"], rows["qnull"]), nd, rows


def _bad_batch(
    config: SyntheticConfig,
    grid: _Grid,
    plans: list[_BadPlan],
    nodes: tuple[_Node, ...],
    first_row: dict | None,
) -> pa.RecordBatch:
    half = grid.step_us // 2
    records = []
    for p in plans:
        nd = nodes[p.node]
        row = p.row
        if row is None and p.kind == "duplicate" and first_row is not None:
            row = first_row
        if row is None:  # node never emitted a row (gapped for the whole window)
            row = {
                "ts": grid.t0_us + min(int(p.u * grid.n), grid.n - 1) * grid.step_us,
                "node_id": nd.node_id,
                "node_name": nd.name,
                **{c: (1.0 if c in nd.has else None) for c in _MEASURES},
                "quality_score": 1.0,
            }
        r = dict(row)
        if p.kind != "duplicate":
            r["ts"] = r["ts"] + half + p.i
        k = p.kind
        if k == "nan_flow":
            r["flow_rate"] = float("nan")
        elif k == "inf_pressure":
            r["pressure"] = float("inf")
        elif k == "flow_too_high":
            r["flow_rate"] = p.value
        elif k == "negative_pressure":
            r["pressure"] = p.value
        elif k == "temperature_99":
            r["temperature"] = 99.0
        elif k == "negative_volume":
            r["volume"] = p.value
        elif k == "quality_1_5":
            r["quality_score"] = 1.5
        elif k == "empty_node_id":
            r["node_id"] = ""
        elif k == "timestamp_1999":
            r["ts"] = _to_us(datetime(1999, 1, 1, tzinfo=UTC)) + int(p.value * _US) + p.i
        elif k == "duplicate":
            q = r["quality_score"]
            r["quality_score"] = round(max(0.0, (1.0 if q is None else q) - p.value), 3)
        elif k == "all_null":
            for c in _MEASURES:
                r[c] = None
        records.append(r)
    return pa.RecordBatch.from_pydict(
        {
            "timestamp": pa.array([r["ts"] for r in records], pa.int64()).view(
                pa.timestamp("us", tz="UTC")
            ),
            "node_id": [r["node_id"] for r in records],
            "node_name": [r["node_name"] for r in records],
            **{c: pa.array([r[c] for r in records], pa.float64()) for c in _MEASURES},
            "quality_score": pa.array([r["quality_score"] for r in records], pa.float64()),
        },
        schema=RAW_SCHEMA,
    )


def generate(config: SyntheticConfig) -> pd.DataFrame:
    """All rows as a pandas DataFrame (for small configs): ``timestamp`` is
    ``datetime64[us, UTC]``, measurements NumPy float64 (nulls become NaN)."""
    table = pa.Table.from_batches(list(iter_batches(config)), schema=RAW_SCHEMA)
    return table.to_pandas()


def write_parquet(config: SyntheticConfig, path: str | Path, progress: bool = False) -> int:
    """Stream the data into one zstd Parquet file at ``path``; returns the row count.

    Written to ``<path>.tmp`` then renamed, so readers never see a partial file.
    Row groups hold whole nodes (>= 100k rows each, except the last).  Output is
    byte-identical for identical configs (with an explicit ``start``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    batches = iter_batches(config)  # validates before touching the filesystem
    bar = None
    if progress:
        bar = show.counter(
            config.nodes * _n_steps(config) + config.bad_rows, f"generate {path.name}", "rows"
        )
    rows = 0
    try:
        with pq.ParquetWriter(
            tmp,
            RAW_SCHEMA,
            compression="zstd",
            # jittered timestamps compress far better delta-encoded (~30 % smaller file)
            use_dictionary=[f.name for f in RAW_SCHEMA if f.name != "timestamp"],
            column_encoding={"timestamp": "DELTA_BINARY_PACKED"},
        ) as writer:
            buffer: list[pa.RecordBatch] = []
            buffered = 0
            for batch in batches:
                buffer.append(batch)
                buffered += batch.num_rows
                if buffered >= _ROW_GROUP_ROWS:
                    writer.write_table(pa.Table.from_batches(buffer, schema=RAW_SCHEMA))
                    rows += buffered
                    if bar is not None:
                        bar.update(buffered)
                    buffer, buffered = [], 0
            if buffer:
                writer.write_table(pa.Table.from_batches(buffer, schema=RAW_SCHEMA))
                rows += buffered
                if bar is not None:
                    bar.update(buffered)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    finally:
        if bar is not None:
            bar.total = bar.n
            bar.close()
    return rows
