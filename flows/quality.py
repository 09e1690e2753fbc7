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
import urllib.parse
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from flows.config import PROJECT_ROOT, PUBLISHED_SCHEMA, QUALITY_PAGE_URL, Target
from flows.dbt_runner import DbtError
from flows.warehouse import Warehouse, WarehouseError, connect

log = logging.getLogger(__name__)

SEVERITIES = ("critical", "warning")
STAGING_SCHEMA = "water_staging"
STAGING_READINGS = "stg_raw__sensor_readings"
# `None` as a batch boundary means "everything": a time before any reading.
BEGINNING = datetime(1900, 1, 1, tzinfo=UTC)
# `water validate` checks what arrived in the last day before the newest row of each table.
VALIDATE_LOOKBACK = timedelta(hours=24)
# The connection setting the committed PostgreSQL query assets read the boundary from.
PG_SINCE_SETTING = "water.gx_since"
PG_SINCE_SQL = f"cast(current_setting('{PG_SINCE_SETTING}') as timestamptz)"
# The DuckDB session variable the committed DuckDB query assets read the boundary from.
DUCKDB_SINCE_VARIABLE = "water_gx_since"
DUCKDB_SINCE_SQL = f"cast(getvariable('{DUCKDB_SINCE_VARIABLE}') as timestamptz)"
GX_ENGINES = ("duckdb", "postgres")
DATA_DOCS_SITE = "local_site"


class QualityError(RuntimeError):
    """The gate could not run (bad arguments, unsupported target, broken GX project)."""


# -- the batches the suites check ----------------------------------------------------------
# One SELECT per suite, written once: `%(since)s` is replaced by the session's boundary in
# the committed query assets (PG_SINCE_SQL, DUCKDB_SINCE_SQL). Derived columns
# (`*_minus_*`, offsets, gaps) let plain column expectations express row rules on both
# engines; their names say what they measure.
@dataclass(frozen=True)
class SuiteSpec:
    name: str
    stage: str
    relation: tuple[str, str]  # must exist, else the suite is skipped (not failed)
    scope_column: str | None  # the column compared with the batch boundary
    batch_sql: str
    description: str
    counts_rows: bool = True  # its batch counts in GateResult.checked_rows
    optional: bool = False  # a later mart: skipped (not failed) while its table is missing


