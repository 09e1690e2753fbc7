"""`water nodes FILE.csv`: register or update node metadata (upsert by node_id).

Only the columns present in the file are written, so a file with just
`node_id,district` moves nodes between districts without erasing their other fields.
The whole file is checked first; a bad value refuses the file with its row and column.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from flows.kernel.raw_store import BALANCE_ROLES, NODE_COLUMN_TYPES, NODE_COLUMNS, ensure_raw_tables
from flows.kernel.warehouse import Warehouse
from flows.loaders.files import NODE_ID_RULE, node_id_problem, normalise_node_id

_TRUE = {"true", "t", "yes", "y", "1"}
_FALSE = {"false", "f", "no", "n", "0"}


class NodeFileError(ValueError):
    """The node metadata file cannot be used; one line naming file, row, column and why."""


@dataclass(frozen=True)
class NodesResult:
    inserted: int
    updated: int
    columns: tuple[str, ...]


def read_node_file(path: Path) -> pd.DataFrame:
    """Parse and check a node metadata CSV; returns typed columns that were present."""
    if not path.exists():
        raise NodeFileError(f"{path}: no such file")
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise NodeFileError(
            f"{path}: not a readable CSV file ({' '.join(str(exc).split())[:160]})"
        ) from exc
    frame.columns = [c.strip().lower() for c in frame.columns]
    if "node_id" not in frame.columns:
        raise NodeFileError(
            f"{path}: missing required column node_id; known columns: {', '.join(NODE_COLUMNS)}"
        )
    unknown = [c for c in frame.columns if c not in NODE_COLUMNS]
    if unknown:
        raise NodeFileError(
            f"{path}: unknown column(s) {', '.join(unknown)}; known columns: {', '.join(NODE_COLUMNS)}"
        )
    if frame.empty:
        raise NodeFileError(f"{path}: the file has a header but no rows")

    typed = pd.DataFrame(index=frame.index)
    for column in frame.columns:
        values = [_convert(path, row + 2, column, raw) for row, raw in enumerate(frame[column])]
        typed[column] = pd.Series(values, index=frame.index, dtype=object)
    duplicated = typed["node_id"].duplicated(keep=False)
    if duplicated.any():
        first = int(duplicated.to_numpy().nonzero()[0][0])
        raise NodeFileError(
            f"{path}: row {first + 2}, column node_id: {typed['node_id'].iloc[first]!r} appears more than once"
        )
    return typed


def _convert(path: Path, line: int, column: str, raw: str):
    text = raw.strip()
    kind = NODE_COLUMN_TYPES[column]
    if text == "":
        if column == "node_id":
            raise NodeFileError(f"{path}: row {line}, column node_id: empty node id")
        return None
    try:
        if kind == "double":
            value = float(text)
            if not math.isfinite(value):
                raise ValueError
            return value
        if kind == "integer":
            value = int(float(text))
            if value <= 0 or value != float(text):
                raise ValueError
            return value
        if kind == "boolean":
            if text.lower() in _TRUE:
                return True
            if text.lower() in _FALSE:
                return False
            raise ValueError
    except ValueError:
        expected = {
            "double": "a finite number",
            "integer": "a positive whole number",
            "boolean": "true or false",
        }[kind]
        raise NodeFileError(
            f"{path}: row {line}, column {column}: cannot read {text[:40]!r} as {expected}"
        ) from None
    if column == "node_id":
        # The same rule as readings' ids, or the metadata would describe a node the API cannot
        # address and no reading can join (found by the fault campaign).
        text = normalise_node_id(text)
        problem = node_id_problem(text)
        if problem is not None:
            raise NodeFileError(
                f"{path}: row {line}, column node_id: {text[:40]!r} is not a node id"
                f" ({NODE_ID_RULE}; {problem})"
            )
        return text
    if column == "balance_role" and text.lower() not in BALANCE_ROLES:
        raise NodeFileError(
            f"{path}: row {line}, column balance_role: {text!r} is not one of {', '.join(BALANCE_ROLES)}"
        )
    return text.lower() if column == "balance_role" else text


def upsert_nodes(wh: Warehouse, frame: pd.DataFrame) -> NodesResult:
    """Insert new nodes and update the given columns of known ones, in one transaction."""
    ensure_raw_tables(wh)
    if frame.empty:
        return NodesResult(inserted=0, updated=0, columns=())
    columns = [c for c in NODE_COLUMNS if c in frame.columns]
    updates = [c for c in columns if c != "node_id"]
    placeholders = ", ".join(f"%({c})s" for c in columns)
    set_clause = ", ".join(f"{c} = excluded.{c}" for c in [*updates, "updated_at"])
    statement = (
        f"insert into raw.node_metadata ({', '.join(columns)}, updated_at)"  # noqa: S608 - fixed column names
        f" values ({placeholders}, %(updated_at)s)"
        f" on conflict (node_id) do update set {set_clause}"
    )
    records = frame[columns].astype(object).where(frame[columns].notna(), None).to_dict("records")
    with wh.transaction():
        existing = {row[0] for row in wh.query("select node_id from raw.node_metadata")}
        now = wh.scalar("select current_timestamp")
        for record in records:
            wh.execute(statement, {**record, "updated_at": now})
    inserted = sum(1 for r in records if r["node_id"] not in existing)
    return NodesResult(inserted=inserted, updated=len(records) - inserted, columns=tuple(columns))


def register_node_file(wh: Warehouse, path: Path) -> NodesResult:
    return upsert_nodes(wh, read_node_file(path))
