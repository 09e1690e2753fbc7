"""The `water` command. Each command is a thin wrapper over a tested module.

Every command takes --target (default: WATER_TARGET, else duckdb) and exits non-zero with a
one-line reason on failure (set WATER_DEBUG=1 for the traceback).
"""

from __future__ import annotations

import functools
import logging
import os
import sys
from datetime import date, datetime
from pathlib import Path

import click

from flows.config import load_settings

log = logging.getLogger("water")


def _fail(message: str, code: int = 1) -> None:
    click.echo(f"water: error: {message}", err=True)
    sys.exit(code)


def command(fn):
    """Turn any exception into a one-line message and a non-zero exit."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except click.exceptions.Exit:
            raise
        except KeyboardInterrupt:
            _fail("interrupted", 130)
        except Exception as exc:  # noqa: BLE001 - the CLI's contract is one line, not a traceback
            if os.environ.get("WATER_DEBUG"):
                raise
            text = " ".join(str(exc).split()) or type(exc).__name__
            _fail(text)

    return wrapper


target_option = click.option(
    "--target",
    "target_name",
    default=None,
    help="duckdb | postgres | bigquery (default: $WATER_TARGET, else duckdb).",
)


def _target(target_name: str | None):
    return load_settings().target(target_name)


def _parse_date(_ctx, _param, value: str | None) -> date | None:
    if value is None:
        return None
    try:
        return datetime.strptime(value, "%Y-%m-%d").date()
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a date in YYYY-MM-DD form") from None


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", is_flag=True, help="Log progress details.")
def main(verbose: bool) -> None:
    """water-infrastructure: ELT for a water utility's sensor network."""
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


@main.command()
@click.argument("sources", nargs=-1, required=True)
@click.option("--start-date", callback=_parse_date, help="First day to load (UTC, inclusive).")
@click.option("--end-date", callback=_parse_date, help="Last day to load (UTC, inclusive).")
@click.option(
    "--batch-size",
    type=click.IntRange(min=1),
    default=100_000,
    show_default=True,
    help="Rows per extraction page (bigquery).",
)
@click.option(
    "--nodes",
    type=click.IntRange(min=1),
    default=20,
    show_default=True,
    help="synthetic: number of nodes.",
)
@click.option(
    "--days",
    type=click.FloatRange(min=0.01),
    default=7.0,
    show_default=True,
    help="synthetic: days of data.",
)
@click.option(
    "--cadence",
    type=click.IntRange(min=1),
    default=60,
    show_default=True,
    help="synthetic: seconds between readings.",
)
@click.option("--seed", type=int, default=42, show_default=True, help="synthetic: random seed.")
@target_option
@command
def load(sources, start_date, end_date, batch_size, nodes, days, cadence, seed, target_name):
    """Load raw readings from SOURCES: Parquet/CSV files or globs, `synthetic`, or `bigquery`."""
    from flows.loading import load_source
    from flows.warehouse import connect

    synthetic = None
    if list(sources) == ["synthetic"]:
        from flows.loaders.synthetic import SyntheticConfig

        synthetic = SyntheticConfig(nodes=nodes, days=days, cadence_s=cadence, seed=seed)
    target = _target(target_name)
    with connect(target) as wh:
        results = load_source(
            wh,
            list(sources),
            start_date,
            end_date,
            batch_size=batch_size,
            synthetic_config=synthetic,
        )
    loaded = sum(r.rows for r in results)
    for r in results:
        click.echo(
            f"{'skipped' if r.skipped else 'loaded '} {r.rows:>12,} rows  {r.source_uri}"
            f"{'  (' + r.note + ')' if r.note else ''}"
        )
    click.echo(f"{loaded:,} new raw row(s) in {target.describe()}")


@main.command()
@click.argument("file", type=click.Path(path_type=Path))
@target_option
@command
def nodes(file, target_name):
    """Register or update node metadata from a CSV file (upsert by node_id)."""
    from flows.nodes import register_node_file
    from flows.warehouse import connect

    target = _target(target_name)
    with connect(target) as wh:
        result = register_node_file(wh, file)
    click.echo(
        f"{result.inserted} node(s) registered, {result.updated} updated "
        f"({', '.join(result.columns)}) in {target.describe()}"
    )


@main.command()
@target_option
@command
def cycle(target_name):
    """Run one processing cycle now."""
    from flows.cycle import run_cycle

    target = _target(target_name)
    result = run_cycle(target)
    steps = ", ".join(f"{k} {v:.1f}s" for k, v in result.step_seconds.items())
    click.echo(
        f"cycle {result.cycle_id} completed on {target.describe()} in {result.duration_seconds:.1f}s ({steps})"
    )


@main.command()
@target_option
@command
def status(target_name):
    """Show what the warehouse holds: loads, windows, nodes, rejects."""
    from flows.status import collect_status, format_status

    click.echo(format_status(collect_status(_target(target_name))))


@main.command()
@click.option("--nodes", type=click.IntRange(min=2), default=24, show_default=True)
@click.option("--days", type=click.FloatRange(min=1), default=14.0, show_default=True)
@click.option("--seed", type=int, default=7, show_default=True)
@target_option
@command
def demo(nodes, days, seed, target_name):
    """Generate a demo network, load it and run a cycle (no server needed)."""
    from flows.demo import run_demo

    run_demo(_target(target_name), nodes=nodes, days=days, seed=seed, echo=click.echo)


if __name__ == "__main__":
    main()
