"""Model registry: promotion rules, one active model per type in the database, checksums."""

from __future__ import annotations

import pytest

from flows.kernel.warehouse import WarehouseError, connect
from ml.config import MLConfig
from ml.registry import (
    ArtifactIntegrityError,
    Decision,
    RegistryError,
    activate_model,
    active_model,
    decide_promotion,
    ensure_ml_tables,
    get_model,
    load_artifact,
    promotion_rules,
    record_decision,
    register_model,
    save_artifact,
)

RULES = promotion_rules(MLConfig())
FORECAST = RULES["flow_forecast"]
ANOMALY = RULES["anomaly"]


# -- promotion rules on crafted metrics -------------------------------------------------


def test_first_model_is_promoted_when_it_passes_the_gates():
    decision = decide_promotion({"mase": 0.7, "interval_coverage": 0.9}, None, FORECAST, 0.02)
    assert decision == Decision(True, True, decision.reason)
    assert "no active model" in decision.reason


def test_first_model_that_loses_to_seasonal_naive_is_not_validated():
    decision = decide_promotion({"mase": 1.05, "interval_coverage": 0.9}, None, FORECAST, 0.02)
    assert (decision.validated, decision.promote) == (False, False)
    assert "mase 1.05 is not < 1" in decision.reason


def test_poor_interval_coverage_fails_validation():
    decision = decide_promotion({"mase": 0.7, "interval_coverage": 0.6}, None, FORECAST, 0.02)
    assert not decision.validated
    assert "interval_coverage" in decision.reason


def test_missing_or_nan_primary_metric_fails_validation():
    assert not decide_promotion({"interval_coverage": 0.9}, None, FORECAST, 0.02).validated
    assert not decide_promotion(
        {"mase": float("nan"), "interval_coverage": 0.9}, None, FORECAST, 0.02
    ).validated


@pytest.mark.parametrize(
    ("challenger", "champion", "promote"),
    [
        (0.70, 0.75, True),  # 6.7 % better than the champion: beats the 2 % margin
        (0.74, 0.75, False),  # better, but only by 1.3 %
        (0.735, 0.75, True),  # exactly 2 % better
        (0.80, 0.75, False),  # worse
    ],
)
def test_lower_is_better_challenger_needs_the_margin(challenger, champion, promote):
    decision = decide_promotion(
        {"mase": challenger, "interval_coverage": 0.9},
        {"mase": champion, "interval_coverage": 0.9},
        FORECAST,
        0.02,
    )
    assert decision.validated
    assert decision.promote is promote
    assert ("does not beat" in decision.reason) is (not promote)


@pytest.mark.parametrize(("challenger", "promote"), [(0.95, True), (0.91, False), (0.85, False)])
def test_higher_is_better_challenger_needs_the_margin(challenger, promote):
    decision = decide_promotion(
        {"perturbation_auc": challenger}, {"perturbation_auc": 0.9}, ANOMALY, 0.02
    )
    assert decision.promote is promote


def test_margin_is_configurable():
    challenger = {"mase": 0.74, "interval_coverage": 0.9}
    champion = {"mase": 0.75, "interval_coverage": 0.9}
    assert not decide_promotion(challenger, champion, FORECAST, 0.02).promote
    assert decide_promotion(challenger, champion, FORECAST, 0.0).promote
    assert MLConfig.from_env({"WATER_ML_PROMOTION_MARGIN": "0.1"}).promotion_margin == 0.1


# -- registry tables --------------------------------------------------------------------


def _register(wh, model_id: str, version: int, model_type: str = "flow_forecast") -> None:
    register_model(
        wh,
        model_id=model_id,
        model_type=model_type,
        version=version,
        algorithm="test",
        artifact_path=f"{model_type}/{model_id}.joblib",
        artifact_sha256="0" * 64,
        training_start=None,
        training_end=None,
        holdout_start=None,
        holdout_end=None,
        training_rows=1,
    )


