"""Great Expectations gates on real engines: each suite passes on clean data and catches a
crafted violation with the right severity; results land in quality_checks; `water validate`
exits non-zero on a critical failure; the committed GX project matches its builder."""

from __future__ import annotations

import importlib.util
import json
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner

from expectations.gate import gate, run_suites
from expectations.results import latest_results
from expectations.suites import SEVERITIES, SUITES, QualityError, data_docs_index
from flows.kernel.dbt_runner import run_dbt
from flows.kernel.settings import PROJECT_ROOT, Target
from flows.kernel.warehouse import connect
from flows.loaders.files import load_files
from flows.loaders.loading import load_synthetic
from flows.loaders.synthetic import Fault, SyntheticConfig
from flows.pipeline.run import prepare_target

START = datetime(2024, 3, 4, tzinfo=UTC)
GAP_NODE = "N0003"
COMMITTED_GX = PROJECT_ROOT / "expectations" / "gx"


@pytest.fixture(autouse=True)
def gx_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The committed GX project, copied so results and Data Docs stay out of the repo."""
    root = tmp_path / "gx-project"
    shutil.copytree(COMMITTED_GX, root / "gx", ignore=shutil.ignore_patterns("uncommitted"))
    monkeypatch.setenv("WATER_GX_ROOT", str(root))
    return root


def _config() -> SyntheticConfig:
    # A stuck sensor (min = avg = max: no false alarm from rounding) and a 40-minute gap
    # (a real outage: a warning, not a reason to stop publishing).
    return SyntheticConfig(
        nodes=6,
        days=2,
        cadence_s=60,
        seed=5,
        start=START,
        bad_rows=11,
        faults=(
            Fault("stuck", "N0004", START + timedelta(hours=3), START + timedelta(hours=5)),
            Fault(
                "gap", GAP_NODE, START + timedelta(hours=7), START + timedelta(hours=7, minutes=40)
            ),
        ),
    )


LATER_MARTS = ("anomalies", "network_efficiency", "ml_predictions_cache")


def _build(
    target: Target, tmp_path: Path, marts: tuple[str, ...] = (), dbt_tests: bool = False
) -> datetime:
    """Load the synthetic network and build computed_metrics (and `marts`) with dbt;
    returns the newest loaded_at. Other models are left out: these tests are about gates."""
    with connect(target) as wh:
        load_synthetic(wh, _config(), progress=False, landing_dir=tmp_path / "landing")
    prepare_target(target)
    core = ("computed_metrics", "rejected_readings", "nodes")
    skip_tests = [] if dbt_tests else ["--exclude-resource-type", "test", "unit_test"]
    run_dbt(target, "build", ["--select", *(f"+{m}" for m in (*core, *marts)), *skip_tests])
    with connect(target) as wh:
        return wh.scalar("select max(loaded_at) from raw.sensor_readings")


def _load_csv(target: Target, path: Path, frame: pd.DataFrame) -> None:
    frame.to_csv(path, index=False)
    with connect(target) as wh:
        load_files(wh, [str(path)], progress=False)


def _recorded(target: Target, run_id: str) -> pd.DataFrame:
    with connect(target) as wh:
        return wh.query_df(
            "select suite, expectation, severity, status, success, observed_value, checked_rows"
            " from water_infrastructure.quality_checks where run_id = %(r)s",
            {"r": run_id},
        )


def _names(lines: list[str]) -> set[str]:
    return {line.split(":", 1)[0] for line in lines}


def test_clean_data_passes_and_an_outage_is_only_a_warning(target: Target, tmp_path: Path):
    _build(target, tmp_path)

    raw = gate(target, "raw", "run-clean")
    assert raw.passed, raw.critical_failures
    assert raw.critical_failures == [] and raw.warnings == []
    with connect(target) as wh:
        assert raw.checked_rows == wh.scalar("select count(*) from raw.sensor_readings")

    marts = gate(target, "marts", "run-clean")
    assert marts.passed, marts.critical_failures
    # The gap is real (N0003 was silent for 40 minutes): recorded, publishing goes on.
    assert _names(marts.warnings) == {"computed_metrics.no_missing_windows"}
    assert GAP_NODE in marts.warnings[0]
    assert marts.checked_rows > 0

    recorded = _recorded(target, "run-clean")
    assert set(recorded["suite"]) >= {"raw_schema", "raw_batch", "computed_metrics"}
    assert set(recorded["severity"]) <= set(SEVERITIES)
    failed = recorded[recorded["status"] == "failed"]
    assert list(failed["expectation"]) == ["no_missing_windows"]
    assert (failed["severity"] == "warning").all()
    # Marts built by later stages are skipped (not failed) while their table is missing.
    skipped = recorded[recorded["status"] == "skipped"]
    for suite in skipped["suite"]:
        with connect(target) as wh:
            assert not wh.relation_exists(*SUITES[suite].relation)
    assert skipped["success"].isna().all()

    # Data Docs: a site with a page for each validated suite.
    index = data_docs_index()
    assert index.is_file()
    pages = {p.parts[-4] for p in index.parent.glob("validations/*/*/*/*.html")}
    assert {"raw_schema", "raw_batch", "computed_metrics"} <= pages


def test_a_mostly_invalid_batch_is_critical(target: Target, tmp_path: Path):
    watermark = _build(target, tmp_path)
    # The next batch: 100 readings, 60 of them with an impossible pressure.
    times = pd.date_range(START + timedelta(days=2), periods=100, freq="60s", tz="UTC")
    batch = pd.DataFrame(
        {
            "timestamp": times.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "node_id": "N0001",
            "node_name": "inlet",
            "flow_rate": 12.5,
            "pressure": [99.0] * 60 + [4.0] * 40,
            "temperature": 11.0,
            "volume": [1000.0 + i for i in range(100)],
            "quality_score": 0.98,
        }
    )
    _load_csv(target, tmp_path / "broken.csv", batch)

    result = gate(target, "raw", "run-broken", since_loaded_at=watermark)

    assert not result.passed
    assert result.checked_rows == 100  # only the new batch, not the history
    assert _names(result.critical_failures) == {"raw_batch.rejected_share_below_limit"}
    assert "60 of 100 unexpected" in result.critical_failures[0]
    assert _names(result.warnings) == {
        "raw_batch.rejected_share_below_warning",
        "raw_batch.pressure_in_range",
    }
    recorded = _recorded(target, "run-broken").set_index("expectation")
    assert recorded.loc["rejected_share_below_limit", "severity"] == "critical"
    assert not recorded.loc["rejected_share_below_limit", "success"]
    assert recorded.loc["pressure_in_range", "severity"] == "warning"
    assert (recorded.loc[recorded["suite"] == "raw_batch", "checked_rows"] == 100).all()


def test_impossible_metrics_are_critical_and_odd_counts_a_warning(target: Target, tmp_path: Path):
    _build(target, tmp_path)
    with connect(target) as wh:
        before = wh.scalar("select max(computed_at) from water_infrastructure.computed_metrics")
        # min above avg on one window, a reading count far above the cadence on another;
        # both marked as recomputed now so they fall in the gate's batch.
        wh.execute(
            "update water_infrastructure.computed_metrics"
            " set min_flow_rate = max_flow_rate + 5, computed_at = %(now)s"
            " where node_id = 'N0001' and time_window = '1hour' and window_start = %(w)s",
            {"now": datetime.now(UTC), "w": START + timedelta(hours=10)},
        )
        wh.execute(
            "update water_infrastructure.computed_metrics"
            " set reading_count = expected_reading_count + 7, computed_at = %(now)s"
            " where node_id = 'N0002' and time_window = '5min' and window_start = %(w)s",
            {"now": datetime.now(UTC), "w": START + timedelta(hours=11)},
        )

    result = gate(target, "marts", "run-bad-marts", since_loaded_at=before)

    assert not result.passed
    recorded = _recorded(target, "run-bad-marts")
    assert set(recorded.loc[recorded["suite"] == "computed_metrics", "checked_rows"]) == {2}
    assert _names(result.critical_failures) == {"computed_metrics.flow_rate_min_le_avg"}
    assert "N0001" in result.critical_failures[0]
    assert _names(result.warnings) == {"computed_metrics.reading_count_within_expected"}
    assert "N0002" in result.warnings[0]


def test_raw_schema_drift_is_critical_on_a_fresh_warehouse(duckdb_target: Target, tmp_path: Path):
    # No dbt run yet: the gate creates the staging view it reads the batch through.
    with connect(duckdb_target) as wh:
        load_synthetic(
            wh,
            SyntheticConfig(nodes=2, days=0.1, seed=1, start=START),
            progress=False,
            landing_dir=tmp_path,
        )
        wh.execute("alter table raw.sensor_readings add column firmware varchar")
        wh.execute("alter table raw.sensor_readings alter column batch_row type integer")

    result = gate(duckdb_target, "raw", "run-drift")

    assert not result.passed
    assert _names(result.critical_failures) == {
        "raw_schema.raw_columns_known",
        "raw_schema.raw_column_types_match_contract",
    }
    assert any("firmware" in line for line in result.critical_failures)
    assert any("batch_row" in line for line in result.critical_failures)

    # A dropped column is named too, and the batch staging can no longer read is critical.
    with connect(duckdb_target) as wh:
        wh.execute("alter table raw.sensor_readings drop column firmware")
        wh.execute("alter table raw.sensor_readings drop column node_name")
    result = gate(duckdb_target, "raw", "run-drift-2")
    assert _names(result.critical_failures) == {
        "raw_schema.raw_columns_complete",
        "raw_schema.raw_column_types_match_contract",
        "raw_batch.batch_readable",
    }
    complete = next(f for f in result.critical_failures if "raw_columns_complete" in f)
    assert "node_name" in complete


def _later_mart_rows() -> dict[str, tuple[str, list[dict], list[dict]]]:
    """One clean and one broken row set per later mart (anomalies, efficiency, forecasts)."""
    now = datetime.now(UTC)
    hours = [now + timedelta(hours=h) for h in range(1, 25)]

    def forecast(node: str, horizon: int, predicted: float, lower: float, upper: float) -> dict:
        return {
            "prediction_id": f"{node}-{horizon}",
            "model_id": "flow_forecast-v1",
            "node_id": node,
            "prediction_timestamp": now,
            "target_timestamp": hours[horizon - 1],
            "horizon_hours": horizon,
            "predicted_flow_rate": predicted,
            "flow_rate_lower": lower,
            "flow_rate_upper": upper,
            "created_at": now,
        }

    clean_forecasts = [forecast("N0001", h, 10.0, 8.0, 12.0) for h in range(1, 25)]
    # N0002: only 23 horizons, one interval upside down, one NaN forecast.
    broken_forecasts = [forecast("N0002", h, 10.0, 8.0, 12.0) for h in range(1, 24)]
    broken_forecasts[0]["flow_rate_lower"] = 11.0
    broken_forecasts[1]["predicted_flow_rate"] = float("nan")

    def anomaly(anomaly_id: str, severity: str) -> dict:
        return {
            "anomaly_id": anomaly_id,
            "node_id": "N0001",
            "window_start": START,
            "severity": severity,
            "detected_at": now,
            "evaluated_at": now,
        }

    def efficiency(loss: float, hour: int) -> dict:
        return {
            "district": "test-district",
            "time_window": "1hour",
            "window_start": START + timedelta(hours=hour),
            "water_loss_percent": loss,
            "computed_at": now,
        }

    return {
        "anomalies": (
            "anomalies.severity_known",
            [anomaly("a1", "critical"), anomaly("a2", "info")],
            [anomaly("a3", "urgent")],
        ),
        "network_efficiency": (
            "network_efficiency.water_loss_percent_plausible",
            [efficiency(14.0, 0)],
            [efficiency(140.0, 1)],
        ),
        "ml_predictions_cache": (
            "ml_predictions_cache.full_horizon",
            clean_forecasts,
            broken_forecasts,
        ),
    }


def test_later_marts_pass_clean_rows_and_catch_broken_ones(target: Target, tmp_path: Path):
    """The suites for marts other stages build: rows are added to the tables dbt built,
    or to a table with the contract's columns while that mart does not exist yet."""
    with connect(target) as wh:
        _ensure_later_mart_sources(wh)
    _build(target, tmp_path, marts=_defined_models(LATER_MARTS), dbt_tests=False)
    since = datetime.now(UTC) - timedelta(seconds=1)
    rows = _later_mart_rows()
    with connect(target) as wh:
        for suite, (_, clean, _) in rows.items():
            if not wh.relation_exists("water_infrastructure", suite):
                columns = ", ".join(f"{c} {_sql_type(v)}" for c, v in clean[0].items())
                wh.execute(f"create table water_infrastructure.{suite} ({columns})")

    def insert(part: int) -> None:
        with connect(target) as wh:
            for suite, spec in rows.items():
                for row in spec[part]:
                    names = ", ".join(row)
                    values = ", ".join(f"%({c})s" for c in row)
                    wh.execute(
                        f"insert into water_infrastructure.{suite} ({names}) values ({values})",
                        row,
                    )

    insert(1)  # clean rows
    ok = gate(target, "marts", "run-clean-marts", since_loaded_at=since)
    for suite in rows:
        assert _own(ok.critical_failures + ok.warnings, suite) == []

    insert(2)  # broken rows
    bad = gate(target, "marts", "run-broken-marts", since_loaded_at=since)
    assert not bad.passed
    assert _own(bad.critical_failures, "anomalies") == ["anomalies.severity_known"]
    assert _own(bad.critical_failures, "ml_predictions_cache") == [
        "ml_predictions_cache.full_horizon",
        "ml_predictions_cache.lower_le_predicted",
        "ml_predictions_cache.predicted_flow_rate_not_nan",
    ]
    # An implausible loss is a warning: recorded, it would not stop the cycle.
    assert _own(bad.critical_failures, "network_efficiency") == []
    assert _own(bad.warnings, "network_efficiency") == [
        "network_efficiency.water_loss_percent_plausible"
    ]


