"""Bulk-load Parquet and CSV files of raw readings into the target's raw schema.

Each file is one batch and is taken whole or not at all: its schema is mapped, every value
is type-checked by DuckDB in one pass, and only then are the rows written (DuckDB
`insert ... select from read_parquet/read_csv`, PostgreSQL `COPY`) in the same transaction
that records the batch. A file already loaded (same bytes, same date filter) is a no-op.
Validation of *values* (ranges, NaN, empty ids...) is dbt's job: such rows land in raw and
are quarantined by staging, so nothing readable is ever lost.
"""

from __future__ import annotations

import csv
import glob
import hashlib
import logging
import os
import re
import tempfile
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path

import duckdb

from flows.kernel import progress as show
from flows.kernel.raw_store import (
    MEASUREMENT_COLUMNS,
    READING_COLUMNS,
    batch_timestamp,
    ensure_raw_tables,
    lock_raw_writes,
)
from flows.kernel.warehouse import Warehouse

log = logging.getLogger(__name__)

REQUIRED_COLUMNS = ("timestamp", "node_id")
_NUMERIC_TYPES = (
    "DOUBLE",
    "FLOAT",
    "REAL",
    "DECIMAL",
    "INTEGER",
    "BIGINT",
    "SMALLINT",
    "TINYINT",
    "HUGEINT",
    "UBIGINT",
    "UINTEGER",
    "USMALLINT",
    "UTINYINT",
)
_COPY_CHUNK_BYTES = 1 << 20


class LoadError(ValueError):
    """A file that cannot be loaded; the message is one line naming file, row/column and why."""


class PartialLoad(LoadError):
    """Some files loaded (each whole, in its own transaction), others were refused."""

    def __init__(self, results: list[LoadResult], refused: list[tuple[str, str]], total: int):
        self.results = results
        self.refused = refused  # (file, one-line reason)
        reasons = "; ".join(reason for _, reason in refused)
        super().__init__(f"{len(refused)} of {total} file(s) refused, the others loaded: {reasons}")


@dataclass(frozen=True)
class LoadResult:
    source_uri: str
    batch_id: str | None
    rows: int
    skipped: bool = False
    note: str = ""


@dataclass(frozen=True)
class DateRange:
    start: date | None = None
    end: date | None = None  # inclusive

    def key(self) -> str:
        return f"{self.start or ''}..{self.end or ''}"


def expand_sources(patterns: Iterable[str]) -> list[Path]:
    """Expand globs and directories into a sorted list of .parquet/.pq/.csv files."""
    files: list[Path] = []
    for pattern in patterns:
        matches = (
            sorted(glob.glob(pattern, recursive=True)) if glob.has_magic(pattern) else [pattern]
        )
        if not matches:
            raise LoadError(f"{pattern}: no file matches this pattern")
        for match in matches:
            path = Path(match)
            if path.is_dir():
                found = sorted(p for p in path.rglob("*") if p.suffix.lower() in FILE_SUFFIXES)
                if not found:
                    # Loading nothing is never what was asked for: say so, exit non-zero.
                    raise LoadError(f"{path}: no .parquet, .pq or .csv file in this folder")
                files.extend(found)
            elif not path.exists():
                raise LoadError(f"{path}: no such file")
            else:
                files.append(path)
    return files


FILE_SUFFIXES = (".parquet", ".pq", ".csv")
# The one rule for node ids (the API addresses a node as /nodes/{node_id}). Files are checked
# in SQL (`_typed`), node metadata (`water nodes`) by `node_id_problem`; both say NODE_ID_RULE.
NODE_ID_RULE = "1-128 characters, no whitespace, '/' or control characters"
NODE_ID_MAX_CHARS = 128


def normalise_node_id(text: str) -> str:
    """NFC, as the loader stores ids (look-alike spellings are one node)."""
    return unicodedata.normalize("NFC", text)


def node_id_problem(node_id: str) -> str | None:
    """Why `node_id` (already NFC) breaks NODE_ID_RULE, or None when it follows it."""
    if not node_id or len(node_id) > NODE_ID_MAX_CHARS:
        return f"{len(node_id)} characters"
    for char in node_id:
        if char.isspace() or char == "/" or unicodedata.category(char) in ("Cc", "Zs", "Zl", "Zp"):
            return f"contains {char!r}"
    return None


