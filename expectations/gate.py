"""Great Expectations quality gates: nothing is published unless its batch passed.

The suites, validation definitions and checkpoints are committed JSON in a GX file
context under `expectations/gx/` (written by `expectations/build_suites.py`); this
module only runs them. Each expectation carries a severity:

* `critical`: the cycle stops before publishing (what was published before stays);
* `warning`: recorded and reported, the cycle goes on.

A gate checks the cycle's new rows, not the whole history, and runs where the data is:
GX's SQL datasources on PostgreSQL and DuckDB, so every metric is an aggregate the engine
computes and no batch is copied into Python. The committed query assets read the batch
boundary from the session (PostgreSQL: the connection setting `water.gx_since`; DuckDB:
the variable `water_gx_since`), so the queries stay fixed and reviewable and no value is
pasted into SQL. Row keys (uniqueness) are dbt's tests, not re-checked here. Every
expectation result lands in `water_infrastructure.quality_checks`, which `water status`
and `water validate` read.
"""

from __future__ import annotations

import logging
import math
import numbers
import os
import shutil
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from datetime import UTC, datetime, timedelta
from typing import Any

from expectations.results import (
    CheckResult,
    GateResult,
    ensure_quality_table,
    record_results,
    short_text,
)
from expectations.suites import (
    BEGINNING,
    DATA_DOCS_SITE,
    DUCKDB_SINCE_VARIABLE,
    GX_ENGINES,
    STAGES,
    STAGING_READINGS,
    SUITES,
    QualityError,
    SuiteSpec,
    checkpoint_name,
    duckdb_runtime_environment,
    gx_project_root,
    postgres_runtime_environment,
)
from flows.kernel import progress
from flows.kernel.contracts import STAGING_SCHEMA
from flows.kernel.dbt_runner import DbtError, run_dbt
from flows.kernel.runtime import new_job_id
from flows.kernel.settings import Target
from flows.kernel.warehouse import Warehouse, WarehouseError, connect

log = logging.getLogger(__name__)


# `water validate` checks what arrived in the last day before the newest row of each table.
VALIDATE_LOOKBACK = timedelta(hours=24)


# The DuckDB batch boundary of the GX context that is open (one at a time per process), and
# the connections GX opened for it: closed when it ends, so the file is free for the
# cycle's next step (DuckDB refuses a second configuration of an open file).
_duckdb_session: dict[str, str] = {}
_duckdb_opened: list[Any] = []


def _install_duckdb_support() -> None:
    """Two small adapters so GX's SQL datasource works on DuckDB (idempotent).

    * GX reads a query's rows after closing its pooled connection; duckdb-engine's result
      is gone by then and every metric comes back empty (great_expectations#11579). On
      DuckDB the rows are buffered before the connection closes: metrics are aggregates,
      a few rows each.
    * Each new DuckDB connection GX opens gets the batch boundary as the session variable
      the committed query assets read, and UTC as its time zone.
    """
    # GX and SQLAlchemy take seconds to import; only a validation needs them.
    import sqlalchemy as sa
    from great_expectations.execution_engine.sqlalchemy_execution_engine import (
        SqlAlchemyExecutionEngine,
    )

    if getattr(SqlAlchemyExecutionEngine.execute_query, "water_duckdb", False):
        return
    original = SqlAlchemyExecutionEngine.execute_query

    def execute_query(self, query):
        if self.engine.dialect.name != "duckdb":
            return original(self, query)
        with self.get_connection() as connection:
            return self._execute_query_with_recovery(connection, query).freeze()()

    execute_query.water_duckdb = True  # type: ignore[attr-defined]
    SqlAlchemyExecutionEngine.execute_query = execute_query

    def on_connect(dbapi_connection: Any, _record: Any) -> None:
        if type(dbapi_connection).__module__.split(".")[0] != "duckdb_engine":
            return
        _duckdb_opened.append(dbapi_connection)
        dbapi_connection.execute("set TimeZone = 'UTC'")
        since = _duckdb_session.get("since")
        if since is not None:
            dbapi_connection.execute(
                f"set variable {DUCKDB_SINCE_VARIABLE} = cast($1 as timestamptz)", [since]
            )

    sa.event.listen(sa.engine.Engine, "connect", on_connect)


@contextmanager
def duckdb_session(since: datetime) -> Iterator[None]:
    """GX's DuckDB connections opened inside read `since` as their batch boundary."""
    _install_duckdb_support()
    _duckdb_session["since"] = since.astimezone(UTC).isoformat()
    try:
        yield
    finally:
        _duckdb_session.pop("since", None)
        while _duckdb_opened:
            connection = _duckdb_opened.pop()
            try:
                connection.close()
            except Exception as exc:  # noqa: BLE001 - already closed by its pool
                log.debug("closing a GX DuckDB connection: %s", exc)


