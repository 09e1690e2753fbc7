"""The `water` command. Each command is a thin wrapper over a tested module.

Every command takes --target (default: WATER_TARGET, else duckdb) and exits non-zero with a
one-line reason on failure (set WATER_DEBUG=1 for the traceback).
"""

from __future__ import annotations

import functools
import logging
import os
import sys
from dataclasses import replace
from datetime import date, datetime
from pathlib import Path

import click

from flows.kernel.settings import DASHBOARD_PORT, load_settings

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


# Long-lived servers log instead of printing step lines.
_QUIET_COMMANDS = ("api", "serve")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", is_flag=True, help="Log progress details.")
@click.pass_context
def main(ctx: click.Context, verbose: bool) -> None:
    """water-infrastructure: ELT for a water utility's sensor network."""
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if ctx.invoked_subcommand not in _QUIET_COMMANDS:
        # Imported when the command runs: `water --help` stays fast.
        from flows.kernel import progress

        progress.enable()  # steps as they happen (plain lines unless on a terminal)


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
@click.option(
    "--profile",
    type=click.Choice(["default", "realistic"]),
    default="default",
    show_default=True,
    help="synthetic: `realistic` adds pumps, tanks, deadband sensors, mixed cadences, holidays,"
    " meter glitches and leak/burst incidents (docs/synthetic.md).",
)
@click.option(
    "--incidents/--no-incidents",
    default=True,
    show_default=True,
    help="synthetic --profile realistic: inject leaks and bursts.",
)
@click.option(
    "--glitches/--no-glitches",
    default=True,
    show_default=True,
    help="synthetic --profile realistic: inject meter glitches.",
)
@click.option(
    "--truth",
    type=click.Path(file_okay=False, path_type=Path),
    help="synthetic --profile realistic: also write the ground truth (incidents.csv,"
    " glitches.csv, district_flows.parquet) into this folder.",
)
@click.option(
    "--process",
    is_flag=True,
    help="Backfill: load --start-date..--end-date day by day and run a processing cycle after"
    " each day (resumable; the same code as the Prefect backfill flow).",
)
@click.option(
    "--chunk-days",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="--process: days per chunk.",
)
@target_option
@command
def load(
    sources,
    start_date,
    end_date,
    batch_size,
    nodes,
    days,
    cadence,
    seed,
    profile,
    incidents,
    glitches,
    truth,
    process,
    chunk_days,
    target_name,
):
    """Load raw readings from SOURCES: Parquet/CSV files or globs, `synthetic`, or `bigquery`."""
    # Imported when the command runs: `water --help` stays fast.
    from flows.kernel.warehouse import connect
    from flows.loaders.loading import load_source

    synthetic = None
    if list(sources) == ["synthetic"]:
        # Imported when the command runs: `water --help` stays fast.
        from flows.loaders.synthetic import SyntheticConfig

        synthetic = SyntheticConfig(
            nodes=nodes,
            days=days,
            cadence_s=cadence,
            seed=seed,
            profile=profile,
            incidents=incidents,
            glitches=glitches,
        )
    if truth is not None:
        if synthetic is None or profile != "realistic":
            raise click.UsageError("--truth needs `synthetic --profile realistic`")

        # Imported when the command runs: `water --help` stays fast.
        from flows.loaders.synthetic import data_window
        from flows.loaders.synthetic_realistic import write_truth

        # pin the window so the truth and the loaded data describe the same readings
        synthetic = replace(synthetic, start=data_window(synthetic)[0])
        click.echo(f"ground truth written to {write_truth(synthetic, truth)}")
    target = _target(target_name)
    if target.type == "bigquery":
        # On BigQuery the raw store is the landing table: landing is the whole load.
        from flows.loaders.bigquery import land_new_rows
        from flows.loaders.files import DateRange

        if list(sources) != ["bigquery"] or process:
            raise click.UsageError(
                "the bigquery target loads only `bigquery` (its production table), without --process"
            )
        batch = land_new_rows(target, DateRange(start_date, end_date))
        click.echo(f"landed new rows of sensor_readings_ml as batch {batch} in {target.describe()}")
        return
    if process:
        # Imported when the command runs: `water --help` stays fast.
        from flows.pipeline.backfill import run_backfill
        from flows.pipeline.results import describe_result

        if start_date is None or end_date is None:
            raise click.UsageError("--process needs --start-date and --end-date")
        result = run_backfill(
            target,
            list(sources),
            start_date,
            end_date,
            chunk_days=chunk_days,
            synthetic_config=synthetic,
            on_chunk=lambda first, last, what: click.echo(f"  {first}..{last}: {what}"),
        )
        click.echo(describe_result(result, target))
        return
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
@target_option
@command
def init(target_name):
    """Create every table dbt's sources read, so `dbt build` works on a new warehouse."""
    # Imported when the command runs: `water --help` stays fast.
    from flows.pipeline.run import prepare_target

    target = _target(target_name)
    prepare_target(target)
    click.echo(
        f"source tables ready in {target.describe()} (raw, jobs, quality checks, ML);"
        " `dbt build` can run"
    )


