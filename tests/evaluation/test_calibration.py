"""Calibration: ECE and Brier against hand-computed values, reliability bins, temperature scaling."""

import numpy as np
import pytest

from leukexp.evaluation.calibration import (
    apply_temperature,
    brier_score,
    expected_calibration_error,
    fit_temperature,
    reliability_bins,
)


def test_ece_and_brier_of_a_hand_worked_example() -> None:
    labels = np.array([0, 1, 1, 0])
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.7, 0.3]])
    # bins of width 1/15: confidences 0.9 (correct), 0.8 (correct), 0.6 (wrong), 0.7 (correct), each alone
    assert expected_calibration_error(labels, probs) == pytest.approx((0.1 + 0.2 + 0.6 + 0.3) / 4)
    assert brier_score(labels, probs) == pytest.approx((0.02 + 0.08 + 0.72 + 0.18) / 4)
    table = reliability_bins(labels, probs)
    assert table.count.sum() == 4 and table.count[table.count > 0].tolist() == [1, 1, 1, 1]


def test_perfect_and_empty_predictions() -> None:
    labels = np.array([0, 1, 2])
    assert expected_calibration_error(labels, np.eye(3)) == 0.0 and brier_score(labels, np.eye(3)) == 0.0
    assert np.isnan(expected_calibration_error(np.array([], int), np.zeros((0, 3))))


def test_temperature_one_changes_nothing_and_keeps_the_ranking() -> None:
    probs = np.array([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6]])
    assert apply_temperature(probs, 1.0) is probs
    softer = apply_temperature(probs, 3.0)
    assert np.allclose(softer.sum(axis=1), 1.0) and (softer.argmax(1) == probs.argmax(1)).all()
    assert softer.max() < probs.max(), "a temperature above 1 softens"


def test_an_over_confident_classifier_gets_a_temperature_above_one_and_a_lower_ece() -> None:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 2000)
    right = rng.random(2000) < 0.7  # 70 % accurate but claims 99 %
    predicted = np.where(right, labels, (labels + rng.integers(1, 3, 2000)) % 3)
    probs = np.full((2000, 3), 0.005)
    probs[np.arange(2000), predicted] = 0.99
    temperature = fit_temperature(labels[:1000], probs[:1000])
    assert temperature > 1.5
    before = expected_calibration_error(labels[1000:], probs[1000:])
    after = expected_calibration_error(labels[1000:], apply_temperature(probs[1000:], temperature))
    assert before > 0.25 and after < 0.05
