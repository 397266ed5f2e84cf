"""Statistics over folds: t and Wilson intervals, aggregates, paired differences."""

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as scipy_stats

from leukexp.evaluation.stats import (
    aggregate_metrics,
    cluster_bootstrap,
    paired_difference,
    spread,
    t_interval,
    wilson_interval,
)
from leukexp.vocabulary import BEST, TEST_ACC, TRAIN_LOSS, VAL_ACC, cv_metric


def test_t_interval_matches_scipy() -> None:
    values = np.array([0.8, 0.85, 0.9, 0.82, 0.88])
    interval = t_interval(values)
    low, high = scipy_stats.t.interval(0.95, 4, loc=values.mean(), scale=scipy_stats.sem(values))
    assert (interval.mean, interval.low, interval.high) == pytest.approx((values.mean(), low, high))
    assert t_interval([0.7]).low == t_interval([0.7]).high == 0.7


def test_wilson_interval_stays_inside_0_1() -> None:
    perfect = wilson_interval(20, 20)
    assert perfect.mean == 1.0 and perfect.high == 1.0 and 0.8 < perfect.low < 1.0
    assert wilson_interval(0, 20).low == 0.0
    # the textbook value: 8 of 10 -> (0.490, 0.943)
    assert (wilson_interval(8, 10).low, wilson_interval(8, 10).high) == pytest.approx((0.4902, 0.9433), abs=1e-4)
    assert math.isnan(wilson_interval(0, 0).mean)
    # a t interval over few near-perfect folds leaves [0, 1]; Wilson does not
    assert t_interval([1.0, 0.9, 1.0]).high > 1.0


def test_aggregates_cover_test_external_and_best_epoch_metrics_only() -> None:
    table = pd.DataFrame({TEST_ACC: [0.8, 0.9, 1.0], BEST + VAL_ACC: [0.7, 0.7, 0.7], TRAIN_LOSS: [1, 2, 3],
                          "external/acc": [0.5, 0.6, 0.7]}, index=["f0", "f1", "f2"])
    out = aggregate_metrics(table)
    assert set(out) == {f"cv/{m}_{s}" for m in (TEST_ACC, BEST + VAL_ACC, "external/acc")
                        for s in ("mean", "std", "ci95_low", "ci95_high")}
    assert out["cv/external/acc_mean"] == pytest.approx(0.6)
    assert out[cv_metric(BEST + VAL_ACC, "mean")] == pytest.approx(0.7), "what a search optimizes by default"
    assert out[cv_metric(TEST_ACC, "mean")] == pytest.approx(0.9)
    assert out[cv_metric(TEST_ACC, "std")] == pytest.approx(0.1)
    assert spread(np.array([0.5])) == 0.0


def test_paired_difference_over_shared_folds_only() -> None:
    a = pd.Series({"f0": 0.9, "f1": 0.85, "f2": 0.88, "f3": 0.87, "f4": 0.1})
    b = pd.Series({"f0": 0.7, "f1": 0.7, "f2": 0.7, "f3": 0.7})
    result = paired_difference(a, b)
    assert result.shared_folds == ["f0", "f1", "f2", "f3"]
    assert result.mean_difference == pytest.approx(0.175)
    assert result.p_value == pytest.approx(scipy_stats.ttest_rel([0.9, 0.85, 0.88, 0.87], [0.7] * 4).pvalue)
    assert result.verdict == "distinguishable from fold noise"
    noisy = paired_difference(pd.Series({"f0": 0.9, "f1": 0.7}), pd.Series({"f0": 0.7, "f1": 0.9}))
    assert noisy.verdict == "not distinguishable from fold noise"
    constant = paired_difference(pd.Series({"f0": 0.75, "f1": 0.5}), pd.Series({"f0": 0.5, "f1": 0.25}))
    assert constant.p_value == 0.0
    assert paired_difference(pd.Series({"f0": 1.0}), pd.Series({"f0": 0.5})).verdict.startswith("too few")


def test_cluster_bootstrap_point_estimates_are_sklearns_and_clusters_widen_the_interval() -> None:
    from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score

    rng = np.random.default_rng(1)
    labels = rng.integers(0, 3, 600)
    predicted = np.where(rng.random(600) < 0.7, labels, rng.integers(0, 3, 600))
    by_image = cluster_bootstrap(labels, predicted, np.arange(600), 3, resamples=800)
    assert by_image["acc"].mean == pytest.approx(accuracy_score(labels, predicted))
    assert by_image["balanced_acc"].mean == pytest.approx(balanced_accuracy_score(labels, predicted))
    assert by_image["f1_macro"].mean == pytest.approx(f1_score(labels, predicted, average="macro"))
    low, high = by_image["acc"].low, by_image["acc"].high
    assert low < by_image["acc"].mean < high
    assert high - low == pytest.approx(2 * 1.96 * math.sqrt(0.8 * 0.2 / 600), rel=0.35), "near the normal width"
    # 30 patients of 20 images whose predictions are right or wrong together: 30 units, a much wider interval
    patients = np.repeat(np.arange(30), 20)
    together = np.where(np.repeat(rng.random(30) < 0.8, 20), labels, (labels + 1) % 3)
    by_patient = cluster_bootstrap(labels, together, patients, 3, resamples=800)
    by_image_again = cluster_bootstrap(labels, together, np.arange(600), 3, resamples=800)
    assert (by_patient["acc"].high - by_patient["acc"].low) > 2.5 * (by_image_again["acc"].high
                                                                   - by_image_again["acc"].low)