@main.command()
@click.argument("file", type=click.Path(path_type=Path))
@target_option
@command
def nodes(file, target_name):
    """Register or update node metadata from a CSV file (upsert by node_id)."""
    # Imported when the command runs: `water --help` stays fast.
    from flows.kernel.warehouse import connect
    from flows.loaders.nodes import register_node_file

    target = _target(target_name)
    with connect(target) as wh:
        result = register_node_file(wh, file)
    click.echo(
        f"{result.inserted} node(s) registered, {result.updated} updated "
        f"({', '.join(result.columns)}) in {target.describe()}"
    )


@main.command()
@click.option(
    "--source",
    "sources",
    multiple=True,
    help="Load what is new from here first: files/globs/folder, `synthetic` or `bigquery` (repeatable).",
)
@click.option("--no-publish", is_flag=True, help="Do not publish to Redis.")
@target_option
@command
def cycle(sources, no_publish, target_name):
    """Run one processing cycle now (the same code as the Prefect flow)."""
    # Imported when the command runs: `water --help` stays fast.
    from flows.pipeline.cycle import run_cycle
    from flows.pipeline.results import describe_result

    target = _target(target_name)
    synthetic = None
    if list(sources) == ["synthetic"]:
        # Imported when the command runs: `water --help` stays fast.
        from flows.loaders.synthetic import SyntheticConfig

        synthetic = SyntheticConfig()
    result = run_cycle(
        target, source=list(sources), synthetic_config=synthetic, publish_to_redis=not no_publish
    )
    click.echo(describe_result(result, target))
    refused = (result.summary.get("steps", {}).get("load") or {}).get("refused_files")
    if refused:  # the cycle processed the rest; the exit code still tells the operator
        reasons = "; ".join(r["reason"] for r in refused)
        _fail(f"{len(refused)} source file(s) refused, the rest processed: {reasons}")


@main.command()
@click.option(
    "--port",
    type=click.IntRange(1, 65535),
    default=4200,
    show_default=True,
    help="Port of the local Prefect server started when PREFECT_API_URL is unset.",
)
@target_option
@command
def serve(port, target_name):
    """Serve every Prefect deployment (schedules of prefect.yaml) until interrupted."""
    # Imported when the command runs: `water --help` stays fast.
    from flows.orchestration.serve import serve as serve_deployments

    target = _target(target_name)
    click.echo(f"serving the deployments of prefect.yaml for {target.describe()}")
    serve_deployments(target=target.name, port=port, echo=click.echo)


@main.command()
@target_option
@command
def status(target_name):
    """Show what the warehouse holds: loads, windows, nodes, rejects."""
    # Imported when the command runs: `water --help` stays fast.
    from flows.pipeline.status import collect_status, format_status

    click.echo(format_status(collect_status(_target(target_name))))


@main.command()
@click.option("--nodes", type=click.IntRange(min=2), default=24, show_default=True)
@click.option("--days", type=click.FloatRange(min=1), default=35.0, show_default=True)
@click.option("--seed", type=int, default=7, show_default=True)
@target_option
@command
def demo(nodes, days, seed, target_name):
    """Generate a demo network, load it and run a cycle (no server needed)."""
    # Imported when the command runs: `water --help` stays fast.
    from flows.cli.demo import run_demo

    run_demo(_target(target_name), nodes=nodes, days=days, seed=seed, echo=click.echo)


@main.command("api")
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to bind.")
@click.option("--port", type=click.IntRange(1, 65535), default=8000, show_default=True)
@click.option(
    "--insecure-no-auth",
    is_flag=True,
    help="Serve reads without tokens (local demo only; the trigger still needs one).",
)
@click.option("--access-log", is_flag=True, help="Log one line per request.")
@click.option(
    "--workers",
    type=click.IntRange(1, 64),
    default=1,
    show_default=True,
    help="Worker processes on the one port (rate limits are shared through Redis).",
)
@target_option
@command
def api_command(host, port, insecure_no_auth, access_log, workers, target_name):
    """Serve the HTTP API (docs at /docs, Prometheus metrics at /metrics)."""
    # Imported when the command runs: `water --help` stays fast.
    from api.server import serve

    serve(host, port, target_name, insecure_no_auth, access_log, echo=click.echo, workers=workers)


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to bind.")
@click.option("--port", type=click.IntRange(1, 65535), default=DASHBOARD_PORT, show_default=True)
@target_option
@command
def dashboard(host, port, target_name):
    """Serve the operations dashboard (read-only; pages in docs/dashboard.md)."""
    # Imported when the command runs: `water --help` stays fast.
    from dashboard.server import serve as serve_dashboard

    serve_dashboard(_target(target_name), host, port, echo=click.echo)


