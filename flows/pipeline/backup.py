"""`water backup` / `water restore`: generations of the warehouse and the model artifacts.

A backup is one folder `<WATER_BACKUP_DIR>/<target>-<UTC stamp>-<job id>/` holding

* PostgreSQL: `postgres.dump`, `pg_dump --format=custom` of the whole database (one MVCC
  snapshot, so it is consistent while cycles run);
* DuckDB: `warehouse.duckdb`, a byte copy taken between cycles (the warehouse run lock is
  held, the file is open in this process, which keeps every other writer out, and a CHECKPOINT
  folds the WAL in first);
* `artifacts.tar.gz`: the model registry's artifact files (WATER_ARTIFACTS_DIR);
* `manifest.json`: target, job id, and the sha256 and size of every file.

It is written under a `.partial-` name and renamed when complete, so a failed backup leaves no
generation behind; the newest `keep` complete generations of the target stay, older ones are
deleted. Each backup and restore is a `processing_jobs` row (job types `backup`, `restore`).

The dump is taken while the backup's own job row says `running`; a restore rewrites that row
from the manifest (completed, with its summary) and adds its own `restore` row, so the restored
database tells the truth about both.

Restore is all or nothing: PostgreSQL through `pg_restore --clean --if-exists
--single-transaction` (an error rolls the whole restore back), DuckDB by an atomic rename of a
verified copy over the warehouse file; the artifacts folder is swapped the same way.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tarfile
import tempfile
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import duckdb

from flows.kernel import read_snapshot
from flows.kernel.runtime import utcnow
from flows.kernel.settings import PROJECT_ROOT, Target, load_settings
from flows.kernel.warehouse import WarehouseError, open_warehouse
from flows.pipeline.jobs import complete_restored_job, ensure_job_tables, finish_job, start_job
from flows.pipeline.lock import LOCK_FOR_JOB, RunLock

MANIFEST = "manifest.json"
PG_DUMP_FILE = "postgres.dump"
DUCKDB_FILE = "warehouse.duckdb"
ARTIFACTS_FILE = "artifacts.tar.gz"
DEFAULT_KEEP = 7
# A backup waits this long for a running cycle to finish before giving up (DuckDB only).
LOCK_WAIT_S = float(os.environ.get("WATER_BACKUP_LOCK_WAIT_S", "1800"))


class BackupError(RuntimeError):
    """A backup or restore could not be done; the message says what, where and why."""


@dataclass
class BackupResult:
    job_id: str
    path: Path
    files: dict[str, dict[str, Any]] = field(default_factory=dict)
    pruned: list[str] = field(default_factory=list)
    seconds: float = 0.0


def backup_root(env: dict[str, str] | None = None) -> Path:
    env = os.environ if env is None else env
    root = Path(env.get("WATER_BACKUP_DIR") or PROJECT_ROOT / "data" / "backups")
    return root if root.is_absolute() else (Path.cwd() / root).resolve()


def backup_keep(env: dict[str, str] | None = None) -> int:
    env = os.environ if env is None else env
    text = env.get("WATER_BACKUP_KEEP", str(DEFAULT_KEEP)).strip()
    if not text.isdigit() or int(text) < 1:
        raise BackupError(f"WATER_BACKUP_KEEP={text!r} is not a number of generations >= 1")
    return int(text)


# --------------------------------------------------------------------------- backup


def backup(
    target: Target,
    root: Path | None = None,
    keep: int | None = None,
    artifacts_dir: Path | None = None,
    triggered_by: str = "cli",
    flow_run_id: str | None = None,
) -> BackupResult:
    """Back up `target` and the model artifacts into a new generation under `root`."""
    if target.type not in ("duckdb", "postgres"):
        raise BackupError(f"backup supports duckdb and postgres targets, not {target.type}")
    root = root or backup_root()
    keep = keep or backup_keep()
    artifacts_dir = artifacts_dir or load_settings().artifacts_dir
    root.mkdir(parents=True, exist_ok=True)
    with RunLock(target, LOCK_FOR_JOB["backup"]) as lock:
        if not lock.acquire(LOCK_WAIT_S):
            raise BackupError(
                f"backup of {target.describe()}: another backup or restore is running"
            )
        if target.type == "postgres":
            return _backup(target, root, keep, artifacts_dir, triggered_by, flow_run_id)
        # DuckDB: between cycles, for the whole job (a cycle holds the file while dbt runs).
        with RunLock(target, LOCK_FOR_JOB["cycle"]) as warehouse:
            if not warehouse.acquire(LOCK_WAIT_S):
                raise BackupError(
                    f"backup of {target.duckdb_path}: a cycle held the warehouse for"
                    f" {LOCK_WAIT_S:.0f} s"
                )
            warehouse.note(step="backup")
            return _backup(target, root, keep, artifacts_dir, triggered_by, flow_run_id)


def _backup(target, root, keep, artifacts_dir, triggered_by, flow_run_id) -> BackupResult:
    with open_warehouse(target) as wh:
        ensure_job_tables(wh)
        job = start_job(wh, "backup", triggered_by, flow_run_id=flow_run_id, job_name="backup")
    name = f"{target.type}-{job.started_at.strftime('%Y%m%dT%H%M%SZ')}-{job.job_id[:8]}"
    partial = root / f".partial-{name}"
    final = root / name
    result = BackupResult(job.job_id, final)
    try:
        partial.mkdir()
        if target.type == "postgres":
            _run(["pg_dump", "--format=custom", "--no-owner", "--no-privileges",
                  "--file", str(partial / PG_DUMP_FILE)], target, "pg_dump")  # fmt: skip
        else:
            _copy_duckdb(target, partial / DUCKDB_FILE)
        if artifacts_dir.is_dir():
            with tarfile.open(partial / ARTIFACTS_FILE, "w:gz") as tar:
                tar.add(artifacts_dir, arcname="artifacts")
        result.files = {p.name: _describe(p) for p in sorted(partial.iterdir())}
        manifest = {
            "format": 1,
            "target": target.type,
            "source": target.describe(),
            "job_id": job.job_id,
            "created_at": job.started_at.isoformat(),
            "files": result.files,
        }
        (partial / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        partial.rename(final)
        result.pruned = _prune(root, target.type, keep)
    except Exception as exc:
        shutil.rmtree(partial, ignore_errors=True)
        job.summary.update({"path": str(final), "error": " ".join(str(exc).split())[:500]})
        with open_warehouse(target) as wh:
            finish_job(wh, job, "failed", error_message=job.summary["error"])
        if isinstance(exc, BackupError | WarehouseError):
            raise
        raise BackupError(f"backup of {target.describe()} into {final} failed: {exc}") from exc
    result.seconds = job.elapsed_s
    job.summary.update(_summary(result))
    with open_warehouse(target) as wh:
        finish_job(wh, job, "completed")
    return result


def _summary(result: BackupResult) -> dict[str, Any]:
    return {
        "path": str(result.path),
        "files": result.files,
        "bytes": sum(f["bytes"] for f in result.files.values()),
        "pruned": result.pruned,
    }


def _copy_duckdb(target: Target, dest: Path) -> None:
    """A consistent copy (the caller holds the run lock): file open here, WAL checkpointed."""
    assert target.duckdb_path is not None
    with open_warehouse(target) as wh:
        wh.execute("checkpoint")
        shutil.copyfile(target.duckdb_path, dest)


def _describe(path: Path) -> dict[str, Any]:
    return {"sha256": _sha256(path), "bytes": path.stat().st_size}


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def generations(root: Path, target_type: str | None = None) -> list[Path]:
    """Complete backups under `root` (a manifest present), oldest first."""
    if not root.is_dir():
        return []
    found = [
        p
        for p in root.iterdir()
        if p.is_dir() and not p.name.startswith(".") and (p / MANIFEST).is_file()
    ]
    if target_type:
        found = [p for p in found if p.name.startswith(f"{target_type}-")]
    return sorted(found, key=lambda p: p.name)


def _prune(root: Path, target_type: str, keep: int) -> list[str]:
    old = generations(root, target_type)[:-keep]
    for path in old:
        shutil.rmtree(path)
    return [p.name for p in old]


def _run(argv: list[str], target: Target, what: str) -> None:
    """A PostgreSQL client tool on the target's database (libpq variables; password from env)."""
    if shutil.which(argv[0]) is None:
        raise BackupError(f"{argv[0]} is not installed (Debian: postgresql-client)")
    env = {**os.environ}
    for key, var in (("host", "PGHOST"), ("port", "PGPORT"), ("user", "PGUSER"), ("dbname", "PGDATABASE")):  # fmt: skip
        if key in target.pg_dsn_parts:
            env[var] = target.pg_dsn_parts[key]
    done = subprocess.run(argv, env=env, capture_output=True, text=True)  # noqa: S603
    if done.returncode != 0:
        lines = [ln for ln in done.stderr.splitlines() if ln.strip()]
        reason = lines[0] if lines else f"exit {done.returncode}"
        raise BackupError(f"{what} on {target.describe()} failed: {reason}")


