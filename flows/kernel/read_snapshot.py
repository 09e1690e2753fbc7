"""The DuckDB read snapshot: the file readers open, so reads never block processing.

DuckDB lets a process open a file for writing only while no other process has it open, even
read-only. When the API and the dashboard opened the live warehouse per request, a few reads a
second kept a cycle from opening it and failed the cycle (fault campaign: ~5 req/s on node
metrics, or /ready at 44 req/s). So readers never open the live file: every run that wrote it
(cycle, backfill, model job, restore) ends by copying the checkpointed file to
`<warehouse>.read` (a temporary copy beside it, then an atomic rename), and readers open that
copy read-only. Readers never block the writer; a reader that has the previous snapshot open
keeps reading it (the rename leaves its inode alone), the next request opens the new one, so a
reader sees one completed run's state or the next, never a half-written one. Until the first run
has written a snapshot, readers fall back to the live file.

The copy costs a read and a write of the warehouse file per run (a sequential copy: about a
second per few hundred MB); PostgreSQL needs none of this (MVCC).
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path

from flows.kernel.settings import Target
from flows.kernel.warehouse import open_warehouse

log = logging.getLogger("water.snapshot")


def snapshot_path(target: Target) -> Path:
    assert target.duckdb_path is not None
    return target.duckdb_path.with_name(f"{target.duckdb_path.name}.read")


def read_target(target: Target) -> Target:
    """The target readers open: the snapshot when one exists, else the live file."""
    if target.type != "duckdb":
        return target
    snapshot = snapshot_path(target)
    if not snapshot.exists():
        return target
    return Target("duckdb", duckdb_path=snapshot)


def refresh(target: Target) -> Path | None:
    """Copy the live DuckDB file to the snapshot (the caller holds the run lock)."""
    if target.type != "duckdb" or target.duckdb_path is None or not target.duckdb_path.exists():
        return None
    live = target.duckdb_path
    snapshot = snapshot_path(target)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{snapshot.name}-", dir=live.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        # Open here, so no other process writes meanwhile; the checkpoint folds the WAL in.
        with open_warehouse(target) as wh:
            wh.execute("checkpoint")
            shutil.copyfile(live, tmp)
        tmp.replace(snapshot)
    finally:
        tmp.unlink(missing_ok=True)
    return snapshot