@main.command()
@click.option("--suite", default=None, help="Run only this suite (default: all).")
@target_option
@command
def validate(suite, target_name):
    """Run the Great Expectations suites now on each table's last day of rows."""
    # Imported when the command runs: `water --help` stays fast.
    from expectations.gate import run_suites
    from expectations.results import format_table, run_verdict
    from expectations.suites import data_docs_index
    from flows.kernel.settings import QUALITY_PAGE_URL

    results = run_suites(_target(target_name), suite=suite)
    click.echo(format_table(results))
    failed = [line for result in results for line in result.critical_failures]
    warned = sum(len(result.warnings) for result in results)
    click.echo(
        f"verdict: {run_verdict(len(failed), warned)} (only a critical failure fails a gate)"
    )
    click.echo(f"results: {QUALITY_PAGE_URL} (water dashboard; works offline)")
    click.echo(f"GX Data Docs (styled only with internet access): {data_docs_index()}")
    if failed:
        _fail(f"{len(failed)} critical quality failure(s): {failed[0]}")


@main.command()
@click.option(
    "--model-type",
    type=click.Choice(["flow_forecast", "anomaly", "leakage"]),
    default=None,
    help="Train only this model type (default: all).",
)
@target_option
@command
def train(model_type, target_name):
    """Train, register and (champion/challenger) promote ML models (a `retraining` job)."""
    # Imported when the command runs: `water --help` stays fast.
    from flows.pipeline.model_jobs import run_model_job
    from ml.training import TrainingResult

    target = _target(target_name)
    click.echo(f"training {model_type or 'all model types'} on {target.describe()} ...")
    job = run_model_job(target, "retraining", model_type=model_type)
    if job.status == "skipped":
        _fail(job.message)
    results = [TrainingResult(**r) for r in job.summary["steps"]["train"]["result"]]
    for result in results:
        click.echo(result.summary)
    if all(r.status == "skipped" for r in results):
        _fail("nothing trained: " + "; ".join(r.reason for r in results))


@main.command()
@target_option
@command
def evaluate(target_name):
    """Score served predictions whose targets are now observed (fills model_performance)."""
    # Imported when the command runs: `water --help` stays fast.
    from flows.pipeline.model_jobs import run_model_job

    target = _target(target_name)
    job = run_model_job(target, "evaluation")
    if job.status == "skipped":
        _fail(job.message)
    result = job.summary["steps"]["evaluate"]["result"]
    notes = "; ".join(result["notes"])
    click.echo(
        f"{result['rows_written']} model_performance row(s) for {len(result['models'])} model(s)"
        f" over {result['days']} day(s){'; ' + notes if notes else ''}"
    )


@main.command()
@click.option(
    "--to",
    "root",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help="Backup folder (default: $WATER_BACKUP_DIR, else data/backups).",
)
@click.option(
    "--keep",
    type=click.IntRange(min=1),
    default=None,
    help="Generations of this target to keep (default: $WATER_BACKUP_KEEP, else 7).",
)
@target_option
@command
def backup(root, keep, target_name):
    """Back up the warehouse (pg_dump or a DuckDB copy) and the model artifacts; a job row."""
    # Imported when the command runs: `water --help` stays fast.
    from flows.pipeline.backup import backup as run_backup

    target = _target(target_name)
    result = run_backup(target, root=root, keep=keep)
    size = sum(f["bytes"] for f in result.files.values())
    pruned = f"; {len(result.pruned)} old generation(s) deleted" if result.pruned else ""
    click.echo(
        f"backup {result.job_id} of {target.describe()}: {result.path} ({size:,} bytes,"
        f" {result.seconds:.1f} s){pruned}"
    )


@main.command()
@click.argument("backup_spec", metavar="BACKUP", default="latest")
@click.option(
    "--from",
    "root",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help="Backup folder to look in (default: $WATER_BACKUP_DIR, else data/backups).",
)
@target_option
@command
def restore(backup_spec, root, target_name):
    """Replace the warehouse and model artifacts with BACKUP (a folder, its name, or latest)."""
    # Imported when the command runs: `water --help` stays fast.
    from flows.pipeline.backup import restore as run_restore

    target = _target(target_name)
    summary = run_restore(target, backup_spec, root=root)
    click.echo(
        f"restored {summary['backup']} into {target.describe()} (job {summary['restore_job_id']})"
    )


if __name__ == "__main__":
    main()