SUITES: dict[str, SuiteSpec] = {
    spec.name: spec
    for spec in (
        SuiteSpec(
            name="raw_schema",
            stage="raw",
            relation=("raw", "sensor_readings"),
            scope_column=None,
            counts_rows=False,
            description="Columns and types of raw.sensor_readings, read from the catalog.",
            batch_sql="""
select
    column_name,
    lower(data_type) as data_type
from information_schema.columns
where table_schema = 'raw' and table_name = 'sensor_readings'
""",
        ),
        SuiteSpec(
            name="raw_batch",
            stage="raw",
            relation=(STAGING_SCHEMA, STAGING_READINGS),
            scope_column="loaded_at",
            description=(
                "The rows loaded since the previous cycle, as staging reads them "
                "(raw is read only through stg_raw__sensor_readings; NaN is null there)."
            ),
            batch_sql="""
select
    node_id,
    reading_at,
    flow_rate,
    pressure,
    temperature,
    volume,
    quality_score,
    loaded_at,
    batch_id,
    batch_row,
    is_valid,
    extract(epoch from reading_at - loaded_at) as seconds_after_load
from water_staging.stg_raw__sensor_readings
where loaded_at > %(since)s
""",
        ),
        SuiteSpec(
            name="computed_metrics",
            stage="marts",
            relation=(PUBLISHED_SCHEMA, "computed_metrics"),
            scope_column="computed_at",
            description="Windows recomputed since the previous cycle.",
            batch_sql="""
select
    node_id,
    time_window,
    window_start,
    window_end,
    window_seconds,
    window_start_epoch
        - floor(window_start_epoch / nullif(window_seconds, 0)) * window_seconds
        as window_start_offset_s,
    reading_count,
    reading_count - expected_reading_count as excess_reading_count,
    quality_score,
    avg_flow_rate - min_flow_rate as flow_rate_avg_minus_min,
    max_flow_rate - avg_flow_rate as flow_rate_max_minus_avg,
    avg_pressure - min_pressure as pressure_avg_minus_min,
    max_pressure - avg_pressure as pressure_max_minus_avg,
    avg_temperature - min_temperature as temperature_avg_minus_min,
    max_temperature - avg_temperature as temperature_max_minus_avg,
    -- Silence between consecutive windows of a node; only where the node's cadence
    -- puts at least two readings in every window (slower nodes skip windows by design).
    case
        when expected_reading_count >= 2
            then extract(epoch from window_start - lag(window_end) over (
                partition by node_id, time_window order by window_start
            ))
    end as missing_seconds_before,
    computed_at
from (
    select
        *,
        extract(epoch from window_end - window_start) as window_seconds,
        extract(epoch from window_start) as window_start_epoch
    from water_infrastructure.computed_metrics
    where computed_at > %(since)s
) as batch
""",
        ),
        SuiteSpec(
            name="anomalies",
            stage="marts",
            optional=True,
            relation=(PUBLISHED_SCHEMA, "anomalies"),
            scope_column="evaluated_at",
            description="Anomalies (re)evaluated since the previous cycle.",
            batch_sql="""
select
    anomaly_id,
    node_id,
    window_start,
    severity,
    detected_at,
    evaluated_at
from water_infrastructure.anomalies
where evaluated_at > %(since)s
""",
        ),
        SuiteSpec(
            name="network_efficiency",
            stage="marts",
            optional=True,
            relation=(PUBLISHED_SCHEMA, "network_efficiency"),
            scope_column="computed_at",
            description="Water-balance rows recomputed since the previous cycle.",
            batch_sql="""
select
    district,
    time_window,
    window_start,
    water_loss_percent,
    is_complete,
    computed_at
from water_infrastructure.network_efficiency
where computed_at > %(since)s
""",
        ),
        SuiteSpec(
            name="ml_predictions_cache",
            stage="marts",
            optional=True,
            relation=(PUBLISHED_SCHEMA, "ml_predictions_cache"),
            scope_column="created_at",
            description="Forecasts written since the previous cycle.",
            batch_sql="""
select
    node_id,
    model_id,
    prediction_timestamp,
    target_timestamp,
    horizon_hours,
    -- NaN is a missing forecast on both engines (pandas already reads it as null).
    nullif(flow_rate_predicted, cast('NaN' as double precision)) as flow_rate_predicted,
    nullif(flow_rate_lower, cast('NaN' as double precision)) as flow_rate_lower,
    nullif(flow_rate_upper, cast('NaN' as double precision)) as flow_rate_upper,
    flow_rate_predicted - flow_rate_lower as predicted_minus_lower,
    flow_rate_upper - flow_rate_predicted as upper_minus_predicted,
    -- Horizons of each node's newest forecast (older ones are partly overwritten by it).
    case
        when prediction_timestamp = max(prediction_timestamp) over (
            partition by node_id, model_id
        )
            then count(*) over (partition by node_id, model_id, prediction_timestamp)
    end as horizon_count,
    created_at
from water_infrastructure.ml_predictions_cache
where created_at > %(since)s
""",
        ),
    )
}
STAGES: dict[str, tuple[str, ...]] = {
    stage: tuple(name for name, spec in SUITES.items() if spec.stage == stage)
    for stage in ("raw", "marts")
}


def engine_batch_sql(spec: SuiteSpec, engine: str) -> str:
    """The committed query of one engine: the boundary comes from the session."""
    since = {"postgres": PG_SINCE_SQL, "duckdb": DUCKDB_SINCE_SQL}[engine]
    return spec.batch_sql.replace("%(since)s", since).strip()


def postgres_batch_sql(spec: SuiteSpec) -> str:
    return engine_batch_sql(spec, "postgres")


