"""The ``realistic`` profile of the synthetic generator: a network as unkind as real ones.

``SyntheticConfig(profile="realistic")`` routes :mod:`flows.loaders.synthetic` here; the
default profile is untouched.  docs/synthetic.md describes every effect and parameter;
:func:`realistic_truth` returns the ground truth (incidents, glitches, true flows) that
benchmarks score detections against.

The model runs on a 60-second internal grid (``FINE_STEP_S``) per district::

    reservoir -> pump station -> tank -> inlet meter -> district (customers + leakage)

* inlet true flow = metered demand + unmetered demand + background leakage + incidents;
* the pump station fills the tank: 0, one pump (duty point Q1) or two pumps (Q2), by
  level hysteresis with a night tariff (pumps fill the tank at night and stop when full);
* the tank level integrates pump flow minus inlet flow;
* each sensor samples the true signal at its own cadence (inlets and pumps at
  ``cadence_s``, tanks at 5 min, loggers at 15 min, consumption meters at 5 or 15 min);
  totalisers integrate the *true* 60-second flow, so coarse instantaneous readings and
  totaliser deltas disagree as they do on real meters.

Randomness: layout, signals, incident plan and glitch plan each draw from their own seeded
stream, so ``incidents=False`` (or ``glitches=False``) changes nothing else: the clean and
the faulty network share every noise sample.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import timedelta
from functools import lru_cache
from pathlib import Path

import holidays
import numpy as np
import pandas as pd
import pyarrow as pa

from flows.loaders import synthetic as base

FINE_STEP_S = 60
LEAK_SIZES = (0.02, 0.03, 0.05, 0.10)  # step leaks, share of the district's nominal demand
GROWING_LEAK = (0.20, 14.0)  # growing leak: final share, days from 0 to it
BURST_SIZES = (0.10, 0.25, 0.50)
BURST_HOURS = 2.0
LEAK_REPAIR_DAYS = 10.0  # a step leak is repaired this long after it starts
WARMUP_DAYS = 21.0  # no incident before this (capped at half the data)
TANK_CADENCE_S = 300
LOGGER_CADENCE_S = 900
CONSUMPTION_CADENCES_S = (300, 900)
# glitches per node and 30 days (Poisson means)
GLITCH_RATES = {
    "flow_spike": 1.0,
    "totaliser_spike": 0.5,
    "stuck": 0.3,
    "gap": 0.5,
    "totaliser_reset": 0.1,
}
DUPLICATE_RATE = 0.001  # share of rows sent twice
LATE_RATE = 0.0005  # share of rows that arrive after everything else
ROLLOVER_SHARE = 0.25  # share of totalisers set to wrap around during the data
LEVEL_BAR_PER_M = 0.0980665  # a tank level is reported as its hydrostatic head in bar

_US = 1_000_000
_CLASSES = ("residential", "commercial", "industrial")

# `incidents`, `glitches` and `district_flows` columns (the truth contract)
INCIDENT_COLUMNS = (
    "incident_id",
    "kind",
    "shape",
    "district",
    "start",
    "end",
    "magnitude",
    "flow_l_s",
    "ramp_days",
)
GLITCH_COLUMNS = ("node_id", "kind", "start", "end", "value")


@dataclass
class _RNode(base._Node):
    """A default-profile node plus what a real meter adds: its own cadence, a deadband and a register."""

    cadence_s: int = 0
    deadband: float = 0.0  # on the node's main measurement; 0 = none
    register: float = 1e8  # totaliser wraps to 0 here


@dataclass
class _RDistrict:
    idx: int
    name: str
    nodes: list[int] = field(default_factory=list)
    metered_share: float = 1.0
    hidden_scale: float = 0.0
    background_frac: float = 0.08
    elevation_head: float = 4.0  # bar at the inlet with an empty tank and no flow
    pumped: bool = False
    tank_area_m2: float = 0.0
    lift_bar: float = 3.0


@dataclass(frozen=True)
class RealisticTruth:
    """Ground truth of a realistic network.

    * ``incidents``: one row per injected leak or burst (:data:`INCIDENT_COLUMNS`);
      ``end`` NaT = still running at the end of the data; ``magnitude`` share of the
      district's nominal demand; ``flow_l_s`` the flow at full magnitude.
    * ``glitches``: one row per injected meter glitch (:data:`GLITCH_COLUMNS`), nominal
      grid times, ``end`` exclusive (= start + cadence for single readings).
    * ``district_flows``: per district and 60-second step, the true components in L/s:
      metered_demand, unmetered_demand, background_leakage, leak_flow, burst_flow,
      inlet_flow (their sum), pump_flow, tank_level_m.
    * ``district_demand``: district -> nominal mean demand (L/s) the magnitudes refer to.
    """

    incidents: pd.DataFrame
    glitches: pd.DataFrame
    district_flows: pd.DataFrame
    district_demand: dict[str, float]


def check_config(config) -> None:
    if config.cadence_s % FINE_STEP_S:
        raise ValueError(
            f"profile 'realistic' needs cadence_s as a multiple of {FINE_STEP_S} s, "
            f"got {config.cadence_s}"
        )
    if config.faults or config.bad_rows:
        raise ValueError(
            "profile 'realistic' injects its own incidents and glitches; "
            "faults and bad_rows apply to the default profile only"
        )


# --------------------------------------------------------------------------- layout


@lru_cache(maxsize=16)
def _layout(
    nodes: int, seed: int, cadence_s: int
) -> tuple[tuple[_RNode, ...], tuple[_RDistrict, ...]]:
    rng = base._rng(seed, 100)
    n_d = max(1, round(nodes / 10))
    sizes = [nodes // n_d + (1 if i < nodes % n_d else 0) for i in range(n_d)]
    out_nodes: list[_RNode] = []
    districts: list[_RDistrict] = []

    def cad(native: int) -> int:
        return max(cadence_s, -(-native // cadence_s) * cadence_s)

    for d, s in enumerate(sizes):
        dname = f"DMA-{d + 1:02d}"
        roles = ["inlet"]
        if s >= 4:
            roles += ["pump", "tank"]
        rest = s - len(roles)
        n_mon = 0 if rest < 3 else max(1, round(rest * 0.25))
        roles += ["consumption"] * (rest - n_mon) + ["monitoring"] * n_mon
        dist = _RDistrict(
            idx=d,
            name=dname,
            metered_share=1.0 if rng.random() < 0.4 else float(rng.uniform(0.3, 0.7)),
            background_frac=float(rng.uniform(0.05, 0.12)),
            elevation_head=float(rng.uniform(3.0, 4.5)),
            pumped="pump" in roles,
            lift_bar=float(rng.uniform(2.5, 4.0)),
        )
        dlat = base._CENTER[0] + float(rng.normal(0, 0.03))
        dlon = base._CENTER[1] + float(rng.normal(0, 0.04))
        counters: dict[str, int] = {}
        for role in roles:
            idx = len(out_nodes)
            common = dict(
                idx=idx,
                node_id=f"N{idx + 1:04d}",
                district=d,
                lat=round(dlat + float(rng.normal(0, 0.004)), 6),
                lon=round(dlon + float(rng.normal(0, 0.005)), 6),
                temp_offset=float(rng.normal(0, 0.4)),
            )
            if role == "inlet":
                nd = _RNode(
                    **common,
                    name=f"{dname} Inlet",
                    node_type="bulk_meter",
                    role="inlet",
                    has=frozenset({"flow_rate", "pressure", "volume", "temperature"}),
                    cadence_s=cadence_s,
                    loss_frac=float(rng.uniform(0.04, 0.1)),
                    v0=base._log_uniform(rng, 1e5, 5e6),
                    register=1e7,
                )
            elif role == "pump":
                nd = _RNode(
                    **common,
                    name=f"{dname} Pump Station",
                    node_type="pump",
                    role="monitoring",
                    has=frozenset({"flow_rate", "pressure", "volume"}),
                    cadence_s=cadence_s,
                    v0=base._log_uniform(rng, 1e5, 5e6),
                    register=1e7,
                )
            elif role == "tank":
                nd = _RNode(
                    **common,
                    name=f"{dname} Tank",
                    node_type="tank",
                    role="monitoring",
                    has=frozenset({"pressure"}),
                    cadence_s=cad(TANK_CADENCE_S),
                    deadband=round(float(rng.uniform(0.03, 0.08)) * LEVEL_BAR_PER_M, 4),
                )
            elif role == "consumption":
                k_all = counters["consumption"] = counters.get("consumption", 0) + 1
                # the first meter of a district is a customer class that empties on holidays
                cls = (
                    ("commercial", "industrial")[d % 2]
                    if k_all == 1
                    else _CLASSES[int(rng.choice(3, p=[0.5, 0.3, 0.2]))]
                )
                k = counters[cls] = counters.get(cls, 0) + 1
                full = rng.random() < 0.3
                scale = {
                    "residential": base._log_uniform(rng, 0.5, 4.0),
                    "commercial": base._log_uniform(rng, 0.5, 3.0),
                    "industrial": float(rng.uniform(1.5, 4.0)),
                }[cls]
                nd = _RNode(
                    **common,
                    name=f"{dname} {cls.capitalize()} {k:02d}",
                    node_type="multi_sensor" if full else "flow_meter",
                    role="consumption",
                    has=frozenset(
                        {"flow_rate", "volume"} | ({"pressure", "temperature"} if full else set())
                    ),
                    cadence_s=cad(int(rng.choice(CONSUMPTION_CADENCES_S))),
                    demand_class=cls,
                    scale=scale,
                    deadband=round(0.02 * scale, 3) if rng.random() < 0.5 else 0.0,
                    loss_frac=float(rng.uniform(0.08, 0.2)),
                    v0=base._log_uniform(rng, 1e3, 9e4),
                    register=1e5,
                )
            else:
                k = counters["monitoring"] = counters.get("monitoring", 0) + 1
                nd = _RNode(
                    **common,
                    name=f"{dname} Pressure Logger {k:02d}",
                    node_type="pressure_logger",
                    role="monitoring",
                    has=frozenset({"pressure"}),
                    cadence_s=cad(LOGGER_CADENCE_S),
                    deadband=round(float(rng.uniform(0.01, 0.03)), 3),
                    loss_frac=float(rng.uniform(0.1, 0.25)),
                )
            dist.nodes.append(idx)
            out_nodes.append(nd)
        members = [out_nodes[i] for i in dist.nodes]
        metered = sum(m.scale for m in members if m.role == "consumption")
        if metered == 0:
            dist.metered_share = 0.0
            dist.hidden_scale = float(rng.uniform(5.0, 15.0))
        elif dist.metered_share < 1.0:
            dist.hidden_scale = metered * (1.0 / dist.metered_share - 1.0)
        demand = metered + dist.hidden_scale
        total = demand * (1.0 + dist.background_frac)
        # a tank holds 8-14 hours of the district's mean inflow between 1 and 5 m
        dist.tank_area_m2 = float(rng.uniform(8.0, 14.0)) * 3.6 * total / 4.0
        for m in members:
            m.head = dist.elevation_head
            if m.role == "inlet":
                m.pmin = round(max(0.5, dist.elevation_head - 1.0), 1)
                m.pmax = round(dist.elevation_head + 0.5 + 5 * LEVEL_BAR_PER_M, 1)
            elif m.node_type == "pump":  # from standstill (tank head) to both pumps running
                m.pmin = 0.1
                m.pmax = round(dist.elevation_head + 0.5 + 5 * LEVEL_BAR_PER_M + dist.lift_bar, 1)
            elif m.node_type == "tank":
                m.pmin, m.pmax = round(0.5 * LEVEL_BAR_PER_M, 2), round(5.5 * LEVEL_BAR_PER_M, 2)
            elif "pressure" in m.has:
                m.pmin = round(max(0.5, dist.elevation_head * 0.7 - 0.5), 1)
                m.pmax = round(dist.elevation_head + 1.0, 1)
        districts.append(dist)
    return tuple(out_nodes), tuple(districts)


def _nodes(config) -> tuple[tuple[_RNode, ...], tuple[_RDistrict, ...]]:
    return _layout(int(config.nodes), int(config.seed), int(config.cadence_s))


def _demand_mean(dist: _RDistrict, nodes: tuple[_RNode, ...]) -> float:
    return dist.hidden_scale + sum(
        nodes[i].scale for i in dist.nodes if nodes[i].role == "consumption"
    )


def node_metadata(config) -> pd.DataFrame:
    nodes, districts = _nodes(config)
    df = pd.DataFrame(
        {
            "node_id": [n.node_id for n in nodes],
            "node_name": [n.name for n in nodes],
            "node_type": [n.node_type for n in nodes],
            "district": [districts[n.district].name for n in nodes],
            "latitude": np.array([n.lat for n in nodes], dtype=np.float64),
            "longitude": np.array([n.lon for n in nodes], dtype=np.float64),
            "balance_role": [n.role for n in nodes],
            "expected_cadence_s": np.array([n.cadence_s for n in nodes], dtype=np.int64),
            "pressure_min_bar": np.array([n.pmin for n in nodes], dtype=np.float64),
            "pressure_max_bar": np.array([n.pmax for n in nodes], dtype=np.float64),
            "is_bidirectional": np.zeros(len(nodes), dtype=bool),
        }
    )
    return df[list(base.METADATA_COLUMNS)]


def node_measurements(config) -> dict[str, frozenset[str]]:
    nodes, _ = _nodes(config)
    return {n.node_id: n.has for n in nodes}


def node_deadbands(config) -> dict[str, float]:
    """node_id -> deadband of its main measurement (flow L/s, pressure/level bar); 0 = none."""
    nodes, _ = _nodes(config)
    return {n.node_id: n.deadband for n in nodes}


# --------------------------------------------------------------------------- time


class _FineGrid(base._Grid):
    """The 60-second grid with public holidays mapped to Sunday demand."""

    def __init__(self, config) -> None:
        start, end = base.data_window(config)
        days = (end - start) / timedelta(days=1)
        super().__init__(
            replace(config, start=start, days=days, cadence_s=FINE_STEP_S, profile="default")
        )
        local = (
            pd.to_datetime(self.t_us, unit="us", utc=True)
            .tz_convert(base.LOCAL_TZ)
            .tz_localize(None)
        )
        self.local_date = local.values.astype("datetime64[D]")
        self.is_holiday = np.isin(self.local_date, _holidays(self.local_date))
        self.dow = np.where(self.is_holiday, 6, self.dow).astype(np.int8)
        self.night = (self.local_hour >= 22.0) | (self.local_hour < 6.0)


def _holidays(dates: np.ndarray) -> np.ndarray:

    if not len(dates):
        return np.empty(0, dtype="datetime64[D]")
    years = range(int(str(dates[0])[:4]), int(str(dates[-1])[:4]) + 1)
    cal = holidays.country_holidays("IT", years=years)
    return np.array(sorted(cal.keys()), dtype="datetime64[D]")


def holiday_dates(config) -> list:
    """Local dates (Europe/Rome) within the data that are Italian public holidays."""
    grid = _FineGrid(config)
    return sorted({pd.Timestamp(d).date() for d in grid.local_date[grid.is_holiday]})


# --------------------------------------------------------------------------- incidents


def _plan_incidents(config, grid: _FineGrid, districts, nodes) -> pd.DataFrame:
    rows = []
    if config.incidents:
        rng = base._rng(config.seed, 101)
        n = grid.n
        warm = min(int(WARMUP_DAYS * 1440), n // 2)
        span = n - warm
        kinds = [*LEAK_SIZES, "growing"]
        for dist in districts:
            demand = _demand_mean(dist, nodes)
            # burst in the first third of the incident period, leak after it
            b0 = warm + int(rng.integers(0, max(1, span // 3 - 180)))
            bsize = BURST_SIZES[(dist.idx + config.seed) % len(BURST_SIZES)]
            b1 = min(b0 + int(BURST_HOURS * 60), n)
            rows.append(("burst", "step", dist.name, b0, b1, bsize, demand * bsize, 0.0))
            lo = warm + span // 3
            hi = max(lo + 1, n - max(span // 4, 1440))
            l0 = int(rng.integers(lo, hi))
            kind = kinds[(dist.idx + config.seed) % len(kinds)]
            if kind == "growing":
                size, ramp = GROWING_LEAK
                rows.append(("leak", "ramp", dist.name, l0, None, size, demand * size, ramp))
            else:
                l1 = l0 + int(LEAK_REPAIR_DAYS * 1440)
                rows.append(
                    (
                        "leak",
                        "step",
                        dist.name,
                        l0,
                        l1 if l1 < n else None,
                        kind,
                        demand * kind,
                        0.0,
                    )
                )

    def ts(i: int | None) -> pd.Timestamp:
        if i is None:
            return pd.NaT
        return pd.Timestamp(int(grid.t0_us + i * grid.step_us), unit="us", tz="UTC")

    df = pd.DataFrame(
        [
            (f"INC-{k + 1:03d}", kind, shape, d, ts(i0), ts(i1), mag, flow, ramp)
            for k, (kind, shape, d, i0, i1, mag, flow, ramp) in enumerate(rows)
        ],
        columns=list(INCIDENT_COLUMNS),
    )
    df["start"] = pd.to_datetime(df["start"], utc=True)
    df["end"] = pd.to_datetime(df["end"], utc=True)
    return df


def _incident_flow(
    grid: _FineGrid, incidents: pd.DataFrame, district: str, kind: str
) -> np.ndarray:
    out = np.zeros(grid.n)
    for inc in incidents[(incidents.district == district) & (incidents.kind == kind)].itertuples():
        i0 = grid.index(inc.start.to_pydatetime(), grid.n)
        i1 = grid.n if pd.isna(inc.end) else grid.index(inc.end.to_pydatetime(), grid.n)
        if inc.shape == "ramp":
            frac = np.arange(i1 - i0) * FINE_STEP_S / (inc.ramp_days * 86400.0)
            out[i0:i1] += inc.flow_l_s * np.clip(frac, 0.0, 1.0)
        else:
            out[i0:i1] += inc.flow_l_s
    return out


# --------------------------------------------------------------------------- district physics


def _pumps(
    grid: _FineGrid, inflow_out: np.ndarray, dist: _RDistrict, q1: float, rng
) -> tuple[np.ndarray, np.ndarray]:
    """Pump flow (L/s) and tank level (m) per step: level hysteresis with a night tariff."""
    n = grid.n
    q2 = 1.8 * q1
    area = dist.tank_area_m2
    level = float(rng.uniform(3.0, 4.5))
    running = 0
    night = grid.night.tolist()
    out = inflow_out.tolist()
    pump = [0.0] * n
    lev = [0.0] * n
    dt = FINE_STEP_S / 1000.0
    for i in range(n):
        lev[i] = level
        if running == 0:
            if level < 2.0 or (night[i] and level < 4.4):
                running = 1
        elif running == 1:
            if level >= 4.8 or (not night[i] and level >= 3.2):
                running = 0
            elif level < 1.5:
                running = 2
        elif level >= 2.5:
            running = 1
        q = (0.0, q1, q2)[running]
        pump[i] = q
        level = min(max(level + (q - out[i]) * dt / area, 0.2), 5.2)
    return np.array(pump), np.array(lev)


def _simulate(config, grid: _FineGrid, dist: _RDistrict, nodes, incidents: pd.DataFrame) -> dict:
    """True 60-second signals of one district (nothing reported yet)."""
    members = [nodes[i] for i in dist.nodes]
    drng = base._rng(config.seed, 102, dist.idx)
    flows = {
        nd.idx: base._demand(grid, base._rng(config.seed, 103, nd.idx), nd.demand_class, nd.scale)
        for nd in members
        if nd.role == "consumption"
    }
    metered = sum(flows.values()) if flows else np.zeros(grid.n)
    unmetered = (
        base._demand(grid, drng, "residential", dist.hidden_scale)
        if dist.hidden_scale > 0
        else np.zeros(grid.n)
    )
    demand_mean = _demand_mean(dist, nodes)
    leak = _incident_flow(grid, incidents, dist.name, "leak")
    burst = _incident_flow(grid, incidents, dist.name, "burst")
    q_demand = metered + unmetered
    rel = (q_demand / (2.0 * demand_mean)) ** 2
    background = (
        dist.background_frac
        * demand_mean
        * (1.0 - 0.2 * rel)
        / 0.95
        * np.exp(grid.smooth(drng, 6 * 3600, 0.03))
    )
    inlet = q_demand + background + leak + burst
    if dist.pumped:
        q1 = float(drng.uniform(1.15, 1.35)) * demand_mean * (1 + dist.background_frac)
        pump, level = _pumps(grid, inlet, dist, q1, drng)
    else:
        pump, level = np.zeros(grid.n), np.full(grid.n, 3.0)
    return {
        "consumption": flows,
        "metered_demand": metered,
        "unmetered_demand": unmetered,
        "background_leakage": background,
        "leak_flow": leak,
        "burst_flow": burst,
        "inlet_flow": inlet,
        "pump_flow": pump,
        "tank_level_m": level,
        "demand_mean": demand_mean,
    }


# --------------------------------------------------------------------------- sensors


def _deadband(x: np.ndarray, db: float) -> np.ndarray:
    """Report a new value only when it moved more than ``db`` from the last reported one."""
    if db <= 0 or not len(x):
        return x
    out = x.tolist()
    last = out[0]
    for i, v in enumerate(out):
        if abs(v - last) > db:
            last = v
        out[i] = last
    return np.array(out)


def _plan_glitches(config, grid: _FineGrid, nd: _RNode, n_samples: int) -> list[tuple]:
    """[(kind, first sample, end sample, value)] for one node, from its own stream."""
    if not config.glitches or n_samples < 10:
        return []
    rng = base._rng(config.seed, 104, nd.idx)
    months = grid.n * FINE_STEP_S / (30 * 86400.0)
    per_sample = nd.cadence_s
    out = []
    for kind, rate in GLITCH_RATES.items():
        count = int(rng.poisson(rate * months))
        for _ in range(count):
            j = int(rng.integers(1, n_samples - 1))
            if kind in ("flow_spike",) and "flow_rate" not in nd.has:
                continue
            if kind in ("totaliser_spike", "totaliser_reset") and "volume" not in nd.has:
                continue
            if kind == "stuck":
                length = max(2, int(rng.uniform(2, 12) * 3600 / per_sample))
                out.append((kind, j, min(j + length, n_samples), 0.0))
            elif kind == "gap":
                length = max(1, int(rng.uniform(1, 8) * 3600 / per_sample))
                out.append((kind, j, min(j + length, n_samples), 0.0))
            elif kind == "flow_spike":
                out.append((kind, j, j + 1, float(rng.uniform(3.0, 10.0))))
            elif kind == "totaliser_spike":
                out.append((kind, j, j + 1, float(rng.uniform(50.0, 500.0))))
            else:
                out.append((kind, j, n_samples, 0.0))
    return out


def _node_rows(
    config, grid: _FineGrid, nd: _RNode, dist: _RDistrict, sim: dict
) -> tuple[dict, list]:
    """Sampled, reported columns of one node (before late rows and duplicates)."""
    rng = base._rng(config.seed, 105, nd.idx)
    step = nd.cadence_s // FINE_STEP_S
    idx = np.arange(0, grid.n, step)
    m = len(idx)
    cols: dict[str, np.ndarray | None] = dict.fromkeys(base._MEASURES)
    true_q = None
    if nd.role == "inlet":
        true_q = sim["inlet_flow"]
    elif nd.node_type == "pump":
        true_q = sim["pump_flow"]
    elif nd.role == "consumption":
        true_q = sim["consumption"][nd.idx]
    q_in = sim["inlet_flow"]
    k_in = 0.08 * dist.elevation_head / (2.0 * sim["demand_mean"] * (1 + dist.background_frac)) ** 2
    p_inlet = dist.elevation_head + sim["tank_level_m"] * LEVEL_BAR_PER_M - k_in * q_in**2
    if true_q is not None:
        noise = 1.0 + (
            0.003 if nd.role == "inlet" or nd.node_type == "pump" else 0.01
        ) * rng.standard_normal(m)
        cols["flow_rate"] = _deadband(true_q[idx] * noise, nd.deadband)
    if "pressure" in nd.has:
        pn = base._pressure_noise(grid, rng)[idx]
        if nd.node_type == "tank":
            p = sim["tank_level_m"][idx] * LEVEL_BAR_PER_M + 0.002 * rng.standard_normal(m)
        elif nd.node_type == "pump":
            on = sim["pump_flow"][idx] > 0
            # off: the check valve closes and the discharge side sees the tank's head
            tank_head = sim["tank_level_m"][idx] * LEVEL_BAR_PER_M + 0.3
            p = np.where(on, p_inlet[idx] + dist.lift_bar, tank_head) + pn
        elif nd.role == "inlet":
            p = p_inlet[idx] + pn
        else:  # loggers and multi-sensors: further head loss inside the district
            burst_drop = 0.6 * sim["burst_flow"] / sim["demand_mean"]
            p = (
                p_inlet[idx]
                - nd.loss_frac * dist.elevation_head * (q_in[idx] / (2 * sim["demand_mean"])) ** 2
            )
            p = p - burst_drop[idx] + pn
        cols["pressure"] = _deadband(
            np.maximum(p, 0.0), nd.deadband if nd.role != "consumption" else 0.0
        )
    if "temperature" in nd.has:
        tnd = base._Node(0, "", "", "", 0, "", 0.0, 0.0, frozenset(), temp_offset=nd.temp_offset)
        cols["temperature"] = np.round(base._temperature(grid, rng, tnd)[idx], 2)
    volume_true = None
    if "volume" in nd.has:
        # the counter integrates the true 60-second flow up to each sample time
        cum = np.concatenate(([0.0], np.cumsum(true_q * (FINE_STEP_S / 1000.0))))[idx]
        if _rollover(config, nd):
            v0 = nd.register - float(rng.uniform(0.2, 0.8)) * max(cum[-1], 1.0)
        else:
            v0 = nd.v0
        volume_true = v0 + cum
        cols["volume"] = volume_true % nd.register
    glitches = _plan_glitches(config, grid, nd, m)
    keep = np.ones(m, dtype=bool)
    main = "flow_rate" if cols["flow_rate"] is not None else "pressure"
    for kind, j0, j1, value in glitches:
        if kind == "stuck":
            cols[main][j0:j1] = cols[main][j0 - 1]
        elif kind == "gap":
            keep[j0:j1] = False
        elif kind == "flow_spike":
            cols["flow_rate"][j0] = cols["flow_rate"][j0] * value + value
        elif kind == "totaliser_spike":
            cols["volume"][j0] += value
        elif kind == "totaliser_reset":  # meter replaced: the new counter starts at 0
            cols["volume"][j0:] = (volume_true[j0:] - volume_true[j0]) % nd.register
    for c in ("flow_rate", "pressure", "volume"):
        if cols[c] is not None:
            cols[c] = np.round(cols[c], 3)
    if cols["volume"] is not None:
        cols["volume"] = np.where(cols["volume"] >= nd.register, 0.0, cols["volume"])
    jitter = rng.integers(-2000, 2001, m) * 1000
    quality = np.round(1.0 - 0.05 * rng.random(m) ** 2, 3)
    rows = {"ts": grid.t_us[idx] + jitter, **cols, "quality": quality, "keep": keep}
    truth = []
    for kind, j0, j1, value in glitches:
        truth.append(
            (
                nd.node_id,
                kind,
                int(grid.t_us[idx[j0]]),
                int(grid.t_us[idx[j1 - 1]]) + nd.cadence_s * _US,
                value,
            )
        )
    if volume_true is not None:
        wraps = np.flatnonzero(np.diff(np.floor(volume_true / nd.register)) > 0) + 1
        for j in wraps.tolist():
            t = int(grid.t_us[idx[j]])
            truth.append((nd.node_id, "totaliser_rollover", t, t + nd.cadence_s * _US, nd.register))
    return rows, truth


def _rollover(config, nd: _RNode) -> bool:
    return config.glitches and bool(base._rng(config.seed, 106, nd.idx).random() < ROLLOVER_SHARE)


# --------------------------------------------------------------------------- output


def _plan(config) -> tuple[_FineGrid, tuple[_RNode, ...], tuple[_RDistrict, ...], pd.DataFrame]:
    nodes, districts = _nodes(config)
    grid = _FineGrid(config)
    return grid, nodes, districts, _plan_incidents(config, grid, districts, nodes)


def _rows_batch(nd: _RNode, rows: dict, select: np.ndarray) -> pa.RecordBatch:
    out = {c: (None if rows[c] is None else rows[c][select]) for c in base._MEASURES}
    ts = rows["ts"][select]
    q = rows["quality"][select]
    return base._batch(ts, nd.node_id, nd.name, out, q, np.zeros(len(ts), dtype=bool))


def _tail_masks(config, nd: _RNode, keep: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows sent late (only after everything else) and rows sent twice (again at the end)."""
    if not config.glitches:
        none = np.zeros(len(keep), dtype=bool)
        return none, none
    rng = base._rng(config.seed, 107, nd.idx)
    late = keep & (rng.random(len(keep)) < LATE_RATE)
    dup = keep & ~late & (rng.random(len(keep)) < DUPLICATE_RATE)
    return late, dup


