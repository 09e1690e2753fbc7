"""Leak and burst detection on the realistic synthetic network: today's detectors vs a night-flow rule.

Each run generates realistic networks (`profile="realistic"`: pump stations, tanks, deadband
sensors, 5/15-minute cadences, Italian holidays, meter glitches; docs/synthetic.md), each district
with one burst (10/25/50 % of district demand for 2 h) and, later, one leak (a step of 2/3/5/10 %
repaired after 10 days, or a leak growing 0 -> 20 % over 14 days), at random times after a
21-day warm-up. The whole pipeline runs on a temporary DuckDB file: `water load` of the generated
Parquet, then `dbt run` of everything `anomalies` needs. One more network (75 nodes: > 2,000
node-days after its first two weeks) has no incident and no glitch: the clean network for false
alarms.

Three detectors are scored against the generator's ground truth (`realistic_truth`):

* **events**: every warning-or-critical incident of `water_infrastructure.anomaly_events`, raised
  at its `alerted_at` (when it met its severity's persistence rule), attributed to its district;
  the operator's alarm budget is counted in these;
* **balance**: the district water balance's own events among them (`district_leak` from the
  night-loss CUSUM, `district_burst` from the 5-minute inflow residual; docs/anomalies.md);
* **windows**: every warning-or-critical row of `water_infrastructure.anomalies`, the per-window
  evidence behind the events (node windows are raised at the end of their 5-minute window, night
  flow at the end of the night);
* **night-flow rule** (the baseline, computed here from the same raw readings): per district and
  local night, the median inlet flow 02:00-04:00; an alarm at 04:00 when it exceeds the median of
  the previous 14 nights by more than max(3 x 1.4826 x MAD, 1 %).

An incident is found by the first alarm in its district raised at or after its start: a leak within
7 days (and before its repair), a burst before its end + 2 h. Because an operator sees every alarm
of a district, a network that alarms often "finds" incidents by chance: the *chance* columns score
the clean network's alarms (same district names and dates, nothing injected) against the same
incidents. Precision: the share of alarms after the warm-up that fall in an incident of their
district (start .. end + 24 h); alarms on a node within a day of one of its injected glitches are
counted apart.

    python benchmarks/leak_detection.py                       # 3 networks x 60 nodes x 42 days, 5-min
    python benchmarks/leak_detection.py --networks 1 --nodes 30 --markdown results.md
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from flows.kernel.dbt_runner import run_dbt  # noqa: E402
from flows.kernel.settings import Target  # noqa: E402
from flows.kernel.warehouse import connect  # noqa: E402
from flows.loaders.loading import load_synthetic  # noqa: E402
from flows.loaders.synthetic import SyntheticConfig, node_metadata  # noqa: E402
from flows.loaders.synthetic_realistic import (  # noqa: E402
    BURST_SIZES,
    GROWING_LEAK,
    LEAK_SIZES,
    WARMUP_DAYS,
    RealisticTruth,
    realistic_truth,
)
from ml.registry import ensure_ml_tables  # noqa: E402

START = datetime(2024, 9, 30, tzinfo=UTC)  # a Monday; the data cover 1 November (a holiday)
LEAK_HORIZON = timedelta(days=7)
BURST_GRACE = timedelta(hours=2)
CLEAN_FROM_DAY = 14  # false alarms are counted once two weeks of baseline exist
NIGHT_HOURS = (2, 4)  # local
NIGHT_HISTORY = 14


@dataclass
class Network:
    config: SyntheticConfig
    truth: RealisticTruth
    meta: pd.DataFrame
    alarms: dict[
        str, pd.DataFrame
    ]  # detector -> alarms (district, node_id, raised_at, kind, severity)
    tracker: pd.DataFrame  # int_district_leaks_tracked: per district-night leak state


def leak_flow_estimates(net: Network) -> pd.DataFrame:
    """Per open leak and local day after its alarm: the true mean leak flow of that day, the
    tracker's estimate (mean excess of the leak's last 7 nights, known at 04:00) and the naive
    one (yesterday's night excess alone), in L/s."""
    flows = net.truth.district_flows
    local_day = flows.timestamp.dt.tz_convert("Europe/Rome").dt.date
    truth = flows.assign(day=local_day).groupby(["district", "day"]).leak_flow.mean()
    rows = []
    for inc in net.truth.incidents[net.truth.incidents.kind == "leak"].itertuples():
        t = net.tracker[net.tracker.district == inc.district].sort_values("night_date")
        t = t.assign(yesterday=t.excess_lps.shift(1))
        start = inc.start.tz_convert("Europe/Rome").date()
        for n in t[t.is_open.astype(bool) & (t.night_date > start)].itertuples():
            true_flow = truth.get((inc.district, n.night_date))
            if true_flow is None or not true_flow > 0 or pd.isna(n.yesterday):
                continue
            rows.append(
                (inc.magnitude, inc.shape, true_flow, n.estimated_leak_flow_lps, n.yesterday)
            )
    return pd.DataFrame(rows, columns=["magnitude", "shape", "truth", "ours", "naive"])


def build(config: SyntheticConfig, workdir: Path) -> Network:
    """Load the network, run dbt, collect both detectors' alarms."""
    target = Target("duckdb", duckdb_path=workdir / "warehouse.duckdb")
    landing = workdir / "landing"
    with connect(target) as wh:
        load_synthetic(wh, config, progress=False, landing_dir=landing)
        ensure_ml_tables(wh)  # `anomalies` reads the ML detector's (here empty) output
    run_dbt(target, "seed")  # the holiday calendar, as a cycle's `dbt build` does
    run_dbt(target, "run", ["--select", "+anomaly_events"])
    with connect(target) as wh:
        events = wh.query_df(
            "select district, subject as node_id, anomaly_type as kind, severity,"
            " alerted_at as raised_at from water_infrastructure.anomaly_events"
            " where severity in ('warning', 'critical')"
        )
        balance = wh.query_df(
            "select district, subject as node_id, anomaly_type as kind, severity,"
            " alerted_at as raised_at from water_infrastructure.anomaly_events"
            " where severity in ('warning', 'critical')"
            " and anomaly_type in ('district_leak', 'district_burst')"
        )
        tracker = wh.query_df(
            "select district, night_date, is_open, excess_lps, estimated_leak_flow_lps"
            " from water_staging.int_district_leaks_tracked"
        )
        windows = wh.query_df(
            "select a.district, a.node_id, a.anomaly_type as kind, a.severity,"
            " coalesce(n.night_end_at, a.window_start + interval 5 minute) as raised_at"
            " from water_infrastructure.anomalies as a"
            " left join water_staging.int_district_night_flows_scored as n"
            "   on a.anomaly_type = 'night_flow_high' and a.district = n.district"
            "   and a.window_start = n.night_start_at"
            " where a.severity in ('warning', 'critical')"
        )
    for frame in (events, balance, windows):
        frame["raised_at"] = pd.to_datetime(frame["raised_at"], utc=True)
    meta = node_metadata(config)
    raw = pq.read_table(
        next(landing.glob("synthetic-*.parquet")),
        filters=[("node_id", "in", meta[meta.balance_role == "inlet"].node_id.tolist())],
    ).to_pandas()
    rule = night_flow_rule(raw, meta)
    alarms = {"events": events, "balance": balance, "windows": windows, "night rule": rule}
    tracker["night_date"] = pd.to_datetime(tracker["night_date"]).dt.date
    return Network(config, realistic_truth(config), meta, alarms, tracker)


def night_flow_rule(raw: pd.DataFrame, meta: pd.DataFrame) -> pd.DataFrame:
    """The baseline: a district's 02:00-04:00 median inlet flow against its previous 14 nights."""
    raw = raw.drop_duplicates(["node_id", "timestamp"])
    local = raw.timestamp.dt.tz_convert("Europe/Rome")
    night = raw[(local.dt.hour >= NIGHT_HOURS[0]) & (local.dt.hour < NIGHT_HOURS[1])]
    night = night.assign(night=local[night.index].dt.date)
    district = meta.set_index("node_id").district
    per_node = night.groupby(["node_id", "night"]).flow_rate.median().reset_index()
    per_node["district"] = district[per_node.node_id].to_numpy()
    mnf = per_node.groupby(["district", "night"]).flow_rate.sum()
    alarms = []
    for d, series in mnf.groupby(level=0):
        values = series.to_numpy()
        nights = series.index.get_level_values(1)
        for i in range(7, len(values)):
            history = values[max(0, i - NIGHT_HISTORY) : i]
            med = np.median(history)
            mad = np.median(np.abs(history - med))
            if values[i] - med > max(3 * 1.4826 * mad, 0.01 * med):
                at = pd.Timestamp(f"{nights[i]} 0{NIGHT_HOURS[1]}:00", tz="Europe/Rome")
                alarms.append((d, f"district:{d}", at.tz_convert("UTC"), "night_rule", "warning"))
    return pd.DataFrame(alarms, columns=["district", "node_id", "raised_at", "kind", "severity"])


def score_incidents(net: Network, detector: str, against: Network | None = None) -> pd.DataFrame:
    """One row per incident: found, delay (h) and, for the growing leak, its size when found.
    ``against``: score another network's alarms (the clean one: the chance level)."""
    alarms = (against or net).alarms[detector]
    end_of_data = net.truth.district_flows.timestamp.max()
    rows = []
    for inc in net.truth.incidents.itertuples():
        start = inc.start
        end = end_of_data if pd.isna(inc.end) else inc.end
        limit = min(start + LEAK_HORIZON, end) if inc.kind == "leak" else end + BURST_GRACE
        mine = alarms[
            (alarms.district == inc.district)
            & (alarms.raised_at >= start)
            & (alarms.raised_at <= limit)
        ]
        delay = (mine.raised_at.min() - start) / pd.Timedelta(hours=1) if len(mine) else np.nan
        size_at = inc.magnitude
        if inc.shape == "ramp" and not np.isnan(delay):
            size_at = inc.magnitude * min(1.0, delay / 24 / inc.ramp_days)
        label = (
            f"leak growing 0-{100 * inc.magnitude:g} %"
            if inc.shape == "ramp"
            else f"{inc.kind} {100 * inc.magnitude:g} %"
        )
        rows.append((label, inc.kind, inc.magnitude, not np.isnan(delay), delay, size_at))
    return pd.DataFrame(
        rows, columns=["incident", "kind", "magnitude", "found", "delay_h", "size_at"]
    )


def precision(net: Network, detector: str, against: Network | None = None) -> tuple[int, int, int]:
    """(alarms after the warm-up, in an incident, explained by a glitch of their node)."""
    alarms = (against or net).alarms[detector]
    warm = net.truth.district_flows.timestamp.min() + timedelta(days=WARMUP_DAYS)
    alarms = alarms[alarms.raised_at >= warm]
    end_of_data = net.truth.district_flows.timestamp.max()
    hit = np.zeros(len(alarms), dtype=bool)
    for inc in net.truth.incidents.itertuples():
        end = (end_of_data if pd.isna(inc.end) else inc.end) + timedelta(hours=24)
        window = alarms.raised_at.between(inc.start, end)
        hit |= ((alarms.district == inc.district) & window).to_numpy()
    glitch = np.zeros(len(alarms), dtype=bool)
    g = net.truth.glitches
    for item in g[~g.kind.isin(["late", "duplicate"])].itertuples():
        glitch |= (
            (alarms.node_id == item.node_id)
            & alarms.raised_at.between(
                item.start - timedelta(hours=1), item.end + timedelta(hours=24)
            )
        ).to_numpy()
    return len(alarms), int(hit.sum()), int((glitch & ~hit).sum())


def false_alarms(net: Network, detector: str) -> dict:
    alarms = net.alarms[detector]
    first = net.truth.district_flows.timestamp.min() + timedelta(days=CLEAN_FROM_DAY)
    last = net.truth.district_flows.timestamp.max()
    alarms = alarms[alarms.raised_at >= first]
    days = (last - first) / pd.Timedelta(days=1)
    return {
        "alarms": len(alarms),
        "node_days": len(net.meta) * days,
        "weeks": days / 7,
        "criticals": int((alarms.severity == "critical").sum()),
        "by_kind": alarms.kind.value_counts().head(6).to_dict(),
    }


def report(nets: list[Network], clean: Network, args, seconds: float) -> str:
    detectors = list(clean.alarms)
    scores = {d: pd.concat([score_incidents(n, d) for n in nets]) for d in detectors}
    chance = {d: pd.concat([score_incidents(n, d, clean) for n in nets]) for d in detectors}
    labels = (
        [f"leak {100 * s:g} %" for s in LEAK_SIZES]
        + [f"leak growing 0-{100 * GROWING_LEAK[0]:g} %"]
        + [f"burst {100 * s:g} %" for s in BURST_SIZES]
    )
    lines = [
        f"Realistic network: {len(nets)} networks x {args.nodes} nodes x {args.days:g} days, "
        f"inlets/pumps every {args.cadence} s (tanks 5 min, loggers 15 min, customers 5/15 min), "
        f"glitches on; clean network of {args.clean_nodes} nodes; {seconds / 60:.1f} min.",
        "",
        "| incident | n "
        + "".join(
            f"| {d}: found | within 3 nights / 30 min (10 % bursts: 2 h) | median delay | chance "
            for d in detectors
        )
        + "|",
        "|---|---" + "|---|---|---|---" * len(detectors) + "|",
    ]
    for label in labels:
        cells = [label]
        for d in detectors:
            rows = scores[d][scores[d].incident == label]
            if d == detectors[0]:
                cells.append(str(len(rows)))
            if not len(rows):
                cells += ["-"] * 4
                continue
            found = rows[rows.found]
            # the marks: leaks within 3 nights, 10 % bursts within 2 h, larger ones 30 min
            fast = 72.0 if label.startswith("leak") else 2.0 if label == "burst 10 %" else 0.5
            quick = (found.delay_h <= fast).sum()
            ch = chance[d][chance[d].incident == label]
            med = f"{found.delay_h.median():.1f} h" if len(found) else "-"
            if label.startswith("leak growing") and len(found):
                med += f" (at {100 * found.size_at.median():.1f} %)"
            cells += [
                f"{len(found)} ({100 * len(found) / len(rows):.0f} %)",
                f"{quick} ({100 * quick / len(rows):.0f} %)",
                med,
                f"{100 * ch.found.mean():.0f} %",
            ]
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "| detector | alarms after warm-up | in an incident of their district (precision) "
        "| clean network's alarms in the same windows (chance) | explained by a glitch "
        "| clean network: alarms per node-day | per week | criticals | top kinds (clean) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for d in detectors:
        total, hit, glitch = (sum(x) for x in zip(*(precision(n, d) for n in nets), strict=True))
        clean_total, by_chance, _ = (
            sum(x) for x in zip(*(precision(n, d, clean) for n in nets), strict=True)
        )
        fa = false_alarms(clean, d)
        kinds = ", ".join(f"{k} {v}" for k, v in fa["by_kind"].items()) or "-"
        lines.append(
            f"| {d} | {total} | {hit} ({100 * hit / max(total, 1):.1f} %) "
            f"| {100 * by_chance / max(clean_total, 1):.1f} % | {glitch} "
            f"| {fa['alarms'] / fa['node_days']:.4f} ({fa['alarms']} in {fa['node_days']:.0f}) "
            f"| {fa['alarms'] / fa['weeks']:.1f} | {fa['criticals']} | {kinds} |"
        )
    est = pd.concat([leak_flow_estimates(n) for n in nets])
    est = est[(est.magnitude >= 0.05) | (est["shape"] == "ramp")]
    if len(est):
        lines += [
            "",
            "Daily leak flow of open leaks of >= 5 % (and the growing one), after their alarm: "
            f"{len(est)} leak-days. Error = |estimate - true mean leak flow of the day| / true.",
            "",
            "| estimator | mean abs error | median | leak-days within 20 % |",
            "|---|---|---|---|",
        ]
        for name, column in (
            ("tracker (mean excess of the last 7 open nights)", "ours"),
            ("naive (yesterday's night excess)", "naive"),
        ):
            err = (est[column] - est.truth).abs() / est.truth
            lines.append(
                f"| {name} | {100 * err.mean():.1f} % | {100 * err.median():.1f} % "
                f"| {100 * (err <= 0.2).mean():.0f} % |"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--networks", type=int, default=3, help="networks with incidents")
    parser.add_argument(
        "--nodes", type=int, default=60, help="nodes per network (~10 per district)"
    )
    parser.add_argument(
        "--clean-nodes",
        type=int,
        default=75,
        help="nodes of the clean network (75 x 28 days > 2,000)",
    )
    parser.add_argument("--days", type=float, default=42.0, help="days of data per network")
    parser.add_argument(
        "--cadence", type=int, default=300, help="inlet/pump cadence, s (60 or 300)"
    )
    parser.add_argument("--seed", type=int, default=1, help="seed of the first network")
    parser.add_argument("--markdown", type=Path, help="also write the tables to this file")
    args = parser.parse_args()
    os.environ.setdefault("DO_NOT_TRACK", "1")
    t0 = time.perf_counter()
    nets: list[Network] = []
    with tempfile.TemporaryDirectory(prefix="leak-bench-") as tmp:
        os.environ["WATER_DBT_TARGET_ROOT"] = str(Path(tmp) / "dbt-target")
        os.environ["DBT_LOG_PATH"] = str(Path(tmp) / "dbt-logs")
        for k in range(args.networks + 1):
            is_clean = k == args.networks
            config = SyntheticConfig(
                nodes=args.clean_nodes if is_clean else args.nodes,
                days=args.days,
                cadence_s=args.cadence,
                seed=args.seed + (1000 if is_clean else k),
                start=START,
                profile="realistic",
                incidents=not is_clean,
                glitches=not is_clean,
            )
            t = time.perf_counter()
            net = build(config, Path(tmp) / f"net{k}")
            print(
                f"{'clean' if is_clean else f'network {k + 1}/{args.networks}'}: "
                + ", ".join(f"{len(a)} {d} alarms" for d, a in net.alarms.items())
                + f", {time.perf_counter() - t:.0f} s",
                file=sys.stderr,
            )
            if is_clean:
                clean = net
            else:
                nets.append(net)
    text = report(nets, clean, args, time.perf_counter() - t0)
    print(text)
    if args.markdown:
        args.markdown.write_text(text + "\n")


if __name__ == "__main__":
    main()