# -- results -------------------------------------------------------------------------------
@dataclass
class CheckResult:
    suite: str
    expectation: str  # the expectation's `meta.check` name
    expectation_type: str
    column_name: str | None
    severity: str
    status: str  # passed | failed | error | skipped
    observed_value: str
    unexpected_count: int | None = None

    @property
    def success(self) -> bool | None:
        return None if self.status == "skipped" else self.status == "passed"

    def line(self) -> str:
        return f"{self.suite}.{self.expectation}: observed {self.observed_value}"


@dataclass
class GateResult:
    stage: str  # 'raw' | 'marts'
    run_id: str
    passed: bool  # False iff a critical expectation failed
    critical_failures: list[str]  # "suite.expectation: observed ..." one line each
    warnings: list[str]
    checked_rows: int
    checks: list[CheckResult] = field(default_factory=list)
    skipped_suites: list[str] = field(default_factory=list)


# -- the quality_checks table --------------------------------------------------------------
_QUALITY_DDL = {
    "duckdb": [
        f"create schema if not exists {PUBLISHED_SCHEMA}",
        f"""create table if not exists {PUBLISHED_SCHEMA}.quality_checks (
            run_id varchar not null, stage varchar not null, suite varchar not null,
            expectation varchar not null, expectation_type varchar, column_name varchar,
            severity varchar not null, status varchar not null, success boolean,
            observed_value varchar, unexpected_count bigint, checked_rows bigint,
            checked_at timestamptz not null)""",
    ],
    "postgres": [
        f"create schema if not exists {PUBLISHED_SCHEMA}",
        f"""create table if not exists {PUBLISHED_SCHEMA}.quality_checks (
            run_id text not null, stage text not null, suite text not null,
            expectation text not null, expectation_type text, column_name text,
            severity text not null, status text not null, success boolean,
            observed_value text, unexpected_count bigint, checked_rows bigint,
            checked_at timestamptz not null)""",
        f"""create index if not exists quality_checks_checked_at_idx
            on {PUBLISHED_SCHEMA}.quality_checks (checked_at)""",
    ],
}


def ensure_quality_table(wh: Warehouse) -> None:
    """Create water_infrastructure.quality_checks if missing (idempotent)."""
    if wh.type == "postgres":
        # Concurrent first runs would collide on the catalog; serialise the DDL.
        with wh.transaction():
            wh.execute("select pg_advisory_xact_lock(hashtext('water.quality_ddl'))")
            for statement in _QUALITY_DDL["postgres"]:
                wh.execute(statement)
        return
    for statement in _QUALITY_DDL[wh.type]:
        wh.execute(statement)


def _persist(
    wh: Warehouse,
    stage: str,
    run_id: str,
    checks: Sequence[CheckResult],
    rows_by_suite: dict[str, int | None],
    checked_at: datetime,
) -> None:
    with wh.transaction():
        for check in checks:
            wh.execute(
                "insert into water_infrastructure.quality_checks (run_id, stage, suite,"
                " expectation, expectation_type, column_name, severity, status, success,"
                " observed_value, unexpected_count, checked_rows, checked_at) values"
                " (%(run_id)s, %(stage)s, %(suite)s, %(expectation)s, %(expectation_type)s,"
                " %(column_name)s, %(severity)s, %(status)s, %(success)s, %(observed)s,"
                " %(unexpected)s, %(rows)s, %(checked_at)s)",
                {
                    "run_id": run_id,
                    "stage": stage,
                    "suite": check.suite,
                    "expectation": check.expectation,
                    "expectation_type": check.expectation_type,
                    "column_name": check.column_name,
                    "severity": check.severity,
                    "status": check.status,
                    "success": check.success,
                    "observed": check.observed_value,
                    "unexpected": check.unexpected_count,
                    "rows": rows_by_suite.get(check.suite),
                    "checked_at": checked_at,
                },
            )