def iter_batches(config):
    check_config(config)
    return _batches(config)


def _batches(config):
    tail: list[pa.RecordBatch] = []
    grid, nodes, districts, incidents = _plan(config)
    for dist in districts:
        sim = _simulate(config, grid, dist, nodes, incidents)
        for i in dist.nodes:
            nd = nodes[i]
            rows, _ = _node_rows(config, grid, nd, dist, sim)
            keep = rows["keep"]
            late, dup = _tail_masks(config, nd, keep)
            yield _rows_batch(nd, rows, np.flatnonzero(keep & ~late))
            if late.any() or dup.any():
                tail.append(_rows_batch(nd, rows, np.flatnonzero(late | dup)))
    yield from tail


def realistic_truth(config) -> RealisticTruth:
    """The ground truth of ``config`` (profile ``realistic``); see :class:`RealisticTruth`."""
    check_config(config)
    flows, glitches, demand = [], [], {}
    grid, nodes, districts, incidents = _plan(config)
    for dist in districts:
        sim = _simulate(config, grid, dist, nodes, incidents)
        demand[dist.name] = sim["demand_mean"]
        frame = pd.DataFrame(
            {
                "timestamp": pd.to_datetime(grid.t_us, unit="us", utc=True),
                "district": dist.name,
                **{
                    k: sim[k]
                    for k in (
                        "metered_demand",
                        "unmetered_demand",
                        "background_leakage",
                        "leak_flow",
                        "burst_flow",
                        "inlet_flow",
                        "pump_flow",
                        "tank_level_m",
                    )
                },
            }
        )
        flows.append(frame)
        for i in dist.nodes:
            nd = nodes[i]
            rows, truth = _node_rows(config, grid, nd, dist, sim)
            glitches += truth
            late, dup = _tail_masks(config, nd, rows["keep"])
            sample_us = grid.t_us[:: nd.cadence_s // FINE_STEP_S]
            for kind, mask in (("late", late), ("duplicate", dup)):
                for t in sample_us[mask].tolist():
                    glitches.append((nd.node_id, kind, t, t + nd.cadence_s * _US, 0.0))
    g = pd.DataFrame(glitches, columns=list(GLITCH_COLUMNS))
    for c in ("start", "end"):
        g[c] = pd.to_datetime(g[c].astype("int64"), unit="us", utc=True)
    g = g.sort_values(["node_id", "start", "kind"], kind="stable").reset_index(drop=True)
    return RealisticTruth(
        incidents=incidents,
        glitches=g,
        district_flows=pd.concat(flows, ignore_index=True),
        district_demand=demand,
    )


def write_truth(config, directory) -> Path:
    """Write :func:`realistic_truth` as incidents.csv, glitches.csv and district_flows.parquet."""
    truth = realistic_truth(config)
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    truth.incidents.to_csv(out / "incidents.csv", index=False)
    truth.glitches.to_csv(out / "glitches.csv", index=False)
    truth.district_flows.to_parquet(out / "district_flows.parquet", index=False)
    return out
