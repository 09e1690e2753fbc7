"""The dbt project as analytics engineers use it: parses for all three adapters, documented."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from flows.kernel.dbt_runner import run_dbt
from flows.kernel.settings import Target

BIGQUERY = Target("bigquery", bigquery_project="water-test-project", bigquery_dataset="water_ci")


@pytest.fixture(scope="module")
def bigquery_manifest(tmp_path_factory) -> dict:
    """`dbt parse --target bigquery` needs no connection: it must succeed and give the manifest."""
    saved = {k: os.environ.get(k) for k in ("BIGQUERY_PROJECT_ID", "BIGQUERY_DATASET")}
    os.environ.update({"BIGQUERY_PROJECT_ID": "water-test-project", "BIGQUERY_DATASET": "water_ci"})
    try:
        run_dbt(BIGQUERY, "parse", ["--no-partial-parse"])
    finally:
        for key, value in saved.items():
            os.environ.pop(key, None) if value is None else os.environ.__setitem__(key, value)
    manifest = Path(os.environ["WATER_DBT_TARGET_ROOT"]) / "bigquery" / "manifest.json"
    return json.loads(manifest.read_text())


def test_bigquery_target_parses_and_reads_the_landing_table(bigquery_manifest):
    source = bigquery_manifest["sources"]["source.water_infrastructure.raw.sensor_readings"]
    assert (source["database"], source["schema"], source["identifier"]) == (
        "water-test-project",
        "water_ci",
        "sensor_readings_landed",  # sensor_readings_ml + ingestion time (docs/bigquery.md)
    )
    assert source["loaded_at_field"] == "loaded_at"


def test_large_bigquery_models_are_day_partitioned_and_clustered_by_node(bigquery_manifest):
    layout = {
        node["name"]: (node["config"].get("partition_by"), node["config"].get("cluster_by"))
        for node in bigquery_manifest["nodes"].values()
        if node["resource_type"] == "model"
    }
    for name, column in (
        ("int_readings_deduplicated", "reading_at"),
        ("int_metrics_windowed", "window_start"),
        ("int_metrics_scored", "window_start"),
        ("computed_metrics", "window_start"),
        ("data_quality_metrics", "window_start"),
        ("rejected_readings", "timestamp"),
        ("int_node_baselines_computed", "key_hour_start"),
    ):
        partition, cluster = layout[name]
        assert partition == {"field": column, "data_type": "timestamp", "granularity": "day"}
        assert cluster == ["node_id"], name


def test_every_model_and_column_is_documented(bigquery_manifest):
    missing = []
    for node in bigquery_manifest["nodes"].values():
        if node["resource_type"] != "model" or node["package_name"] != "water_infrastructure":
            continue
        if not node["description"].strip():
            missing.append(node["name"])
        missing += [
            f"{node['name']}.{c}"
            for c, col in node["columns"].items()
            if not col["description"].strip()
        ]
    assert not missing, f"undocumented: {missing}"


def test_core_models_have_key_tests(bigquery_manifest):
    tested = {
        (node["attached_node"] or "").split(".")[-1]
        for node in bigquery_manifest["nodes"].values()
        if node["resource_type"] == "test"
        and node.get("test_metadata", {}).get("name") == "unique_combination"
    }
    assert {
        "int_readings_deduplicated",
        "int_metrics_windowed",
        "computed_metrics",
        "rejected_readings",
    } <= tested
    unit_tests = {u["name"] for u in bigquery_manifest.get("unit_tests", {}).values()}
    assert {
        "windows_are_utc_epoch_aligned_with_floor_semantics",
        "totaliser_delta_across_a_reset_and_a_gap",
    } <= unit_tests


def test_every_built_column_is_documented(duckdb_target):
    """Columns as built in the warehouse, not just those declared in YAML, have descriptions."""
    from datetime import UTC, datetime

    from flows.kernel.warehouse import connect
    from flows.loaders.loading import load_synthetic
    from flows.loaders.synthetic import SyntheticConfig
    from flows.pipeline.cycle import run_cycle

    config = SyntheticConfig(
        nodes=4, days=1, cadence_s=300, seed=3, start=datetime(2024, 6, 1, tzinfo=UTC)
    )
    with connect(duckdb_target) as wh:
        load_synthetic(wh, config, progress=False, landing_dir=duckdb_target.duckdb_path.parent)
    run_cycle(duckdb_target)
    manifest = json.loads(
        (Path(os.environ["WATER_DBT_TARGET_ROOT"]) / "duckdb" / "manifest.json").read_text()
    )
    undocumented = []
    with connect(duckdb_target) as wh:
        for node in manifest["nodes"].values():
            if node["resource_type"] != "model" or not node["config"].get("enabled", True):
                continue
            documented = {c for c, col in node["columns"].items() if col["description"].strip()}
            built = {
                r[0]
                for r in wh.query(
                    "select column_name from information_schema.columns where table_schema = %(s)s and table_name = %(t)s",
                    {"s": node["schema"], "t": node["alias"]},
                )
            }
            undocumented += [f"{node['name']}.{c}" for c in sorted(built - documented)]
    assert not undocumented, f"built but undocumented: {undocumented}"


def test_dbt_unit_tests_pass_on_both_engines(target):
    """Cycles skip dbt unit tests (fixed-input logic checks); CI runs every one of them here."""
    from datetime import UTC, datetime

    from flows.kernel.warehouse import connect
    from flows.loaders.loading import load_synthetic
    from flows.loaders.synthetic import SyntheticConfig
    from flows.pipeline.cycle import run_cycle

    config = SyntheticConfig(
        nodes=3, days=1, cadence_s=300, seed=5, start=datetime(2024, 6, 1, tzinfo=UTC)
    )
    directory = Path(os.environ["WATER_DBT_TARGET_ROOT"]) / f"landing-{target.type}"
    with connect(target) as wh:
        load_synthetic(wh, config, progress=False, landing_dir=directory)
    run_cycle(target)
    outcome = run_dbt(target, "test", ["--select", "test_type:unit"])
    assert (
        len(outcome.node_timings) >= 10
    )  # every unit test ran (and passed: run_dbt raises otherwise)


def test_parallel_dbt_threads_never_build_two_python_asts_at_once(monkeypatch):
    """dbt's threads call `ast.literal_eval`; on CPython 3.11 two interleaved AST builds can
    fail with "AST constructor recursion depth mismatch", so the runner serialises them."""
    import ast
    import threading
    import time

    from flows.kernel import dbt_runner

    real_parse = ast.parse.__wrapped__
    inside, most_inside = 0, 0
    counter = threading.Lock()

    def probe(*args, **kwargs):
        nonlocal inside, most_inside
        with counter:
            inside += 1
            most_inside = max(most_inside, inside)
        time.sleep(0.02)  # long enough for the other threads to try to enter
        with counter:
            inside -= 1
        return real_parse(*args, **kwargs)

    monkeypatch.setattr(ast, "parse", probe)
    dbt_runner.serialize_ast_parse()
    threads = [threading.Thread(target=ast.literal_eval, args=("[1, (2, 3)]",)) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert most_inside == 1
    assert ast.literal_eval("{'a': [1, 2]}") == {"a": [1, 2]}