# -- the GX project ------------------------------------------------------------------------
def gx_project_root() -> Path:
    """Folder holding the GX file context `gx/` (WATER_GX_ROOT, default `expectations/`)."""
    return Path(os.environ.get("WATER_GX_ROOT") or PROJECT_ROOT / "expectations")


def data_docs_index() -> Path:
    return gx_project_root() / "gx" / "uncommitted" / "data_docs" / DATA_DOCS_SITE / "index.html"


def checkpoint_name(suite: str, engine: str) -> str:
    return f"{suite}.{engine}"


def postgres_runtime_environment(target: Target, since: datetime) -> dict[str, str]:
    """Values for the `${...}` placeholders of the committed PostgreSQL datasource.

    Kept in memory only: GX substitutes them when it connects; nothing is written.
    """
    parts = target.pg_dsn_parts
    options = f"-c timezone=UTC -c {PG_SINCE_SETTING}={since.astimezone(UTC).isoformat()}"
    return {
        "PGHOST": parts.get("host", "127.0.0.1"),
        "PGPORT": str(parts.get("port", "5432")),
        "PGUSER": urllib.parse.quote(parts.get("user", "postgres"), safe=""),
        "PGDATABASE": urllib.parse.quote(parts.get("dbname", "postgres"), safe=""),
        "PGPASSWORD": urllib.parse.quote(os.environ.get("PGPASSWORD", ""), safe=""),
        "WATER_GX_PG_OPTIONS": urllib.parse.quote(options, safe=""),
    }


def duckdb_runtime_environment(target: Target) -> dict[str, str]:
    """The value of the committed DuckDB datasource's `${WATER_GX_DUCKDB_PATH}`."""
    return {"WATER_GX_DUCKDB_PATH": str(target.duckdb_path or "")}


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
    from flows.dbt_runner import run_dbt

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
        _persist(wh, stage, run_id, checks, rows_by_suite, checked_at)

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
        return _short(observed)
    if "element_count" not in result and (
        "partial_missing_list" in result or "partial_unexpected_list" in result
    ):
        # Set equality on distinct values: what is extra and what is missing.
        parts = []
        if result.get("partial_unexpected_list"):
            parts.append("unexpected " + _short(result["partial_unexpected_list"]))
        if result.get("partial_missing_list"):
            parts.append("missing " + _short(result["partial_missing_list"]))
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
                "/".join(_short(v, 40) for k, v in row.items() if k != column)
                + (f" → {_short(row[column], 40)}" if column in row else "")
                for row in examples
            ]
        text += f", e.g. {_short(examples[:3])}"
    return text


def _short(value: Any, limit: int = 240) -> str:
    if isinstance(value, float):
        text = f"{value:.6g}"
    elif isinstance(value, list | tuple):
        text = "; ".join(_short(v, 80) for v in value)
    elif isinstance(value, dict):
        text = " ".join(f"{k}={_short(v, 60)}" for k, v in value.items())
    elif isinstance(value, datetime):
        text = value.isoformat()
    else:
        text = str(value)
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


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
    from flows.cycle import new_cycle_id

    return "validate-" + new_cycle_id()


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
            from flows import progress

            with progress.step(f"validate {stage} ({', '.join(chosen)})"):
                results.append(_run_stage(target, stage, run_id, chosen, _latest_since))
    return results


# -- reading the recorded results ----------------------------------------------------------
@dataclass
class QualitySummary:
    run_id: str | None = None
    checked_at: Any = None
    stages: list[str] = field(default_factory=list)
    checks: int = 0
    failed_by_severity: dict[str, int] = field(default_factory=dict)
    skipped: int = 0
    # (severity, suite, expectation, observed value), critical first
    failures: list[tuple[str, str, str, str]] = field(default_factory=list)