@contextmanager
def gx_context(runtime_environment: dict[str, str] | None = None) -> Iterator[Any]:
    """The committed file context, with analytics off and SQL engines closed afterwards."""
    os.environ["GX_ANALYTICS_ENABLED"] = "false"
    # GX takes seconds to import; only a validation needs it (`water status` stays fast).
    import great_expectations as gx

    root = gx_project_root()
    if not (root / "gx" / "great_expectations.yml").is_file():
        raise QualityError(
            f"no GX project at {root / 'gx'}: run `python expectations/build_suites.py`"
        )
    context = gx.get_context(
        mode="file", project_root_dir=str(root), runtime_environment=runtime_environment or {}
    )
    try:
        yield context
    finally:
        for datasource in context.data_sources.all().values():
            engine = getattr(datasource, "_engine", None)
            if engine is not None:
                engine.dispose()


# -- running a stage -----------------------------------------------------------------------
def _check_target(target: Target) -> None:
    if target.type not in GX_ENGINES:
        raise QualityError(
            f"quality gates run on duckdb and postgres; target {target.type} has no"
            " GX datasource here yet"
        )


def _ensure_staging_view(target: Target) -> None:
    """The raw batch is read through staging; on a fresh warehouse create that view first.

    It is a view over raw (no published table changes); dbt owns its SQL.
    """

    run_dbt(target, "run", ["--select", STAGING_READINGS])


def _existing_suites(
    wh: Warehouse, names: Sequence[str]
) -> tuple[list[SuiteSpec], list[SuiteSpec]]:
    present, missing = [], []
    for name in names:
        spec = SUITES[name]
        (present if wh.relation_exists(*spec.relation) else missing).append(spec)
    return present, missing


def _latest_since(wh: Warehouse, spec: SuiteSpec) -> datetime | None:
    """For `water validate`: a day before the newest row of the suite's table."""
    if spec.scope_column is None:
        return None
    schema, table = spec.relation
    newest = wh.scalar(f"select max({spec.scope_column}) from {schema}.{table}")  # noqa: S608 - names are constants
    if newest is None:
        return None
    return newest - VALIDATE_LOOKBACK


Boundary = Callable[[Warehouse, SuiteSpec], "datetime | None"]


def _run_stage(
    target: Target, stage: str, run_id: str, suites: Sequence[str], boundary: Boundary
) -> GateResult:
    """Validate `suites` of one stage on the rows after `boundary(wh, suite)` (None: all)."""
    _check_target(target)
    checked_at = datetime.now(UTC)
    with connect(target) as wh:
        ensure_quality_table(wh)
        needs_view = stage == "raw" and not wh.relation_exists(STAGING_SCHEMA, STAGING_READINGS)
    if needs_view:
        try:
            _ensure_staging_view(target)
        except DbtError as exc:  # recorded below as an unreadable raw batch
            log.warning("cannot create the staging view: %s", exc)

    checks: list[CheckResult] = []
    boundaries: dict[str, datetime] = {}
    readable: list[SuiteSpec] = []
    with connect(target) as wh:
        present, missing = _existing_suites(wh, suites)
        for spec in missing:
            schema, table = spec.relation
            if spec.optional:
                checks.append(_suite_check(spec, "skipped", f"{schema}.{table} does not exist yet"))
            else:
                checks.append(_suite_check(spec, "error", f"{schema}.{table} does not exist"))
        for spec in present:
            boundaries[spec.name] = boundary(wh, spec) or BEGINNING
            # A batch the engine cannot even plan (e.g. raw lost a column staging reads) is
            # one critical `batch_readable`, not an error per expectation. No row is read.
            try:
                wh.query(
                    f"select * from ({spec.batch_sql}) as batch limit 0",  # noqa: S608 - committed SQL
                    {"since": boundaries[spec.name]} if spec.scope_column else None,
                )
            except WarehouseError as exc:
                checks.append(_suite_check(spec, "error", f"cannot read the batch: {exc}"))
                continue
            readable.append(spec)

    rows_by_suite: dict[str, int | None] = {}
    # One GX context per batch boundary (the boundary is a session setting of the engine).
    for bound in sorted({boundaries[spec.name] for spec in readable}):
        if target.type == "postgres":
            env, session = postgres_runtime_environment(target, bound), nullcontext()
        else:
            env, session = duckdb_runtime_environment(target), duckdb_session(bound)
        with session, gx_context(env) as context:
            for spec in (s for s in readable if boundaries[s.name] == bound):
                try:
                    suite_checks, rows = _validate_suite(context, target, spec, run_id, checked_at)
                except QualityError:
                    raise
                except Exception as exc:  # noqa: BLE001 - GX could not load the batch at all
                    suite_checks, rows = [_suite_check(spec, "error", _first_line(exc))], None
                checks.extend(suite_checks)
                rows_by_suite[spec.name] = rows
    prune_results()

    with connect(target) as wh:
        record_results(wh, stage, run_id, checks, rows_by_suite, checked_at)

    critical = [c.line() for c in checks if c.success is False and c.severity == "critical"]
    warnings = [c.line() for c in checks if c.success is False and c.severity != "critical"]
    result = GateResult(
        stage=stage,
        run_id=run_id,
        passed=not critical,
        critical_failures=critical,
        warnings=warnings,
        checked_rows=sum(
            rows or 0 for name, rows in rows_by_suite.items() if SUITES[name].counts_rows
        ),
        checks=checks,
        skipped_suites=[c.suite for c in checks if c.status == "skipped"],
    )
    log.info(
        "quality gate %s %s: %s (%d critical, %d warning failures, %d rows)",
        stage,
        run_id,
        "passed" if result.passed else "FAILED",
        len(critical),
        len(warnings),
        result.checked_rows,
    )
    return result


