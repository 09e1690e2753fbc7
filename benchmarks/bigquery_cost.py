"""BigQuery bytes scanned per 30-minute cycle (issue 12), measured on the emulator's statements.

    .venv/bin/python benchmarks/bigquery_cost.py [--nodes 2] [--short-days 5] [--long-days 10]

The emulator (crucible) has no dry run and reports 0 bytes, so the bytes a statement would
bill are computed from what BigQuery documents: a query reads the partitions its constant
filters on the partitioning column leave (every partition of an unpartitioned table), and
bills the logical bytes of the columns it reads (TIMESTAMP / INT64 / FLOAT64 8 B, BOOL 1 B,
STRING 2 B + UTF-8 length).

1. Starts the emulator (tests/bigquery_emulator.py) and, for a short and a long history, a
   fresh project with day partitions on (WATER_BIGQUERY_PARTITIONS=1): `--nodes` meters at
   1-minute cadence, history landed and built once, then 30 minutes of new readings landed
   and built incrementally: one cycle.
2. Records every SQL statement of the cycle as dbt sent it (dbt's SQLQuery events): the
   landing operation, the models, their hooks and MERGEs, and the data tests.
3. For each statement and each table it reads (through views and CTEs), the partitions left by
   its constant filters (parsed with sqlglot), and the logical bytes of all columns of the
   rows in them, counted on the emulator (an upper bound: BigQuery bills only the columns
   read). A write target is not read, except a MERGE's destination (pruned by its ON clause).
4. Prints per statement: partitions read / held, bytes, for both histories; then totals, and
   the totals scaled to 50,000 meters (x 50,000 / nodes). Writes
   benchmarks/out/bigquery_cost.json.

A statement whose bytes grow with history is marked `GROWS`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pandas as pd
import sqlglot
from sqlglot import exp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
OUT = ROOT / "benchmarks" / "out"
SCALE_METERS = 50_000
NULL_DAY = "NULL"  # the __NULL__ partition


# --- the emulator's catalog: tables, partitioning, rows and logical bytes per partition -------


@dataclass
class TableInfo:
    path: str  # project.dataset.table
    partition_column: str | None
    view_sql: str | None = None
    # partition day (YYYY-MM-DD or NULL_DAY; "*" for an unpartitioned table) -> (rows, bytes)
    partitions: dict[str, tuple[int, int]] = field(default_factory=dict)


def logical_size_sql(schema) -> str:
    """BigQuery's logical bytes of one row, as SQL over the table's columns."""
    parts = []
    for column in schema:
        name = f"`{column.name}`"
        kind = column.field_type.upper()
        if kind in ("STRING",):
            parts.append(f"if({name} is null, 0, 2 + byte_length({name}))")
        elif kind in ("BOOL", "BOOLEAN"):
            parts.append(f"if({name} is null, 0, 1)")
        elif kind in ("DATE",):
            parts.append(f"if({name} is null, 0, 8)")
        else:  # TIMESTAMP, INT64, FLOAT64, NUMERIC (16, rare here)
            parts.append(f"if({name} is null, 0, {16 if kind == 'NUMERIC' else 8})")
    return " + ".join(parts) or "0"


def read_catalog(bq, project: str) -> dict[str, TableInfo]:
    tables: dict[str, TableInfo] = {}
    for dataset in bq.list_datasets(project):
        for item in bq.list_tables(f"{project}.{dataset.dataset_id}"):
            table = bq.get_table(item.reference)
            path = f"{project}.{dataset.dataset_id}.{table.table_id}"
            if table.table_type == "VIEW":
                tables[path.lower()] = TableInfo(path, None, view_sql=table.view_query)
                continue
            part = table.time_partitioning.field if table.time_partitioning else None
            info = TableInfo(path, part)
            day = f"cast(date(`{part}`) as string)" if part else "'*'"
            rows = bq.query(
                f"select coalesce({day}, '{NULL_DAY}') as day, count(*) as n,"
                f" sum({logical_size_sql(table.schema)}) as b from `{path}` group by 1"
            ).result()
            info.partitions = {r["day"]: (int(r["n"]), int(r["b"] or 0)) for r in rows}
            tables[path.lower()] = info
    return tables


# --- which partitions a statement reads ----------------------------------------------------

ALL = None  # "every partition": no usable constant filter


def _literal_time(node: exp.Expression) -> datetime | None:
    """A constant timestamp: TIMESTAMP 'x' / CAST('x' AS TIMESTAMP) / 'x'."""
    if isinstance(node, exp.Cast | exp.TsOrDsToTimestamp | exp.Timestamp) and isinstance(
        node.this, exp.Literal
    ):
        node = node.this
    if isinstance(node, exp.Literal) and node.is_string:
        try:
            value = pd.Timestamp(node.this)
        except ValueError:
            return None
        value = value.tz_localize(UTC) if value.tzinfo is None else value.tz_convert(UTC)
        return value.to_pydatetime()
    return None


def _day_filter(pred: exp.Expression, column: str, alias: str | None, single: bool):
    """A function day -> may-match for a predicate on the partition column, None if unusable."""
    if isinstance(pred, exp.Paren):
        return _day_filter(pred.this, column, alias, single)
    if isinstance(pred, exp.And | exp.Or):
        left = _day_filter(pred.left, column, alias, single)
        right = _day_filter(pred.right, column, alias, single)
        if isinstance(pred, exp.And):
            if left is None and right is None:
                return None
            left = left or (lambda d: True)
            right = right or (lambda d: True)
            return lambda d: left(d) and right(d)
        if left is None or right is None:
            return None
        return lambda d: left(d) or right(d)

    def is_column(node) -> bool:
        if not isinstance(node, exp.Column) or node.name.lower() != column.lower():
            return False
        return node.table.lower() == (alias or "").lower() if node.table else single

    if isinstance(pred, exp.Is) and is_column(pred.this) and isinstance(pred.expression, exp.Null):
        return lambda d: d == NULL_DAY
    if isinstance(pred, exp.GTE | exp.GT | exp.LT | exp.LTE):
        swap = {exp.GTE: exp.LTE, exp.GT: exp.LT, exp.LT: exp.GT, exp.LTE: exp.GTE}
        kind, left, right = type(pred), pred.this, pred.expression
        if is_column(right):
            kind, left, right = swap[kind], right, left
        if not is_column(left):
            return None
        bound = _literal_time(right)
        if bound is None:
            return None

        def match(d: str) -> bool:
            if d == NULL_DAY:
                return False
            start = datetime.fromisoformat(d).replace(tzinfo=UTC)
            end = start + timedelta(days=1)
            if kind in (exp.GTE, exp.GT):
                return end > bound
            return start < bound if kind is exp.LT else start <= bound

        return match
    return None


def _conjuncts(node: exp.Expression | None) -> list[exp.Expression]:
    if node is None:
        return []
    node = node.this if isinstance(node, exp.Where) else node
    return list(node.flatten()) if isinstance(node, exp.And) else [node]


def _sources(select: exp.Select) -> list[exp.Expression]:
    from_ = select.args.get("from_") or select.args.get("from")
    found = [from_.this] if from_ is not None else []
    return found + [j.this for j in select.args.get("joins") or []]


def _filters_here(table: exp.Table, column: str):
    """Day filters on `column` of `table` from its own select's WHERE and its join's ON."""
    select = table.find_ancestor(exp.Select)
    if select is None:
        return select, []
    alias = table.alias_or_name
    single = len(_sources(select)) == 1
    preds = _conjuncts(select.args.get("where"))
    join = table.find_ancestor(exp.Join)
    if join is not None and join.this is table:
        preds += _conjuncts(join.args.get("on"))
    filters = []
    for pred in preds:
        if pred.find(exp.Subquery, exp.Select):
            continue
        day = _day_filter(pred, column, alias, single)
        if day is not None:
            filters.append(day)
    return select, filters


def _projection_map(select: exp.Select) -> dict[str, str] | None:
    """Output name -> input column of a plain projection (None: not a plain projection)."""
    if select.args.get("group") or select.find(exp.Window):
        return None
    mapping: dict[str, str] = {}
    for projection in select.expressions:
        if isinstance(projection, exp.Star) or (
            isinstance(projection, exp.Column) and isinstance(projection.this, exp.Star)
        ):
            mapping["*"] = "*"
        elif isinstance(projection, exp.Alias) and isinstance(projection.this, exp.Column):
            mapping[projection.alias.lower()] = projection.this.name.lower()
        elif isinstance(projection, exp.Column):
            mapping[projection.name.lower()] = projection.name.lower()
    return mapping


def _day_sets(table: exp.Table, column: str, root: exp.Expression, depth: int = 0):
    """Lists of day filters (one list per way this table's rows reach the statement)."""
    select, filters = _filters_here(table, column)
    if select is None or depth > 8:
        return [filters]
    cte = select.parent if isinstance(select.parent, exp.CTE) else None
    mapping = _projection_map(select)
    if filters or cte is None or mapping is None:
        return [filters]
    # A plain CTE over the table: filters where the CTE is read apply (BigQuery inlines CTEs).
    out_column = next((o for o, i in mapping.items() if i == column.lower()), None)
    if out_column is None and "*" in mapping:
        out_column = column.lower()
    name = cte.alias.lower()
    refs = [
        t
        for t in root.find_all(exp.Table)
        if t.name.lower() == name and not t.db and t.find_ancestor(exp.CTE) is not cte
    ]
    if out_column is None or not refs:
        return [filters]
    return [f for ref in refs for f in _day_sets(ref, out_column, root, depth + 1)]


def _view_base(view_sql: str) -> tuple[str, dict[str, str]] | None:
    """A view over one table: its path and the output column -> base column renames."""
    tree = sqlglot.parse_one(view_sql, read="bigquery")
    tables = [t for t in tree.find_all(exp.Table) if t.db]
    if len({_path(t) for t in tables}) != 1:
        return None
    renames: dict[str, str] = {}
    for select in tree.find_all(exp.Select):
        for name, source in (_projection_map(select) or {}).items():
            if name != "*" and name != source:
                renames[name] = source
    return _path(tables[0]), renames


def _path(table: exp.Table) -> str:
    return ".".join(p for p in (table.catalog, table.db, table.name) if p).lower()


def _write_target(tree: exp.Expression) -> exp.Table | None:
    if isinstance(tree, exp.Insert | exp.Create):
        target = tree.this
        return target.this if isinstance(target, exp.Schema) else target
    return None


def statement_reads(sql: str, catalog: dict[str, TableInfo]) -> dict[str, tuple[int, int, int]]:
    """table path -> (partitions read, partitions held, logical bytes read)."""
    try:
        tree = sqlglot.parse_one(sql, read="bigquery")
    except sqlglot.errors.ParseError:
        tree = None
    if tree is None or isinstance(tree, exp.Command):
        return {}  # scripting / DDL without a query: nothing scanned
    if isinstance(tree, exp.Create) and str(tree.args.get("kind", "")).upper() == "VIEW":
        return {}  # a view is stored, not run
    written = _write_target(tree)
    merge_dest = tree.this if isinstance(tree, exp.Merge) else None
    days_read: dict[str, set[str]] = defaultdict(set)
    for table in tree.find_all(exp.Table):
        if table is written or not table.db:
            continue
        path = _path(table)
        info = catalog.get(path)
        column_renames: dict[str, str] = {}
        if info is not None and info.view_sql is not None:
            base = _view_base(info.view_sql)
            if base is None:
                continue
            path, column_renames = base
            info = catalog.get(path)
        if info is None:
            continue
        held = set(info.partitions)
        if info.partition_column is None:
            days_read[path] |= held
            continue
        column = info.partition_column.lower()
        view_column = next((o for o, i in column_renames.items() if i == column), column)
        if table is merge_dest:
            on = tree.args.get("on")
            filters = [
                f
                for pred in _conjuncts(on)
                if (f := _day_filter(pred, view_column, table.alias_or_name, False)) is not None
            ]
            ways = [filters]
        else:
            ways = _day_sets(table, view_column, tree)
        for filters in ways:
            days_read[path] |= {d for d in held if all(f(d) for f in filters)}
    result = {}
    for path, days in days_read.items():
        info = catalog[path]
        read_bytes = sum(info.partitions[d][1] for d in days)
        result[info.path] = (len(days), len(info.partitions), read_bytes)
    return result


# --- one cycle on the emulator -------------------------------------------------------------


def run_captured(target, command: str, extra: list[str]) -> list[tuple[str, str]]:
    """Run dbt in this process; return (node, sql) for every statement it sent."""
    from dbt.cli.main import dbtRunner

    from flows.kernel.dbt_runner import dbt_args, dbt_environment

    statements: list[tuple[str, str]] = []

    def capture(event) -> None:
        if event.info.name == "SQLQuery":
            node = event.data.node_info.unique_id if event.data.node_info else ""
            statements.append((node or event.data.conn_name, event.data.sql))

    with dbt_environment(target):
        result = dbtRunner(callbacks=[capture]).invoke(dbt_args(command, target, extra))
    if not result.success:
        raise RuntimeError(f"dbt {command} failed: {result.exception or result.result}")
    return statements


def one_cycle(endpoint: str, nodes: int, days: int, now: datetime) -> dict:
    from flows.loaders.bigquery import client, late_window_hours, table_path
    from flows.loaders.synthetic import SyntheticConfig, generate
    from tests.bigquery_emulator import append_rows, fresh_target

    target = fresh_target(endpoint)
    os.environ.update(target.dbt_env())
    os.environ["WATER_BIGQUERY_PARTITIONS"] = "1"
    # The production table laid out as docs/bigquery.md recommends (day partitions; the
    # emulator cannot hold require_partition_filter, which changes no figure here).
    bq = client(target)
    bq.create_dataset(f"{target.bigquery_project}.{target.bigquery_dataset}", exists_ok=True)
    bq.query(
        f"create table {table_path(target.bigquery_project, target.bigquery_dataset)} ("
        "`timestamp` timestamp, node_id string, node_name string, flow_rate float64,"
        " pressure float64, temperature float64, volume float64, quality_score float64)"
        " partition by timestamp_trunc(`timestamp`, day) cluster by node_id"
    ).result()
    start = now - timedelta(days=days)
    readings = generate(SyntheticConfig(nodes=nodes, days=days, cadence_s=60, seed=7, start=start))
    readings["timestamp"] = pd.to_datetime(readings["timestamp"], utc=True)
    cut = now - timedelta(minutes=30)
    history = readings[readings["timestamp"] < cut]
    new = readings[readings["timestamp"] >= cut]

    def land(since: date | None) -> list[tuple[str, str]]:
        args: dict[str, object] = {
            "batch_id": uuid.uuid4().hex,
            "late_window_hours": late_window_hours(),
        }
        if since is not None:
            args["since"] = since.isoformat()
        return run_captured(
            target, "run-operation", ["land_sensor_readings", "--args", json.dumps(args)]
        )

    append_rows(target, history)
    land(start.date())  # the history arrives as one reconciliation run
    run_captured(target, "build", [])
    append_rows(target, new)
    statements = [("landing", sql) for _, sql in land(None)]
    statements += run_captured(target, "build", [])

    catalog = read_catalog(client(target), target.bigquery_project)
    rows = []
    for node, sql in statements:
        for path, (read, held, nbytes) in statement_reads(sql, catalog).items():
            rows.append(
                {
                    "node": node.replace("model.water_infrastructure.", "").replace(
                        "test.water_infrastructure.", "test:"
                    ),
                    "kind": (sql.lstrip().split(None, 1) or ["?"])[0].lower(),
                    "table": path.split(".", 1)[1],
                    "partitions_read": read,
                    "partitions_held": held,
                    "bytes": nbytes,
                }
            )
    return {"days": days, "readings": len(readings), "new": len(new), "reads": rows}


def summarise(short: dict, long: dict, nodes: int) -> dict:
    def per_node(run: dict, key: str) -> dict[str, int]:
        totals: dict[str, int] = defaultdict(int)
        for r in run["reads"]:
            totals[r["node"] if not r["node"].startswith("test:") else "data tests"] += r[key]
        return totals

    # A statement grows with history when it reads more partitions (bytes also move a little
    # with the generated values: a NULL is 0 bytes).
    a, b = per_node(short, "bytes"), per_node(long, "bytes")
    pa, pb = per_node(short, "partitions_read"), per_node(long, "partitions_read")
    print(
        f"{'statement owner':45} {'partitions read':>17}   {'bytes read':>21}\n"
        f"{'':45} {short['days']:>7}d {long['days']:>7}d   {short['days']:>9}d {long['days']:>9}d"
    )
    for name in sorted(set(a) | set(b)):
        flag = "  GROWS" if pb.get(name, 0) > pa.get(name, 0) else ""
        print(
            f"{name[:45]:45} {pa.get(name, 0):>8} {pb.get(name, 0):>8}"
            f"   {a.get(name, 0):>10,} {b.get(name, 0):>10,}{flag}"
        )
    scale = SCALE_METERS / nodes
    models = {k: v for k, v in a.items() if k != "data tests"}
    models_long = {k: v for k, v in b.items() if k != "data tests"}
    summary = {
        "nodes": nodes,
        "bytes_short": sum(models.values()),
        "bytes_long": sum(models_long.values()),
        "tests_short": a.get("data tests", 0),
        "tests_long": b.get("data tests", 0),
        "growing": sorted(k for k in set(pa) | set(pb) if pb.get(k, 0) > pa.get(k, 0)),
    }
    for key in ("bytes_short", "bytes_long", "tests_short", "tests_long"):
        summary[f"{key}_at_{SCALE_METERS}"] = int(summary[key] * scale)
    print(
        f"cycle without data tests: {summary['bytes_short']:,} B ({short['days']} days) vs "
        f"{summary['bytes_long']:,} B ({long['days']} days); at {SCALE_METERS:,} meters "
        f"{summary['bytes_short_at_50000'] / 1e9:.1f} GB vs "
        f"{summary['bytes_long_at_50000'] / 1e9:.1f} GB"
    )
    print(
        f"data tests: {summary['tests_short']:,} B vs {summary['tests_long']:,} B; at "
        f"{SCALE_METERS:,} meters {summary['tests_short_at_50000'] / 1e9:.1f} GB vs "
        f"{summary['tests_long_at_50000'] / 1e9:.1f} GB"
    )
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=2)
    # Both longer than the re-scoring lookback (3-4 partitions), or the short one runs out.
    parser.add_argument("--short-days", type=int, default=5)
    parser.add_argument("--long-days", type=int, default=10)
    args = parser.parse_args()

    from tests.bigquery_emulator import running_emulator

    OUT.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("WATER_DBT_TARGET_ROOT", tempfile.mkdtemp(prefix="bqcost-dbt-"))
    now = datetime.now(UTC).replace(second=0, microsecond=0)
    with running_emulator(OUT / "bigquery_cost-emulator.log") as endpoint:
        short = one_cycle(endpoint, args.nodes, args.short_days, now)
        long = one_cycle(endpoint, args.nodes, args.long_days, now)
    summary = summarise(short, long, args.nodes)
    (OUT / "bigquery_cost.json").write_text(
        json.dumps({"summary": summary, "short": short, "long": long}, indent=1, default=str)
    )


if __name__ == "__main__":
    main()