def _defined_models(names: tuple[str, ...]) -> tuple[str, ...]:
    """The later marts whose dbt model exists in this checkout."""
    models = PROJECT_ROOT / "dbt_project" / "models"
    return tuple(n for n in names if any(models.rglob(f"{n}.sql")) or any(models.rglob(f"{n}.py")))


def _ensure_later_mart_sources(wh) -> None:
    """The ML outputs the later marts read are created by the ML stage before a cycle."""
    try:
        from ml.registry import ensure_ml_tables
    except ImportError:
        return
    ensure_ml_tables(wh)


def _own(lines: list[str], suite: str) -> list[str]:
    return sorted(name for name in _names(lines) if name.startswith(suite + "."))


def _sql_type(value: object) -> str:
    if isinstance(value, datetime):
        return "timestamptz"
    if isinstance(value, float):
        return "double precision"
    if isinstance(value, int):
        return "integer"
    return "varchar"


def test_water_validate_prints_a_table_and_fails_on_critical(
    duckdb_target: Target, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    from flows.cli.main import main

    _build(duckdb_target, tmp_path)
    monkeypatch.setenv("WATER_DUCKDB_PATH", str(duckdb_target.duckdb_path))
    runner = CliRunner()

    ok = runner.invoke(main, ["validate", "--target", "duckdb", "--suite", "computed_metrics"])
    assert ok.exit_code == 0, ok.output
    assert "window_start_aligned" in ok.output and "raw_batch" not in ok.output
    assert "0 critical failure(s)" in ok.output
    # The platform's verdict, and a link that works offline (the dashboard's quality page).
    assert "verdict: passed" in ok.output
    assert "results: http://127.0.0.1:8501/quality" in ok.output

    with connect(duckdb_target) as wh:
        wh.execute(
            "update water_infrastructure.computed_metrics set quality_score = 1.5,"
            " computed_at = %(now)s where node_id = 'N0005' and time_window = '1day'",
            {"now": datetime.now(UTC)},
        )
    failed = runner.invoke(main, ["validate", "--target", "duckdb"])
    assert failed.exit_code != 0
    assert "quality_score_in_unit_range" in failed.output
    assert "critical" in failed.output
    assert "verdict: failed" in failed.output

    # `water status` shows the latest run's failures by severity.
    from flows.pipeline.status import collect_status, format_status

    text = format_status(collect_status(duckdb_target))
    assert "quality" in text and "quality_score_in_unit_range" in text
    with connect(duckdb_target) as wh:
        summary = latest_results(wh)
    assert summary.failed_by_severity.get("critical") == 1


def test_bad_arguments_are_one_line_errors(duckdb_target: Target):
    with pytest.raises(QualityError, match="unknown stage 'gold'"):
        gate(duckdb_target, "gold", "r")
    with pytest.raises(QualityError, match="unknown suite 'nope'"):
        run_suites(duckdb_target, suite="nope")
    with pytest.raises(QualityError, match="timezone-aware"):
        gate(duckdb_target, "raw", "r", since_loaded_at=datetime(2024, 1, 1))
    with pytest.raises(QualityError, match="duckdb and postgres"):
        gate(Target("bigquery", bigquery_project="p", bigquery_dataset="d"), "raw", "r")


@pytest.mark.postgres
def test_postgres_password_is_never_written(
    pg_target: Target, tmp_path: Path, gx_root: Path, monkeypatch: pytest.MonkeyPatch
):
    marker = "not-a-real-password-4f1c"  # the server trusts local users and ignores it
    monkeypatch.setenv("PGPASSWORD", marker)
    with connect(pg_target) as wh:
        load_synthetic(
            wh,
            SyntheticConfig(nodes=2, days=0.1, seed=1, start=START),
            progress=False,
            landing_dir=tmp_path,
        )
    result = gate(pg_target, "raw", "run-secret")
    assert result.passed
    for path in gx_root.rglob("*"):
        if path.is_file():
            assert marker not in path.read_text(errors="ignore"), path


def test_committed_suites_are_well_formed():
    suites = {
        p.stem: json.loads(p.read_text()) for p in (COMMITTED_GX / "expectations").glob("*.json")
    }
    assert set(suites) == set(SUITES)
    for name, suite in suites.items():
        checks = [e["meta"]["check"] for e in suite["expectations"]]
        assert len(checks) == len(set(checks)), f"{name}: duplicate check names"
        for expectation in suite["expectations"]:
            assert expectation["severity"] in SEVERITIES
            assert expectation["meta"]["severity"] == expectation["severity"]
            assert expectation.get("description")
    config = (COMMITTED_GX / "great_expectations.yml").read_text()
    connection = next(line for line in config.splitlines() if "postgresql+psycopg2://" in line)
    assert "${PGPASSWORD}" in connection and "@${PGHOST}" in connection


@pytest.mark.postgres
def test_committed_gx_project_matches_its_builder(pg_target: Target, monkeypatch):
    """`expectations/build_suites.py --check` reports nothing stale."""
    spec = importlib.util.spec_from_file_location(
        "build_suites", PROJECT_ROOT / "expectations" / "build_suites.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setenv("WATER_GX_ROOT", str(COMMITTED_GX.parent))
    monkeypatch.setenv("PGDATABASE", pg_target.pg_dsn_parts["dbname"])
    assert module.main(["--check"]) == 0


PUBLISHED_TABLES = (
    "computed_metrics",
    "rejected_readings",
    "nodes",
    "anomalies",
    "network_efficiency",
    "data_quality_metrics",
    "ml_predictions_cache",
)


def _redis_snapshot(client) -> dict[bytes, object]:
    snapshot = {}
    for key in sorted(client.scan_iter("water:*")):
        kind = client.type(key)
        snapshot[key] = (
            client.zrange(key, 0, -1, withscores=True) if kind == b"zset" else client.get(key)
        )
    return snapshot


def _published_tables(target: Target) -> dict[str, pd.DataFrame]:
    tables = {}
    with connect(target) as wh:
        for name in PUBLISHED_TABLES:
            if wh.relation_exists("water_infrastructure", name):
                frame = wh.query_df(f"select * from water_infrastructure.{name}")
                tables[name] = frame.sort_values(list(frame.columns)).reset_index(drop=True)
    return tables


@pytest.mark.postgres
def test_a_critical_failure_in_a_cycle_leaves_redis_and_published_tables_as_they_were(
    pg_target: Target, tmp_path: Path
):
    from flows.pipeline.cycle import run_cycle
    from flows.pipeline.results import CycleFailed
    from tests.orch_support import RedisServer

    server = RedisServer(tmp_path / "redis").start()
    try:
        client = server.client()
        with connect(pg_target) as wh:
            load_synthetic(wh, _config(), progress=False, landing_dir=tmp_path / "landing")
        first = run_cycle(pg_target, redis_client=client, triggered_by="test")
        assert first.status == "completed" and first.publish["status"] == "published"
        redis_before = _redis_snapshot(client)
        tables_before = _published_tables(pg_target)
        assert redis_before and "computed_metrics" in tables_before

        # The next batch is 60 % invalid: the raw gate stops the cycle before it publishes.
        times = pd.date_range(START + timedelta(days=2), periods=50, freq="60s", tz="UTC")
        _load_csv(
            pg_target,
            tmp_path / "broken.csv",
            pd.DataFrame(
                {
                    "timestamp": times.strftime("%Y-%m-%dT%H:%M:%SZ"),
                    "node_id": "N0002",
                    "flow_rate": [50_000.0] * 30 + [3.0] * 20,
                    "pressure": 4.2,
                }
            ),
        )
        with pytest.raises(CycleFailed, match="rejected_share_below_limit"):
            run_cycle(pg_target, redis_client=client, triggered_by="test")

        assert _redis_snapshot(client) == redis_before
        tables_after = _published_tables(pg_target)
        assert set(tables_after) == set(tables_before)
        for name, frame in tables_before.items():
            pd.testing.assert_frame_equal(tables_after[name], frame, obj=name)
        with connect(pg_target) as wh:
            failed = wh.query(
                "select suite, expectation from water_infrastructure.quality_checks"
                " where severity = 'critical' and status = 'failed'"
            )
        assert failed == [("raw_batch", "rejected_share_below_limit")]
    finally:
        server.stop()