def _suite_check(spec: SuiteSpec, status: str, observed: str) -> CheckResult:
    """A result for the suite as a whole: skipped (optional mart missing) or unreadable."""
    return CheckResult(
        suite=spec.name,
        expectation="suite_skipped" if status == "skipped" else "batch_readable",
        expectation_type="",
        column_name=None,
        severity="warning" if status == "skipped" else "critical",
        status=status,
        observed_value=observed,
    )


def _first_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text[:300] if text else type(exc).__name__


def _validate_suite(
    context: Any,
    target: Target,
    spec: SuiteSpec,
    run_id: str,
    checked_at: datetime,
) -> tuple[list[CheckResult], int | None]:
    """Run the suite's committed checkpoint (validation + Data Docs page) on its batch."""
    # GX takes seconds to import; only a validation needs it (`water status` stays fast).
    from great_expectations.core.run_identifier import RunIdentifier

    name = checkpoint_name(spec.name, target.type)
    try:
        checkpoint = context.checkpoints.get(name)
    except Exception as exc:  # noqa: BLE001 - GX raises several types for a missing file
        raise QualityError(
            f"checkpoint {name} missing from {gx_project_root() / 'gx'}: "
            f"run `python expectations/build_suites.py` ({_first_line(exc)})"
        ) from exc
    outcome = checkpoint.run(run_id=RunIdentifier(run_name=run_id, run_time=checked_at))
    checks: list[CheckResult] = []
    counted: list[int] = []
    for validation in outcome.run_results.values():
        for result in validation.results:
            checks.append(_check_from_result(spec.name, result))
            # The batch size comes back with the results (the engine counted it).
            details = result.result or {}
            for value in (details.get("element_count"), _row_count(result)):
                if isinstance(value, int | float) and not isinstance(value, bool):
                    counted.append(int(value))
    return checks, max(counted, default=None)


def _row_count(result: Any) -> Any:
    if result.expectation_config.type == "expect_table_row_count_to_be_between":
        return (result.result or {}).get("observed_value")
    return None


def prune_results(keep_runs: int | None = None) -> None:
    """Keep the newest `keep_runs` runs per suite in the GX stores and Data Docs.

    Every checkpoint re-renders the Data Docs index from all stored results, so an
    unbounded history would make each gate slower; quality_checks keeps the full history.
    """
    keep = keep_runs or int(os.environ.get("WATER_GX_KEEP_RUNS", "50"))
    uncommitted = gx_project_root() / "gx" / "uncommitted"
    for base in (
        uncommitted / "validations",
        uncommitted / "data_docs" / DATA_DOCS_SITE / "validations",
    ):
        if not base.is_dir():
            continue
        for suite_dir in (p for p in base.iterdir() if p.is_dir()):
            runs = sorted(
                (p for p in suite_dir.iterdir() if p.is_dir()), key=lambda p: p.stat().st_mtime
            )
            for old in runs[:-keep]:
                shutil.rmtree(old, ignore_errors=True)