def file_format(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix in (".parquet", ".pq"):
        return "parquet"
    if suffix == ".csv":
        return "csv"
    raise LoadError(
        f"{path}: unsupported file type {suffix or '(none)'}; expected .parquet or .csv"
    )


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def load_files(
    wh: Warehouse,
    patterns: Iterable[str],
    dates: DateRange = DateRange(),
    progress: bool = True,
    source: str = "file",
) -> list[LoadResult]:
    """Load every file, each whole or not at all. A refused file does not stop the others: after
    the last one, PartialLoad names every refused file (and carries what did load)."""
    ensure_raw_tables(wh)
    results: list[LoadResult] = []
    refused: list[tuple[str, str]] = []
    files = expand_sources(patterns)
    for path in files:
        try:
            if progress:
                with show.step(f"load {path}"):
                    results.append(load_file(wh, path, dates, progress=progress, source=source))
            else:
                results.append(load_file(wh, path, dates, progress=progress, source=source))
        except LoadError as exc:
            if len(files) == 1:
                raise
            refused.append((str(path), str(exc)))
    if refused:
        raise PartialLoad(results, refused, len(files))
    return results


def load_file(
    wh: Warehouse,
    path: Path,
    dates: DateRange = DateRange(),
    progress: bool = True,
    source: str = "file",
) -> LoadResult:
    fmt = file_format(path)
    if path.stat().st_size == 0:
        raise LoadError(f"{path}: the file is empty (0 bytes)")
    content_key = f"{sha256_file(path)}|{dates.key()}"
    batch_id = f"{source}-{hashlib.sha256(content_key.encode()).hexdigest()[:20]}"
    if wh.scalar(
        "select count(*) from raw.load_batches where content_key = %(k)s", {"k": content_key}
    ):
        return LoadResult(
            str(path), batch_id, 0, skipped=True, note="already loaded (same content)"
        )

    parser = wh.raw_connection if wh.type == "duckdb" else duckdb.connect()
    try:
        if wh.type != "duckdb":
            parser.execute("set TimeZone = 'UTC'")
        typed_sql, row_count, bounds = _prepare(parser, path, fmt, dates)
        if row_count == 0:
            if dates.start or dates.end:
                return LoadResult(
                    str(path), None, 0, skipped=True, note=f"no rows in {dates.key()}"
                )
            raise LoadError(f"{path}: the file has a header but no rows")
        with wh.transaction():
            lock_raw_writes(wh)
            loaded_at = batch_timestamp(wh)
            if wh.type == "duckdb":
                wh.execute(
                    "insert into raw.sensor_readings select * exclude (batch_row), %(loaded_at)s, %(batch_id)s, batch_row"
                    f" from ({typed_sql})",
                    {"loaded_at": loaded_at, "batch_id": batch_id},
                )
            else:
                _copy_to_postgres(parser, wh, typed_sql, loaded_at, batch_id, progress, path)
            wh.execute(
                "insert into raw.load_batches (batch_id, source, source_uri, content_key, row_count,"
                " min_timestamp, max_timestamp, loaded_at) values (%(batch_id)s, %(source)s, %(uri)s, %(key)s,"
                " %(rows)s, %(min_ts)s, %(max_ts)s, %(loaded_at)s)",
                {
                    "batch_id": batch_id,
                    "source": source,
                    "uri": str(path),
                    "key": content_key,
                    "rows": row_count,
                    "min_ts": bounds[0],
                    "max_ts": bounds[1],
                    "loaded_at": loaded_at,
                },
            )
    finally:
        if parser is not wh.raw_connection:
            parser.close()
        else:
            parser.execute("drop view if exists _water_load_src")
    log.info("loaded %s rows from %s as %s", row_count, path, batch_id)
    return LoadResult(str(path), batch_id, row_count)


def _prepare(
    con: duckdb.DuckDBPyConnection, path: Path, fmt: str, dates: DateRange
) -> tuple[str, int, tuple]:
    """Map the file's columns to the raw schema and type-check every value in one pass.

    Returns the typed SELECT (over the temp view `_water_load_src`), the row count and the
    min/max timestamp. Raises LoadError naming the file, row and column of the first problem.
    """
    literal = "'" + str(path).replace("'", "''") + "'"
    if fmt == "parquet":
        reader = f"select *, file_row_number + 1 as _water_row from read_parquet({literal}, file_row_number = true)"
    else:
        # Columns come from the header, every value is read as text (so a bad value is
        # reported, not guessed around) and a row with a different field count fails.
        header = _csv_header(path)
        columns = ", ".join(f"'{name.replace(chr(39), chr(39) * 2)}': 'VARCHAR'" for name in header)
        reader = (
            f"select *, row_number() over () as _water_row from read_csv({literal}, header = true,"
            f" auto_detect = false, delim = ',', quote = '\"', escape = '\"', columns = {{{columns}}},"
            " strict_mode = true, null_padding = false)"
        )
    try:
        con.execute(f"create or replace temp view _water_load_src as {reader}")
        described = con.execute("describe select * from _water_load_src").fetchall()
    except duckdb.Error as exc:
        kind = "Parquet" if fmt == "parquet" else "CSV"
        raise LoadError(f"{path}: not a readable {kind} file ({_short(exc)})") from exc

    source_types: dict[str, str] = {}
    for name, col_type, *_ in described:
        if name in ("_water_row", "file_row_number"):
            continue
        key = name.strip().lower()
        if key in source_types:
            raise LoadError(f"{path}: column {key!r} appears twice")
        source_types[key] = (name, col_type.upper())
    missing = [c for c in REQUIRED_COLUMNS if c not in source_types]
    if missing:
        raise LoadError(
            f"{path}: missing required column(s) {', '.join(missing)}; expected {', '.join(READING_COLUMNS)}"
        )
    if not any(c in source_types for c in MEASUREMENT_COLUMNS):
        raise LoadError(
            f"{path}: none of the measurement columns {', '.join(MEASUREMENT_COLUMNS)} is present"
        )
    extra = sorted(set(source_types) - set(READING_COLUMNS))
    if extra:
        log.warning("%s: ignoring unknown column(s) %s", path, ", ".join(extra))

    selects, checks = [], []
    for column in READING_COLUMNS:
        if column not in source_types:
            kind = (
                "timestamptz"
                if column == "timestamp"
                else "varchar"
                if column in ("node_id", "node_name")
                else "double"
            )
            selects.append(f"cast(null as {kind}) as {_q(column)}")
            continue
        name, col_type = source_types[column]
        expr, check = _typed(column, _q(name), col_type, path)
        selects.append(f"{expr} as {_q(column)}")
        if check:
            checks.append((column, name, check))

    where = []
    if dates.start:
        where.append(f"\"timestamp\" >= timestamptz '{dates.start.isoformat()} 00:00:00+00'")
    if dates.end:
        where.append(
            f"\"timestamp\" < timestamptz '{dates.end.isoformat()} 00:00:00+00' + interval 1 day"
        )
    typed_sql = f"select {', '.join(selects)}, _water_row as batch_row from _water_load_src"
    if where:
        typed_sql = f"select * from ({typed_sql}) where {' and '.join(where)}"

    # One pass over the file: first failing row per checked column, plus count and bounds.
    failure_cols = [f"min(case when {check} then _water_row end)" for _, _, check in checks]
    stats_sql = (
        f"select {', '.join(failure_cols + ['count(*)'])} from _water_load_src"
        if failure_cols
        else "select count(*) from _water_load_src"
    )
    try:
        stats = con.execute(stats_sql).fetchall()[0]
    except duckdb.Error as exc:
        raise LoadError(
            f"{path}: not a readable {'Parquet' if fmt == 'parquet' else 'CSV'} file ({_short(exc)})"
        ) from exc
    for (column, name, _), bad_row in zip(checks, stats[:-1], strict=True):
        if bad_row is not None:
            value = con.execute(
                f"select {_q(name)} from _water_load_src where _water_row = $r", {"r": bad_row}
            ).fetchall()[0][0]
            expected = {"timestamp": "a timestamp", "node_id": f"a node id ({NODE_ID_RULE})"}.get(
                column, "a number"
            )
            raise LoadError(
                f"{path}: row {bad_row}, column {column}: cannot read {str(value)[:60]!r} as {expected}"
            )
    try:
        count, min_ts, max_ts = con.execute(
            f'select count(*), min("timestamp"), max("timestamp") from ({typed_sql})'
        ).fetchall()[0]
    except duckdb.Error as exc:
        raise LoadError(f"{path}: cannot convert the file ({_short(exc)})") from exc
    return typed_sql, count, (min_ts, max_ts)


def _csv_header(path: Path) -> list[str]:
    try:
        with path.open(newline="", encoding="utf-8-sig") as fh:
            header = next(csv.reader(fh), None)
    except (UnicodeDecodeError, csv.Error) as exc:
        raise LoadError(f"{path}: not a readable CSV file ({_short(exc)})") from exc
    if not header or not any(name.strip() for name in header):
        raise LoadError(f"{path}: the first line holds no column names")
    lowered = [name.strip().lower() for name in header]
    for name in lowered:
        if lowered.count(name) > 1:
            raise LoadError(f"{path}: column {name!r} appears twice")
    return header


def _finite(ts: str) -> str:
    """±infinity is no reading time: it loads as a missing timestamp, so staging quarantines the
    row (timestamp_missing) instead of every later gate and window failing on it."""
    return f"case when isinf({ts}) then null else {ts} end"


def _typed(column: str, src: str, col_type: str, path: Path) -> tuple[str, str | None]:
    """(typed expression, failure predicate or None) for one source column."""
    text = f"nullif(trim(cast({src} as varchar)), '')"
    if col_type.endswith("]") or col_type.startswith(("STRUCT", "MAP", "UNION")):
        # Lists and structs start like their element type (DOUBLE[]): refuse them by name.
        raise LoadError(f"{path}: column {column} has type {col_type}; expected a single value")
    if column in ("node_id", "node_name"):
        if not (col_type == "VARCHAR" or col_type.startswith(_NUMERIC_TYPES)):
            raise LoadError(f"{path}: column {column} has type {col_type}; expected text")
        if column == "node_id":
            # NODE_ID_RULE. NFC, so look-alike spellings are one node; an all-blank id is
            # missing (staging quarantines it as node_id_missing).
            ident = f"nfc_normalize(cast({src} as varchar))"
            ident = (
                f"case when regexp_full_match({ident}, '[\\s\\p{{Z}}]*') then null else {ident} end"
            )
            return ident, (
                f"{ident} is not null and (length({ident}) > 128"
                f" or regexp_matches({ident}, '[\\s\\p{{Z}}\\p{{Cc}}/]'))"
            )
        return f"cast({src} as varchar)", None
    if column == "timestamp":
        if col_type == "DATE":
            # A date is not a reading time: loading it as midnight would invent a time of day.
            raise LoadError(
                f"{path}: column timestamp has type DATE; a reading needs a time of day"
                " (expected a timestamp or ISO-8601 text)"
            )
        if col_type.startswith("TIMESTAMP"):
            return _finite(f"cast({src} as timestamptz)"), None
        if col_type == "VARCHAR":
            return (
                _finite(f"try_cast({text} as timestamptz)"),
                f"{text} is not null and try_cast({text} as timestamptz) is null",
            )
        raise LoadError(
            f"{path}: column timestamp has type {col_type}; expected a timestamp or ISO-8601 text"
        )
    if col_type.startswith(_NUMERIC_TYPES):
        return f"cast({src} as double)", None
    if col_type == "VARCHAR":
        return (
            f"try_cast({text} as double)",
            f"{text} is not null and try_cast({text} as double) is null",
        )
    raise LoadError(f"{path}: column {column} has type {col_type}; expected a number")


def _copy_to_postgres(
    parser,
    wh: Warehouse,
    typed_sql: str,
    loaded_at: datetime,
    batch_id: str,
    progress: bool,
    path: Path,
) -> None:
    """Stream the typed rows into PostgreSQL with COPY (CSV written by DuckDB, sent in chunks)."""
    columns = ", ".join(_q(c) for c in READING_COLUMNS) + ", loaded_at, batch_id, batch_row"
    with tempfile.TemporaryDirectory(prefix="water-load-") as tmp:
        csv_path = Path(tmp) / "batch.csv"
        parser.execute(
            f"copy (select * exclude (batch_row), $loaded_at::timestamptz, $batch_id, batch_row from ({typed_sql}))"
            f" to '{csv_path}' (format csv, header false)",
            {"loaded_at": loaded_at, "batch_id": batch_id},
        )
        size = os.path.getsize(csv_path)
        with (
            wh.raw_connection.cursor() as cur,
            cur.copy(f"copy raw.sensor_readings ({columns}) from stdin (format csv)") as copy,
            csv_path.open("rb") as fh,
            show.counter(
                size if progress else 0, f"COPY {path.name}", "B", 8 * _COPY_CHUNK_BYTES
            ) as bar,
        ):
            for chunk in iter(lambda: fh.read(_COPY_CHUNK_BYTES), b""):
                copy.write(chunk)
                bar.update(len(chunk))


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _short(exc: BaseException) -> str:
    """The informative part of a DuckDB reader error, on one line."""
    text = str(exc)
    csv_line = re.search(r"CSV Error on Line: (\d+)", text)
    columns = re.search(r"Expected Number of Columns: (\d+) Found: (\d+)", text)
    if csv_line and columns:
        return (
            f"line {csv_line.group(1)} has {columns.group(2)} fields, the header {columns.group(1)}"
        )
    text = text.split("Possible fixes:")[0]
    return " ".join(text.split())[:200]