def latest_results(wh: Warehouse, stage: str | None = None) -> QualitySummary:
    """The most recent run's results (for `water status`), by severity."""
    summary = QualitySummary()
    if not wh.relation_exists(PUBLISHED_SCHEMA, "quality_checks"):
        return summary
    where = "where stage = %(stage)s" if stage else ""
    latest = wh.query(
        f"select run_id, max(checked_at) from water_infrastructure.quality_checks {where}"  # noqa: S608 - constant fragments
        " group by run_id order by max(checked_at) desc limit 1",
        {"stage": stage} if stage else None,
    )
    if not latest:
        return summary
    summary.run_id, summary.checked_at = latest[0]
    rows = wh.query(
        "select stage, suite, expectation, severity, status, observed_value"
        " from water_infrastructure.quality_checks where run_id = %(run_id)s"
        " order by case severity when 'critical' then 0 else 1 end, suite, expectation",
        {"run_id": summary.run_id},
    )
    for stage_name, suite, expectation, severity, status, observed in rows:
        if stage_name not in summary.stages:
            summary.stages.append(stage_name)
        summary.checks += 1
        if status == "skipped":
            summary.skipped += 1
        elif status in ("failed", "error"):
            summary.failed_by_severity[severity] = summary.failed_by_severity.get(severity, 0) + 1
            summary.failures.append((severity, suite, expectation, observed or ""))
    return summary


def run_verdict(critical_failed: int, warning_failed: int) -> str:
    """The platform's verdict on a gate run: only a critical failure fails it (and stops the
    publish); failed warnings are recorded and the run passes. (GX's own pages say "Failed"
    for any unmet expectation, whatever its severity.)"""
    if critical_failed:
        return "failed"
    return f"passed with {warning_failed} warning(s)" if warning_failed else "passed"


def format_summary(summary: QualitySummary, limit: int = 10) -> list[str]:
    """`water status` lines: the latest gate run and its failures, critical first."""
    if summary.run_id is None:
        return ["quality           no gate has run yet (`water cycle` or `water validate`)"]
    critical = summary.failed_by_severity.get("critical", 0)
    warnings = summary.failed_by_severity.get("warning", 0)
    skipped = f", {summary.skipped} suite(s) skipped" if summary.skipped else ""
    stages = "+".join(s for s in STAGES if s in summary.stages)
    checked_at = (
        summary.checked_at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%SZ")
        if isinstance(summary.checked_at, datetime)
        else summary.checked_at
    )
    lines = [
        f"quality           {'FAILED' if critical else 'passed'}: run {summary.run_id} ({stages})"
        f" at {checked_at}: {summary.checks} checks, {critical} critical and {warnings}"
        f" warning failure(s){skipped}"
    ]
    for severity, suite, expectation, observed in summary.failures[:limit]:
        lines.append(f"  {severity:<8} {suite}.{expectation}: {_short(observed, 90)}")
    lines.append(f"  every run and its verdict: water dashboard -> {QUALITY_PAGE_URL}")
    if len(summary.failures) > limit:
        lines.append(
            f"  (+{len(summary.failures) - limit} more in {PUBLISHED_SCHEMA}.quality_checks)"
        )
    return lines


def format_table(results: Sequence[GateResult], width: int | None = None) -> str:
    """The plain summary `water validate` prints: one line per expectation."""
    width = width or max(100, shutil.get_terminal_size((120, 24)).columns)
    lines = [f"{'suite':<22} {'expectation':<34} {'severity':<9} {'status':<8} observed"]
    for result in results:
        for check in result.checks:
            observed = check.observed_value
            room = max(20, width - 77)
            if len(observed) > room:
                observed = observed[: room - 1] + "…"
            lines.append(
                f"{check.suite:<22} {check.expectation:<34} {check.severity:<9} "
                f"{check.status:<8} {observed}"
            )
    critical = sum(len(r.critical_failures) for r in results)
    warnings = sum(len(r.warnings) for r in results)
    rows = sum(r.checked_rows for r in results)
    run_id = results[0].run_id if results else "-"
    lines.append(
        f"run {run_id}: {rows:,} row(s) checked; {critical} critical failure(s), "
        f"{warnings} warning(s)"
    )
    return "\n".join(lines)
