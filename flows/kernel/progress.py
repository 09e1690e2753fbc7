"""Progress on long work, shown as it happens by the `water` commands.

Off by default (library calls, Prefect flows and tests print nothing; flows log instead); the
CLI turns it on. Each step of a run prints a plain line when it starts and when it ends, on
stdout (stderr keeps the one-line error contract). Counted work (files, rows, bytes) shows a
live tqdm bar on a terminal; anywhere else (a log file, a pipe, systemd) the same work prints a
plain line per tenth done: never a carriage return into a file.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any, TextIO

from tqdm import tqdm

_out: TextIO | None = None


def enable(stream: TextIO | None = None) -> None:
    global _out
    _out = stream or sys.stdout


def disable() -> None:
    global _out
    _out = None


def _interactive() -> bool:
    return _out is not None and _out.isatty() and sys.stderr.isatty()


def note(message: str) -> None:
    """One timestamped line (when progress is on)."""
    if _out is not None:
        print(f"[{time.strftime('%H:%M:%S')}] {message}", file=_out, flush=True)


@contextmanager
def step(name: str) -> Iterator[None]:
    """`name ...` when it starts, `name done in N s` (or failed) when it ends."""
    if _out is None:
        yield
        return
    note(f"{name} ...")
    t0 = time.perf_counter()
    try:
        yield
    except BaseException:
        note(f"{name} failed after {time.perf_counter() - t0:.1f} s")
        raise
    note(f"{name} done in {time.perf_counter() - t0:.1f} s")


class _PlainCounter:
    """tqdm's update/close for pipes and files: a line per tenth of the total, no '\\r'."""

    def __init__(self, total: float, desc: str, unit: str):
        self.total, self.desc, self.unit = total, desc, unit
        self.done = 0.0
        self.shown = 0  # tenths already printed

    def update(self, n: float = 1) -> None:
        self.done += n
        tenths = int(10 * self.done / self.total) if self.total else 10
        if tenths > self.shown:
            self.shown = tenths
            note(
                f"{self.desc}: {min(100, 10 * tenths)} % ({_amount(self.done, self.unit)}"
                f" of {_amount(self.total, self.unit)})"
            )

    @property
    def n(self) -> float:  # tqdm's name for the amount done
        return self.done

    def close(self) -> None:
        pass

    def __enter__(self) -> _PlainCounter:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class _Silent(_PlainCounter):
    def update(self, n: float = 1) -> None:
        pass


def counter(total: float, desc: str, unit: str = "it", min_total: float = 0):
    """Something with update(n)/close(): a tqdm bar on a terminal, plain lines elsewhere,
    nothing when progress is off or the work is smaller than `min_total`."""
    if _out is None or total < max(min_total, 1):
        return _Silent(total, desc, unit)
    if _interactive():
        return tqdm(total=total, desc=desc, unit=unit, unit_scale=True, file=sys.stderr)
    return _PlainCounter(total, desc, unit)


def bar(items: Iterable[Any], desc: str, unit: str = "it", min_total: int = 2) -> Iterator[Any]:
    """Iterate `items` (a sized collection) showing progress as `counter` does."""
    items = list(items)
    with counter(len(items), desc, unit, min_total) as shown:
        for item in items:
            yield item
            shown.update(1)


def _amount(value: float, unit: str) -> str:
    if unit == "B":
        return f"{value / 1e6:,.1f} MB"
    return f"{value:,.0f} {unit}"
