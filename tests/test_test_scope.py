"""Cycles test what they built; the daily job tests every table whole.

A cycle's dbt data tests are scoped to the rows loaded after its watermark or rebuilt by its
own dbt run (the macro get_where_subquery, fed by the cycle): a broken row of an older cycle does not stop
today's cycle, and the daily job's full-table tests still find it.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from flows.kernel.dbt_runner import DbtError
from flows.kernel.settings import Target
from flows.kernel.warehouse import connect
from flows.loaders.loading import load_synthetic
from flows.loaders.synthetic import SyntheticConfig
from flows.pipeline.cycle import run_cycle
from flows.pipeline.model_jobs import full_data_tests

START = datetime(2024, 3, 4, tzinfo=UTC)


def test_cycle_tests_its_batch_and_the_daily_job_tests_everything(
    duckdb_target: Target, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    def load(start: datetime, days: float, seed: int) -> None:
        with connect(duckdb_target) as wh:
            config = SyntheticConfig(nodes=3, days=days, cadence_s=60, seed=seed, start=start)
            load_synthetic(wh, config, progress=False, landing_dir=tmp_path / str(seed))

    load(START, 1, 1)
    assert run_cycle(duckdb_target, publish_to_redis=False).status == "completed"
    # An old window breaks a rule a dbt test owns (quality_score within 0..1).
    with connect(duckdb_target) as wh:
        wh.execute(
            "update water_infrastructure.computed_metrics set quality_score = 2"
            " where node_id = 'N0001' and time_window = '1day'"
        )

    load(START + timedelta(days=1), 0.05, 2)
    second = run_cycle(duckdb_target, publish_to_redis=False)
    assert second.status == "completed"
    tested = [name for name in second.dbt.node_timings if name.startswith("in_range_computed")]
    assert tested, "the cycle ran computed_metrics' data tests"

    with pytest.raises(DbtError, match="in_range_computed_metrics_quality_score"):
        full_data_tests(duckdb_target)
