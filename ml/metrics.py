"""Evaluation maths shared by training (holdout) and daily evaluation.

- RMSE, MAE: in the unit of the target (L/s).
- MAPE: mean of |error| / |actual| in percent over actuals with |actual| >= `mape_floor`
  (near-zero flows would explode it; they still count in every other metric).
- MASE: MAE of the model divided by the MAE of the seasonal-naive forecast (the same hour one
  week earlier) on the same observations. Below 1 the model beats seasonal-naive. (Hyndman's
  MASE scales by the in-sample naive error; scaling by the naive error on the very same
  points makes "beats seasonal-naive" exact and needs no training history at evaluation.)
- Interval coverage: share of actuals inside [lower, upper].
- Drift: population stability index (PSI) of each feature against the training sample,
  on the training deciles; the drift score is the mean PSI over features (above 0.2 is
  commonly read as a material shift).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd


def point_metrics(
    actual: np.ndarray,
    predicted: np.ndarray,
    naive: np.ndarray | None = None,
    lower: np.ndarray | None = None,
    upper: np.ndarray | None = None,
    mape_floor: float = 0.01,
) -> dict[str, float]:
    """Metrics over the rows where actual and predicted (and naive, when given) are present."""
    actual = np.asarray(actual, dtype=float)
    predicted = np.asarray(predicted, dtype=float)
    mask = np.isfinite(actual) & np.isfinite(predicted)
    if naive is not None:
        naive = np.asarray(naive, dtype=float)
        mask &= np.isfinite(naive)
    n = int(mask.sum())
    result: dict[str, float] = {"n": float(n)}
    if n == 0:
        return result | {"rmse": math.nan, "mae": math.nan, "mape": math.nan, "mase": math.nan}
    error = predicted[mask] - actual[mask]
    result["rmse"] = float(np.sqrt(np.mean(error**2)))
    result["mae"] = float(np.mean(np.abs(error)))
    big = np.abs(actual[mask]) >= mape_floor
    result["mape"] = (
        float(np.mean(np.abs(error[big]) / np.abs(actual[mask][big])) * 100)
        if big.any()
        else math.nan
    )
    if naive is not None:
        naive_mae = float(np.mean(np.abs(naive[mask] - actual[mask])))
        result["naive_mae"] = naive_mae
        result["mase"] = result["mae"] / naive_mae if naive_mae > 0 else math.nan
    else:
        result["mase"] = math.nan
    if lower is not None and upper is not None:
        lo = np.asarray(lower, dtype=float)[mask]
        hi = np.asarray(upper, dtype=float)[mask]
        inside = (actual[mask] >= lo) & (actual[mask] <= hi)
        result["interval_coverage"] = float(inside.mean())
    return result


@dataclass
class ReferenceDistribution:
    """Training deciles of each feature, kept in the model artifact for drift checks."""

    edges: dict[str, np.ndarray]
    proportions: dict[str, np.ndarray]

    @classmethod
    def from_frame(
        cls, frame: pd.DataFrame, columns: list[str], bins: int = 10
    ) -> ReferenceDistribution:
        edges: dict[str, np.ndarray] = {}
        proportions: dict[str, np.ndarray] = {}
        for column in columns:
            values = pd.to_numeric(frame[column], errors="coerce").to_numpy(dtype=float)
            values = values[np.isfinite(values)]
            if values.size < bins:
                continue
            cuts = np.unique(np.quantile(values, np.linspace(0, 1, bins + 1)[1:-1]))
            edges[column] = cuts
            proportions[column] = _bin_shares(values, cuts)
        return cls(edges, proportions)

    def psi(self, frame: pd.DataFrame) -> dict[str, float]:
        scores: dict[str, float] = {}
        for column, cuts in self.edges.items():
            if column not in frame.columns:
                continue
            values = pd.to_numeric(frame[column], errors="coerce").to_numpy(dtype=float)
            values = values[np.isfinite(values)]
            if values.size == 0:
                continue
            scores[column] = population_stability_index(
                self.proportions[column], _bin_shares(values, cuts)
            )
        return scores

    def drift_score(self, frame: pd.DataFrame) -> tuple[float, dict[str, float]]:
        scores = self.psi(frame)
        if not scores:
            return math.nan, scores
        return float(np.mean(list(scores.values()))), scores


def _bin_shares(values: np.ndarray, cuts: np.ndarray) -> np.ndarray:
    counts = np.bincount(np.searchsorted(cuts, values, side="right"), minlength=len(cuts) + 1)
    return counts / max(counts.sum(), 1)


def population_stability_index(
    expected: np.ndarray, observed: np.ndarray, floor: float = 1e-4
) -> float:
    """PSI = sum((o - e) * ln(o / e)) over bins, shares floored to avoid log(0)."""
    e = np.clip(np.asarray(expected, dtype=float), floor, None)
    o = np.clip(np.asarray(observed, dtype=float), floor, None)
    return float(np.sum((o - e) * np.log(o / e)))


def interval_score(
    actual: np.ndarray, lower: np.ndarray, upper: np.ndarray, coverage: float
) -> np.ndarray:
    """Winkler's interval score per row (lower is better): the width, plus 2/alpha times the
    distance by which the actual falls outside. It rewards narrow intervals only while they
    keep their nominal coverage, so a challenger cannot win by shrinking its interval."""
    actual, lower, upper = (np.asarray(a, dtype=float) for a in (actual, lower, upper))
    alpha = 1.0 - coverage
    return (
        (upper - lower)
        + (2.0 / alpha) * np.clip(lower - actual, 0, None)
        + (2.0 / alpha) * np.clip(actual - upper, 0, None)
    )


def paired_difference(
    challenger: np.ndarray, champion: np.ndarray, blocks: np.ndarray
) -> tuple[float, float, int]:
    """Mean of (challenger - champion) per row, its standard error and the number of blocks.

    Rows of one block (a node's day, a district) are correlated, so the standard error is
    the cluster-robust one over block sums: treating 300 000 hourly rows as independent would
    call a noise-sized difference significant."""
    diff = np.asarray(challenger, dtype=float) - np.asarray(champion, dtype=float)
    keep = np.isfinite(diff)
    diff, blocks = diff[keep], np.asarray(blocks)[keep]
    n = diff.size
    if n == 0:
        return math.nan, math.nan, 0
    mean = float(diff.mean())
    frame = pd.DataFrame({"b": blocks, "d": diff - mean})
    sums = frame.groupby("b", sort=False)["d"].sum().to_numpy()
    k = sums.size
    if k < 2:
        return mean, math.nan, k
    se = float(np.sqrt(k / (k - 1) * np.sum(sums**2)) / n)
    return mean, se, k
