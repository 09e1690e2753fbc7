"""Leak detection benchmark: how small a leak the night-flow detector reliably finds, and how fast.

Each run generates a network (about one district per 9 nodes, 5-minute cadence) with four
weeks of clean history, then a week in which every district but one leaks: a constant extra
inlet flow of a given share of the district's nominal demand, starting at a known time. The
leak sizes rotate over the districts from run to run (each run has its own seed), so every
size is measured on several districts of several networks; one district per run stays
clean as a control.

How the constant leak is made with the generator: its `leak` fault grows linearly from 0 at
its start to its size at the end of the data, so the leak week is generated as a second
period whose leak started 700 days earlier (99-100 % of its size throughout the week).
The two periods are generated separately; the totalisers restart at the boundary, which the
night-flow detector does not use.

A leak counts as found when `anomalies` has a night_flow_high row for its district at or after
the leak start; time to detection = end of that night window - leak start. The whole
pipeline runs: load, then `dbt run` of everything `anomalies` needs, on a temporary DuckDB file.

    python benchmarks/leak_detection.py              # 7 runs x 45 nodes, a few minutes
    python benchmarks/leak_detection.py --runs 3 --nodes 27 --markdown results.md
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from flows.config import Target  # noqa: E402
from flows.dbt_runner import run_dbt  # noqa: E402
from flows.loaders.synthetic import Fault, SyntheticConfig, node_metadata  # noqa: E402
from flows.loading import load_synthetic  # noqa: E402
from flows.warehouse import connect  # noqa: E402

# Leak sizes as a share of the district's nominal demand; 0 = the clean control district.
SIZES = (0.0, 0.025, 0.05, 0.075, 0.10, 0.15, 0.20)
HISTORY_DAYS = 28
LEAK_DAYS = 7
# Four weeks from a Monday outside the DST changes; the leak starts at noon local time
# (10:00 UTC), so the first night window that can show it ends 16 hours later.
HISTORY_START = datetime(2024, 5, 6, tzinfo=UTC)
LEAK_START = HISTORY_START + timedelta(days=HISTORY_DAYS, hours=10)
FOUND_WITHIN = timedelta(days=LEAK_DAYS)


@dataclass
class Outcome:
    run: int
    district: str
    size: float
    found_after: timedelta | None
    rise_percent: float | None


def district_names(nodes: int, seed: int) -> list[str]:
    config = SyntheticConfig(nodes=nodes, days=1, seed=seed)
    return sorted(node_metadata(config)["district"].unique())


def run_once(run: int, nodes: int, cadence_s: int, workdir: Path) -> tuple[list[Outcome], int, int]:
    """One network: returns the outcomes per district and the false alarms before the leak."""
    seed = 1000 + run
    districts = district_names(nodes, seed)
    sizes = {d: SIZES[(i + run) % len(SIZES)] for i, d in enumerate(districts)}
    history = SyntheticConfig(
        nodes=nodes,
        days=(LEAK_START - HISTORY_START) / timedelta(days=1),
        cadence_s=cadence_s,
        seed=seed,
        start=HISTORY_START,
    )
    leaks = tuple(
        Fault("leak", d, LEAK_START - timedelta(days=700), None, size)
        for d, size in sizes.items()
        if size > 0
    )
    leak_week = SyntheticConfig(
        nodes=nodes, days=LEAK_DAYS, cadence_s=cadence_s, seed=seed, start=LEAK_START, faults=leaks
    )
    target = Target("duckdb", duckdb_path=workdir / f"run{run}.duckdb")
    with connect(target) as wh:
        load_synthetic(wh, history, progress=False, landing_dir=workdir)
        load_synthetic(wh, leak_week, progress=False, landing_dir=workdir)
    run_dbt(target, "run", ["--select", "+anomalies"])
    with connect(target) as wh:
        alarms = wh.query(
            "select a.district, a.window_start, n.night_end_at, n.change_percent"
            " from water_infrastructure.anomalies as a"
            " inner join water_staging.int_district_night_flows_scored as n"
            "   on a.district = n.district and a.window_start = n.night_start_at"
            " where a.anomaly_type = 'night_flow_high' order by a.window_start"
        )
        nights_before = wh.scalar(
            "select count(*) from water_staging.int_district_night_flows_scored"
            " where status = 'ok' and night_end_at <= %(start)s",
            {"start": LEAK_START},
        )
    false_alarms = sum(1 for _, start, _, _ in alarms if start < LEAK_START)
    outcomes = []
    for district, size in sizes.items():
        after = [
            (end, rise) for d, start, end, rise in alarms if d == district and start >= LEAK_START
        ]
        first = min(after, default=None)
        found_after = first[0] - LEAK_START if first else None
        if found_after is not None and found_after > FOUND_WITHIN:
            found_after = None
        outcomes.append(Outcome(run, district, size, found_after, first[1] if first else None))
    return outcomes, false_alarms, nights_before


def hours(delta: timedelta) -> float:
    return delta.total_seconds() / 3600


def report(outcomes: list[Outcome], false_alarms: int, clean_nights: int, args) -> str:
    lines = [
        f"Leak detection, night-flow detector ({args.runs} networks x {args.nodes} nodes, "
        f"{args.cadence}-s cadence, {HISTORY_DAYS} days of history, leaks lasting {LEAK_DAYS} days)",
        "",
        "| leak (% of district demand) | districts | found within 7 days | median time to detection "
        "| median night-flow rise when found |",
        "|---|---|---|---|---|",
    ]
    reliable = None
    for size in SIZES:
        rows = [o for o in outcomes if o.size == size]
        if not rows:
            continue
        found = [o for o in rows if o.found_after is not None]
        share = len(found) / len(rows)
        median_h = statistics.median(hours(o.found_after) for o in found) if found else None
        median_rise = statistics.median(o.rise_percent for o in found) if found else None
        label = "0 (control)" if size == 0 else f"{100 * size:g}"
        lines.append(
            f"| {label} | {len(rows)} | {len(found)} ({100 * share:.0f} %) | "
            + (f"{median_h:.1f} h" if median_h is not None else "-")
            + " | "
            + (f"+{median_rise:.0f} %" if median_rise is not None else "-")
            + " |"
        )
        if size > 0 and share >= 0.9 and reliable is None:
            reliable = size
    lines += [
        "",
        "Smallest leak found in at least 90 % of districts: "
        + (f"{100 * reliable:g} % of district demand." if reliable else "none of the sizes tried."),
        f"False alarms before the leaks: {false_alarms} in {clean_nights} scored district-nights.",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=len(SIZES), help="networks to generate")
    parser.add_argument("--nodes", type=int, default=45, help="nodes per network")
    parser.add_argument("--cadence", type=int, default=300, help="seconds between readings")
    parser.add_argument("--markdown", type=Path, help="also write the table to this file")
    args = parser.parse_args()
    os.environ.setdefault("DO_NOT_TRACK", "1")
    outcomes: list[Outcome] = []
    false_alarms = clean_nights = 0
    with tempfile.TemporaryDirectory(prefix="leak-bench-") as tmp:
        workdir = Path(tmp)
        os.environ["WATER_DBT_TARGET_ROOT"] = str(workdir / "dbt-target")
        os.environ["DBT_LOG_PATH"] = str(workdir / "dbt-logs")
        for run in range(args.runs):
            t0 = time.perf_counter()
            found, alarms, nights = run_once(run, args.nodes, args.cadence, workdir)
            outcomes += found
            false_alarms += alarms
            clean_nights += nights
            print(
                f"run {run + 1}/{args.runs}: {len(found)} districts, "
                f"{sum(o.found_after is not None for o in found if o.size > 0)} leaks found, "
                f"{time.perf_counter() - t0:.0f} s",
                file=sys.stderr,
            )
    text = report(outcomes, false_alarms, clean_nights, args)
    print(text)
    if args.markdown:
        args.markdown.write_text(text + "\n")


if __name__ == "__main__":
    main()
