"""Statistics over folds: mean, spread, confidence intervals and paired comparisons (used by cv and report)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

from leukexp.vocabulary import BEST, EXTERNAL, TEST, cv_metric


@dataclass(frozen=True)
class Interval:
    """A point estimate with a two-sided confidence interval."""

    mean: float
    low: float
    high: float


def t_interval(values: np.ndarray | list[float], level: float = 0.95) -> Interval:
    """Student-t interval of the mean of `values` (e.g. one metric over folds); a single value has no width."""
    values = np.asarray(values, dtype=float)
    mean = float(np.mean(values))
    if len(values) < 2:
        return Interval(mean, mean, mean)
    half = float(stats.t.ppf(0.5 + level / 2, len(values) - 1) * np.std(values, ddof=1) / np.sqrt(len(values)))
    return Interval(mean, mean - half, mean + half)


def wilson_interval(successes: int, trials: int, level: float = 0.95) -> Interval:
    """Wilson score interval of a proportion (e.g. accuracy over pooled test predictions): always inside [0, 1]."""
    if trials <= 0:
        return Interval(math.nan, math.nan, math.nan)
    z = float(stats.norm.ppf(0.5 + level / 2))
    p = successes / trials
    centre = (p + z * z / (2 * trials)) / (1 + z * z / trials)
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / (1 + z * z / trials)
    return Interval(p, max(0.0, centre - half), min(1.0, centre + half))


def spread(values: np.ndarray) -> float:
    """Sample standard deviation (ddof 1); 0 for a single value."""
    return float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def aggregate_metrics(table: pd.DataFrame) -> dict[str, float]:
    """`cv/<metric>_mean`, `_std`, `_ci95_low`, `_ci95_high` for every test, external and best-epoch metric column of
    a per-fold table (`cv/best/val/acc_mean` is what a search optimizes by default)."""
    out: dict[str, float] = {}
    for metric in (c for c in table.columns if str(c).startswith((TEST, EXTERNAL, BEST))):
        values = table[metric].dropna().to_numpy(dtype=float)
        if not len(values):
            continue
        interval = t_interval(values)
        out[cv_metric(metric, "mean")] = interval.mean
        out[cv_metric(metric, "std")] = spread(values)
        out[cv_metric(metric, "ci95_low")] = interval.low
        out[cv_metric(metric, "ci95_high")] = interval.high
    return out


@dataclass(frozen=True)
class PairedResult:
    """Difference of two configurations over the folds they share."""

    shared_folds: list[str]
    mean_difference: float
    ci95_low: float
    ci95_high: float
    p_value: float

    @property
    def verdict(self) -> str:
        """Whether the difference stands out from fold-to-fold noise (its 95% CI excludes 0)."""
        if len(self.shared_folds) < 2:
            return "too few shared folds for a paired test"
        if self.ci95_low > 0 or self.ci95_high < 0:
            return "distinguishable from fold noise"
        return "not distinguishable from fold noise"


def paired_difference(first: pd.Series, second: pd.Series) -> PairedResult:
    """Paired t-test of `first - second`, two per-fold series indexed by fold name."""
    shared = sorted(set(first.index) & set(second.index))
    a, b = first[shared].to_numpy(dtype=float), second[shared].to_numpy(dtype=float)
    diffs = a - b
    if len(diffs) < 2:
        mean = float(diffs.mean()) if len(diffs) else math.nan
        return PairedResult(shared, mean, math.nan, math.nan, math.nan)
    interval = t_interval(diffs)
    # with no variation the t statistic is undefined: a constant non-zero gap is as certain as it gets
    constant_p = 0.0 if diffs[0] != 0 else 1.0
    p_value = float(stats.ttest_rel(a, b).pvalue) if np.any(diffs != diffs[0]) else constant_p
    return PairedResult(shared, interval.mean, interval.low, interval.high, p_value)


# the measures a cluster bootstrap recomputes from resampled confusion counts
BOOTSTRAP_MEASURES = ("acc", "balanced_acc", "f1_macro")


def _confusion_measures(counts: np.ndarray) -> dict[str, np.ndarray]:
    """Accuracy, balanced accuracy and macro F1 of (..., classes, classes) confusion counts (true x predicted)."""
    diagonal = np.diagonal(counts, axis1=-2, axis2=-1)
    actual, called = counts.sum(axis=-1), counts.sum(axis=-2)
    with np.errstate(invalid="ignore", divide="ignore"):
        recall = np.where(actual > 0, diagonal / actual, np.nan)
        f1 = np.where(actual + called > 0, 2 * diagonal / (actual + called), 0.0)
        return {"acc": diagonal.sum(-1) / counts.sum(axis=(-2, -1)),
                "balanced_acc": np.nanmean(recall, axis=-1),
                "f1_macro": np.where(actual > 0, f1, np.nan).mean(axis=-1, where=actual > 0)}


def cluster_bootstrap(labels: np.ndarray, predicted: np.ndarray, clusters: np.ndarray, n_classes: int,
                      resamples: int = 2000, level: float = 0.95, seed: int = 0) -> dict[str, Interval]:
    """Percentile bootstrap intervals of accuracy, balanced accuracy and macro F1, resampling whole clusters
    (patients, or images when each is its own cluster) with replacement; the point estimate is the full sample's.

    Each cluster's confusion counts are computed once; a resample weights them by how often it drew each cluster
    (a multinomial draw), so the cost grows with clusters x resamples, not with the samples behind them.
    """
    _, cluster_index = np.unique(np.asarray(clusters), return_inverse=True)
    n_clusters = int(cluster_index.max()) + 1
    cell = (cluster_index * n_classes + np.asarray(labels)) * n_classes + np.asarray(predicted)
    counts = np.bincount(cell, minlength=n_clusters * n_classes * n_classes).reshape(
        n_clusters, n_classes, n_classes).astype(float)
    point = _confusion_measures(counts.sum(axis=0))
    rng = np.random.default_rng(seed)
    draws: dict[str, list[np.ndarray]] = {m: [] for m in BOOTSTRAP_MEASURES}
    chunk = max(1, min(resamples, 20_000_000 // max(1, n_clusters * n_classes * n_classes)))
    for start in range(0, resamples, chunk):
        weights = rng.multinomial(n_clusters, np.full(n_clusters, 1 / n_clusters), size=min(chunk, resamples - start))
        measures = _confusion_measures(np.einsum("bk,kij->bij", weights.astype(float), counts))
        for name in BOOTSTRAP_MEASURES:
            draws[name].append(measures[name])
    tail = (1 - level) / 2 * 100
    result = {}
    for name in BOOTSTRAP_MEASURES:
        values = np.concatenate(draws[name])
        low, high = np.nanpercentile(values, [tail, 100 - tail])
        result[name] = Interval(float(point[name]), float(low), float(high))
    return result
