"""Progress on long work: step lines as they happen, plain in files and pipes (no carriage
return), a live bar on a terminal."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
from pathlib import Path

from flows.kernel import progress

BIN = Path(sys.executable).parent
STEP_LINE = re.compile(r"^\[\d\d:\d\d:\d\d\] (.+)$")


def _water(args: list[str], env: dict[str, str], log: Path) -> str:
    """Run `water` with stdout and stderr going to a log file, as under cron or systemd."""
    with log.open("wb") as out:
        done = subprocess.run(  # noqa: S603 - our own console script
            [str(BIN / "water"), *args], env=env, stdout=out, stderr=out, timeout=900
        )
    text = log.read_bytes()
    assert done.returncode == 0, text.decode()[-3000:]
    assert b"\r" not in text, "a carriage return was written into the log file"
    return text.decode()


def test_long_commands_print_their_steps_as_plain_lines_into_a_log(tmp_path):
    env = {**os.environ, "WATER_DUCKDB_PATH": str(tmp_path / "w.duckdb")}
    load = _water(
        ["load", "synthetic", "--nodes", "3", "--days", "1", "--cadence", "300", "--seed", "5"],
        env,
        tmp_path / "load.log",
    )
    steps = [m.group(1) for line in load.splitlines() if (m := STEP_LINE.match(line))]
    assert any(s.startswith("generate ") and s.endswith("of 864 rows)") for s in steps), steps
    assert any(re.fullmatch(r"load .*\.parquet done in \d+\.\d s", s) for s in steps), steps

    cycle = _water(["cycle", "--no-publish"], env, tmp_path / "cycle.log")
    steps = [m.group(1) for line in cycle.splitlines() if (m := STEP_LINE.match(line))]
    started = [s.removesuffix(" ...") for s in steps if s.endswith(" ...")]
    assert started == [
        "cycle scope",
        "cycle raw_gate",
        "cycle dbt_build",
        "cycle marts_gate",
        "cycle ml_scoring",
    ]
    for name in started:  # each step's end follows its start
        assert steps.index(f"{name} ...") < next(
            i for i, s in enumerate(steps) if s.startswith(f"{name} done in ")
        )
    # the final summary still comes last, on its own line
    assert cycle.strip().splitlines()[-1].startswith("cycle ")


def test_counted_work_is_plain_tenths_off_a_terminal_and_a_bar_on_one(monkeypatch):
    out = io.StringIO()
    progress.enable(out)
    try:
        with progress.counter(200, "rows", "rows") as shown:
            for _ in range(200):
                shown.update(1)
        lines = out.getvalue().splitlines()
        assert [line.split("] ", 1)[1] for line in lines] == [
            f"rows: {p} % ({2 * p:,} rows of 200 rows)" for p in range(10, 101, 10)
        ]
        assert progress.counter(1, "tiny", min_total=2).__class__.__name__ == "_Silent"

        class Terminal(io.StringIO):
            def isatty(self) -> bool:
                return True

        monkeypatch.setattr(sys, "stderr", Terminal())
        progress.enable(Terminal())
        from tqdm import tqdm

        bar = progress.counter(100, "rows")
        assert isinstance(bar, tqdm)
        bar.close()
    finally:
        progress.disable()
    assert isinstance(progress.counter(100, "off"), progress._Silent)