# --------------------------------------------------------------------------- restore


def resolve_backup(spec: str, root: Path | None = None, target_type: str | None = None) -> Path:
    """A backup folder: a path, a generation's name under the backup dir, or `latest`."""
    root = root or backup_root()
    if spec == "latest":
        found = generations(root, target_type)
        if not found:
            raise BackupError(f"no {target_type or ''} backup under {root}".replace("  ", " "))
        return found[-1]
    path = Path(spec)
    if not path.is_dir() and (root / spec).is_dir():
        path = root / spec
    if not (path / MANIFEST).is_file():
        raise BackupError(f"{spec}: not a backup (no {MANIFEST}; backups are under {root})")
    return path


def read_manifest(path: Path) -> dict[str, Any]:
    manifest = json.loads((path / MANIFEST).read_text())
    for name, meta in manifest["files"].items():
        file = path / name
        if not file.is_file():
            raise BackupError(f"backup {path}: {name} is missing")
        if _sha256(file) != meta["sha256"]:
            raise BackupError(f"backup {path}: {name} does not match its sha256 in {MANIFEST}")
    return manifest


def restore(
    target: Target,
    spec: str,
    root: Path | None = None,
    artifacts_dir: Path | None = None,
    triggered_by: str = "cli",
) -> dict[str, Any]:
    """Replace `target`'s data (and the model artifacts) with a backup; all or nothing."""
    if target.type not in ("duckdb", "postgres"):
        raise BackupError(f"restore supports duckdb and postgres targets, not {target.type}")
    path = resolve_backup(spec, root, target.type)
    manifest = read_manifest(path)
    if manifest["target"] != target.type:
        raise BackupError(
            f"backup {path.name} is of a {manifest['target']} warehouse, the target is {target.type}"
        )
    started = utcnow()
    summary: dict[str, Any] = {"backup": str(path), "backup_job_id": manifest["job_id"]}
    try:
        with (
            RunLock(target, LOCK_FOR_JOB["restore"]) as own,
            RunLock(target, LOCK_FOR_JOB["cycle"]) as lock,
        ):
            if not (own.acquire(LOCK_WAIT_S) and lock.acquire(LOCK_WAIT_S)):
                raise BackupError(
                    f"restore into {target.describe()}: a cycle or backup held the warehouse"
                )
            lock.note(step="restore")
            if target.type == "postgres":
                _run(["pg_restore", "--clean", "--if-exists", "--no-owner", "--no-privileges",
                      "--single-transaction", "--exit-on-error", "--dbname",
                      target.pg_dsn_parts.get("dbname", "postgres"), str(path / PG_DUMP_FILE)],
                     target, "pg_restore")  # fmt: skip
            else:
                _replace_duckdb(target, path / DUCKDB_FILE)
                read_snapshot.refresh(target)  # readers see the restored data
        if ARTIFACTS_FILE in manifest["files"]:
            summary["artifacts"] = str(
                _replace_artifacts(
                    path / ARTIFACTS_FILE, artifacts_dir or load_settings().artifacts_dir
                )
            )
    except Exception as exc:
        message = " ".join(str(exc).split())[:500]
        _record_restore(target, started, "failed", summary, message, triggered_by=triggered_by)
        if isinstance(exc, BackupError | WarehouseError):
            raise
        raise BackupError(f"restore of {path.name} into {target.describe()} failed: {exc}") from exc
    summary["restore_job_id"] = _record_restore(
        target, started, "completed", summary, None, manifest, triggered_by
    )
    return summary