def _check_from_result(suite: str, result: Any) -> CheckResult:
    config = result.expectation_config
    meta = config.meta or {}
    severity = str(getattr(config.severity, "value", config.severity) or "critical")
    if meta.get("severity") and meta["severity"] != severity:
        raise QualityError(
            f"{suite}.{meta.get('check')}: meta severity {meta['severity']!r} disagrees with "
            f"the expectation's severity {severity!r}; re-run expectations/build_suites.py"
        )
    kwargs = config.kwargs
    column = kwargs.get("column") or (
        ",".join(kwargs[k] for k in ("column_A", "column_B") if kwargs.get(k))
        or ",".join(kwargs.get("column_list") or [])
        or None
    )
    raised = bool(result.exception_info and result.exception_info.get("raised_exception"))
    if raised:
        status = "error"
        message = str(result.exception_info.get("exception_message") or "").strip()
        observed = f"error: {message.splitlines()[0] if message else 'expectation raised'}"
    else:
        status = "passed" if result.success else "failed"
        observed = describe_observation(result.result or {}, kwargs.get("column"))
    return CheckResult(
        suite=suite,
        expectation=str(meta.get("check") or config.type),
        expectation_type=config.type,
        column_name=column,
        severity=severity,
        status=status,
        observed_value=observed,
        unexpected_count=(result.result or {}).get("unexpected_count"),
    )


def describe_observation(result: dict[str, Any], column: str | None = None) -> str:
    """One line for a GX result: the observed value, or how many rows broke the rule."""
    observed = result.get("observed_value")
    if isinstance(observed, numbers.Integral) and not isinstance(observed, bool):
        return f"{observed:,} rows"
    if observed is not None:
        return short_text(observed)
    if "element_count" not in result and (
        "partial_missing_list" in result or "partial_unexpected_list" in result
    ):
        # Set equality on distinct values: what is extra and what is missing.
        parts = []
        if result.get("partial_unexpected_list"):
            parts.append("unexpected " + short_text(result["partial_unexpected_list"]))
        if result.get("partial_missing_list"):
            parts.append("missing " + short_text(result["partial_missing_list"]))
        return "; ".join(parts) or "exactly the expected values"
    unexpected = result.get("unexpected_count")
    if unexpected is None:
        return "-"
    total = result.get("element_count") or 0
    text = f"{unexpected:,} of {total:,} unexpected"
    percent = result.get("unexpected_percent")
    if unexpected and percent is not None and not math.isnan(float(percent)):
        text += f" ({float(percent):.2f} %)"
    # Row keys (where the checkpoint names key columns) say best where to look.
    keyed = result.get("partial_unexpected_index_list") or []
    examples = (
        keyed if keyed and isinstance(keyed[0], dict) else result.get("partial_unexpected_list")
    )
    if unexpected and examples:
        if isinstance(examples[0], dict):
            # Row keys first, then the offending value: "N0001/1hour/2024-03-04T10:00 → 5.2"
            examples = [
                "/".join(short_text(v, 40) for k, v in row.items() if k != column)
                + (f" → {short_text(row[column], 40)}" if column in row else "")
                for row in examples
            ]
        text += f", e.g. {short_text(examples[:3])}"
    return text


# -- the interface the cycle and the CLI call ----------------------------------------------
def gate(
    target: Target, stage: str, run_id: str, since_loaded_at: datetime | None = None
) -> GateResult:
    """Run the stage's suites on the cycle's new rows and record every result.

    'raw': rows with loaded_at > since_loaded_at (None: all), read through staging,
    including the share staging rejects. 'marts': computed_metrics (and anomalies,
    network_efficiency, ml_predictions_cache once they exist) rows computed after
    since_loaded_at. A suite whose table does not exist yet is recorded as skipped.
    """
    if stage not in STAGES:
        raise QualityError(f"unknown stage {stage!r}: expected one of {', '.join(STAGES)}")
    if since_loaded_at is not None and since_loaded_at.tzinfo is None:
        raise QualityError("since_loaded_at must be timezone-aware (UTC)")
    return _run_stage(target, stage, run_id, STAGES[stage], lambda _wh, _spec: since_loaded_at)


def new_run_id() -> str:
    return "validate-" + new_job_id()


def run_suites(
    target: Target, suite: str | None = None, run_id: str | None = None
) -> list[GateResult]:
    """`water validate`: run the suites now on each table's last day of new rows."""
    if suite is not None and suite not in SUITES:
        raise QualityError(f"unknown suite {suite!r}: expected one of {', '.join(SUITES)}")
    run_id = run_id or new_run_id()
    results = []
    for stage, names in STAGES.items():
        chosen = [n for n in names if suite is None or n == suite]
        if chosen:
            with progress.step(f"validate {stage} ({', '.join(chosen)})"):
                results.append(_run_stage(target, stage, run_id, chosen, _latest_since))
    return results