def test_database_allows_one_active_model_per_type(target):
    with connect(target) as wh:
        ensure_ml_tables(wh)
        ensure_ml_tables(wh)  # idempotent
        for version in (1, 2):
            _register(wh, f"flow_forecast-v{version}", version)
        _register(wh, "anomaly-v1", 1, "anomaly")
        promote = Decision(True, True, "test")
        record_decision(wh, "flow_forecast-v1", {"mase": 0.7}, None, "mase", promote)
        record_decision(
            wh, "anomaly-v1", {"perturbation_auc": 0.9}, None, "perturbation_auc", promote
        )
        record_decision(
            wh,
            "flow_forecast-v2",
            {"mase": 0.75},
            {"mase": 0.7},
            "mase",
            Decision(True, False, "kept"),
        )

        # Bypassing the registry functions: the database itself refuses a second active model.
        with pytest.raises(WarehouseError):
            wh.execute(
                "update water_infrastructure.ml_models set status = 'active', active_model_type = model_type"
                " where model_id = 'flow_forecast-v2'"
            )
        with pytest.raises(WarehouseError):
            wh.execute(
                "update water_infrastructure.ml_models set status = 'active' where model_id = 'flow_forecast-v2'"
            )
        assert active_model(wh, "flow_forecast")["model_id"] == "flow_forecast-v1"
        assert active_model(wh, "anomaly")["model_id"] == "anomaly-v1"  # other types unaffected

        # The registry swaps champion and challenger in one transaction.
        activate_model(wh, "flow_forecast-v2", "rollback test")
        statuses = dict(
            wh.query(
                "select model_id, status from water_infrastructure.ml_models where model_type = 'flow_forecast'"
            )
        )
        assert statuses == {"flow_forecast-v1": "retired", "flow_forecast-v2": "active"}
        assert get_model(wh, "flow_forecast-v1")["reason"] == "replaced by flow_forecast-v2"


def test_challenger_that_does_not_win_stays_validated_with_the_reason(duckdb_target):
    with connect(duckdb_target) as wh:
        ensure_ml_tables(wh)
        _register(wh, "flow_forecast-v1", 1)
        _register(wh, "flow_forecast-v2", 2)
        rule = FORECAST
        first = decide_promotion({"mase": 0.7, "interval_coverage": 0.9}, None, rule, 0.02)
        record_decision(
            wh, "flow_forecast-v1", {"mase": 0.7, "interval_coverage": 0.9}, None, "mase", first
        )
        challenger = {"mase": 0.695, "interval_coverage": 0.9}
        second = decide_promotion(challenger, {"mase": 0.7, "interval_coverage": 0.9}, rule, 0.02)
        record_decision(wh, "flow_forecast-v2", challenger, {"mase": 0.7}, "mase", second)
        kept = get_model(wh, "flow_forecast-v2")
        assert kept["status"] == "validated"
        assert kept["reason"].startswith("mase 0.695 does not beat champion 0.7")
        assert kept["metrics"] == challenger and kept["champion_metrics"] == {"mase": 0.7}
        assert active_model(wh, "flow_forecast")["model_id"] == "flow_forecast-v1"
        with pytest.raises(RegistryError, match="not created"):
            record_decision(wh, "flow_forecast-v2", challenger, None, "mase", second)


def test_unknown_model_type_is_rejected(duckdb_target):
    with connect(duckdb_target) as wh:
        ensure_ml_tables(wh)
        with pytest.raises(RegistryError, match="unknown model_type 'forecast'"):
            _register(wh, "x", 1, "forecast")


# -- artifacts ----------------------------------------------------------------------------


def test_artifact_with_a_changed_checksum_fails_loudly(tmp_path):
    relative, sha = save_artifact(
        {"weights": [1, 2, 3]}, "flow_forecast", "flow_forecast-v1-abc", tmp_path
    )
    assert relative == "flow_forecast/flow_forecast-v1-abc.joblib"
    assert load_artifact(relative, sha, tmp_path) == {"weights": [1, 2, 3]}

    path = tmp_path / relative
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ArtifactIntegrityError, match="refusing to load a changed file"):
        load_artifact(relative, sha, tmp_path)
    path.unlink()
    with pytest.raises(ArtifactIntegrityError, match="is missing"):
        load_artifact(relative, sha, tmp_path)