def _replace_duckdb(target: Target, source: Path) -> None:
    """Copy beside the warehouse, check it opens, then rename over it (atomic on one filesystem)."""
    live = target.duckdb_path
    assert live is not None
    live.parent.mkdir(parents=True, exist_ok=True)
    if live.exists():
        # Opening it proves no other process holds the file; closing folds its WAL in, so no
        # stale WAL is left to be replayed onto the restored file.
        with open_warehouse(target):
            pass
    fd, tmp_name = tempfile.mkstemp(prefix=f".{live.name}.restore-", dir=live.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        shutil.copyfile(source, tmp)
        duckdb.connect(str(tmp), read_only=True).close()
        wal = live.with_name(live.name + ".wal")
        if wal.exists():
            raise BackupError(
                f"restore: {wal} is left from an unclean stop; open the warehouse once"
            )
        tmp.replace(live)
    finally:
        tmp.unlink(missing_ok=True)


def _replace_artifacts(archive: Path, artifacts_dir: Path) -> Path:
    artifacts_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".artifacts-restore-", dir=artifacts_dir.parent))
    try:
        with tarfile.open(archive, "r:gz") as tar:
            tar.extractall(staging, filter="data")
        old = artifacts_dir.with_name(f".{artifacts_dir.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        if artifacts_dir.exists():
            artifacts_dir.rename(old)
        (staging / "artifacts").rename(artifacts_dir)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return artifacts_dir


def _record_restore(
    target: Target,
    started: datetime,
    status: str,
    summary: dict[str, Any],
    error: str | None,
    manifest: dict[str, Any] | None = None,
    triggered_by: str = "cli",
) -> str:
    """The restore's job row, and (after a restore) the backup's own row as it finished."""
    with open_warehouse(target) as wh:
        ensure_job_tables(wh)
        if manifest is not None:
            backup_summary = {
                "path": summary["backup"],
                "files": manifest["files"],
                "bytes": sum(f["bytes"] for f in manifest["files"].values()),
            }
            # The dump caught this row while it said `running`; the manifest proves it ended.
            complete_restored_job(wh, manifest["job_id"], backup_summary)
        job = start_job(wh, "restore", triggered_by, job_name="restore", started_at=started)
        job._t0 -= (utcnow() - started).total_seconds()  # the duration counts from `started`
        job.summary.update(summary)
        finish_job(wh, job, status, error_message=error)
    return job.job_id
