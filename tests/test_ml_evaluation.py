"""Evaluation maths on crafted cases: every figure computed by hand."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from ml.evaluation import forecast_day_metrics
from ml.metrics import ReferenceDistribution, point_metrics, population_stability_index
from ml.models import conformal_bounds


def test_point_metrics_by_hand():
    actual = np.array([10.0, 20.0, 30.0, 40.0])
    predicted = np.array([12.0, 18.0, 33.0, 40.0])  # errors 2, -2, 3, 0
    naive = np.array([14.0, 20.0, 26.0, 44.0])  # errors 4, 0, -4, 4
    lower = np.array([9.0, 15.0, 29.0, 41.0])
    upper = np.array([13.0, 21.0, 35.0, 45.0])  # 40 is below 41: 3 of 4 covered
    m = point_metrics(actual, predicted, naive=naive, lower=lower, upper=upper)
    assert m["n"] == 4
    assert m["mae"] == pytest.approx(7 / 4)
    assert m["rmse"] == pytest.approx(math.sqrt((4 + 4 + 9 + 0) / 4))
    assert m["mape"] == pytest.approx(100 * (2 / 10 + 2 / 20 + 3 / 30 + 0) / 4)
    assert m["naive_mae"] == pytest.approx(12 / 4)
    assert m["mase"] == pytest.approx((7 / 4) / (12 / 4))
    assert m["interval_coverage"] == pytest.approx(0.75)


def test_point_metrics_skip_missing_values_and_tiny_actuals_in_mape():
    actual = np.array([0.0, 10.0, np.nan, 5.0])
    predicted = np.array([1.0, 11.0, 3.0, np.nan])
    m = point_metrics(actual, predicted)
    assert m["n"] == 2  # the NaN actual and the NaN prediction are left out
    assert m["mae"] == pytest.approx(1.0)
    assert m["mape"] == pytest.approx(10.0)  # the zero actual does not explode MAPE
    assert math.isnan(m["mase"])  # no naive forecast given


def test_point_metrics_of_nothing_are_nan():
    m = point_metrics(np.array([]), np.array([]), naive=np.array([]))
    assert m["n"] == 0 and math.isnan(m["mae"]) and math.isnan(m["mase"])


def test_forecast_day_metrics_use_all_rows_but_mase_only_where_naive_exists():
    outcomes = pd.DataFrame(
        {
            "flow_rate_actual": [10.0, 20.0, 30.0],
            "flow_rate_predicted": [11.0, 22.0, 27.0],  # errors 1, 2, 3
            "flow_rate_seasonal_naive": [12.0, np.nan, 36.0],  # errors 2, -, 6
            "flow_rate_lower": [9.0, 21.0, 25.0],
            "flow_rate_upper": [12.0, 23.0, 31.0],  # 20 is below 21
            "horizon_hours": [1, 2, 24],
        }
    )
    m = forecast_day_metrics(outcomes)
    assert m["n_predictions"] == 3
    assert m["mae"] == pytest.approx(2.0)
    assert m["mase"] == pytest.approx((1 + 3) / 2 / ((2 + 6) / 2))
    assert m["naive_compared"] == 2
    assert m["interval_coverage"] == pytest.approx(2 / 3)
    assert m["mean_horizon_hours"] == pytest.approx(9.0)


def test_conformal_bounds_use_the_finite_sample_rank():
    residuals = np.arange(1, 20, dtype=float)  # 1..19, n = 19
    lower, upper = conformal_bounds(residuals, alpha=0.1)
    # upper: ceil(20 * 0.95) = 19th smallest; lower: floor(20 * 0.05) = 1st smallest
    assert (lower, upper) == (1.0, 19.0)
    lower, upper = conformal_bounds(np.arange(1, 201, dtype=float), alpha=0.1)
    assert (lower, upper) == (10.0, 191.0)  # floor(201 * .05) = 10, ceil(201 * .95) = 191


def test_population_stability_index_by_hand():
    expected = np.array([0.5, 0.5])
    observed = np.array([0.25, 0.75])
    psi = (0.25 - 0.5) * math.log(0.25 / 0.5) + (0.75 - 0.5) * math.log(0.75 / 0.5)
    assert population_stability_index(expected, observed) == pytest.approx(psi)
    assert population_stability_index(expected, expected) == 0.0


def test_drift_is_zero_for_the_training_sample_and_grows_with_a_shift():
    rng = np.random.default_rng(0)
    train = pd.DataFrame({"x": rng.normal(0, 1, 5000)})
    reference = ReferenceDistribution.from_frame(train, ["x"])
    same, _ = reference.drift_score(train)
    shifted, per_feature = reference.drift_score(pd.DataFrame({"x": rng.normal(1.0, 1, 5000)}))
    assert same == pytest.approx(0.0, abs=1e-12)
    assert shifted > 0.2 and set(per_feature) == {"x"}


def test_anomaly_thresholds_hold_clean_history_to_the_alarm_budget():
    from ml.features import ANOMALY_FEATURES
    from ml.models import WindowAnomalyModel

    rng = np.random.default_rng(4)

    def clean(node_days: int) -> pd.DataFrame:
        n = node_days * 24
        frame = pd.DataFrame({c: rng.normal(0, 0.1, n) for c in ANOMALY_FEATURES})
        frame["has_flow"], frame["has_pressure"], frame["completeness"] = 1.0, 1.0, 1.0
        return frame

    history = clean(40 * 30)  # 40 nodes x 30 days
    model = WindowAnomalyModel.fit("anomaly-v1-test", history, 0.01, 0.1, 0.005, seed=1)
    severity = model.severities(model.score(history))
    alarms = np.isin(severity, ["warning", "critical"]).sum()
    assert alarms / (len(history) / 24) <= 0.01
    assert (severity == "info").mean() == pytest.approx(0.005, abs=0.001)
    assert model.info_threshold < model.warning_threshold <= model.critical_threshold
    # Fresh clean windows stay near the budget; a clear fault is an alarm, not evidence.
    fresh = model.severities(model.score(clean(40 * 7)))
    assert np.isin(fresh, ["warning", "critical"]).sum() / (40 * 7) <= 0.03
    # A burst: flow far above its usual hour, yesterday and the last hour; pressure down.
    burst = {"flow_vs_typical": 1.5, "flow_vs_yesterday": 1.5, "flow_vs_previous_hour": 1.5}
    fault = clean(1).head(1).assign(**burst, pressure_vs_typical=-1.0)
    assert model.severities(model.score(fault))[0] in ("warning", "critical")
