"""Operating points: a threshold chosen on validation for a sensitivity, the measures at it on test."""

import numpy as np
import pytest

from leukexp.evaluation.operating import OperatingPoint, choose, operating_metrics, threshold_for_sensitivity
from leukexp.vocabulary import CI_HIGH, CI_LOW, TEST, metric_name


def at(measure: str, interval_end: str = "") -> str:
    """The logged name of a measure at the operating point (`test/sensitivity`, `..._ci95_low`)."""
    return metric_name(TEST, measure) + interval_end


def test_the_threshold_is_the_highest_that_reaches_the_target() -> None:
    is_positive = np.array([True, True, True, True, False, False])
    scores = np.array([0.9, 0.8, 0.4, 0.3, 0.5, 0.1])
    assert threshold_for_sensitivity(is_positive, scores, 0.5) == 0.8, "2 of 4 positives at or above 0.8"
    assert threshold_for_sensitivity(is_positive, scores, 0.75) == 0.4
    assert threshold_for_sensitivity(is_positive, scores, 1.0) == 0.3
    assert threshold_for_sensitivity(np.zeros(3, bool), scores[:3], 0.95) == 0.5, "no positives: the plain 0.5"


def test_measures_at_the_threshold_with_wilson_intervals() -> None:
    classes = ["ALL", "HLT"]
    labels = np.array([0, 0, 0, 0, 1, 1, 1, 1])  # 4 ALL, 4 HLT
    p_all = np.array([0.9, 0.7, 0.6, 0.2, 0.65, 0.3, 0.1, 0.05])
    probs = np.stack([p_all, 1 - p_all], axis=1)
    point = OperatingPoint("ALL", 0.6, 0.95, "HLT")
    metrics = operating_metrics(point, classes, labels, probs, TEST)
    # called ALL: 0.9, 0.7, 0.6 (ALL) and 0.65 (HLT): TP 3, FN 1, FP 1, TN 3
    assert metrics[at("sensitivity")] == 0.75 and metrics[at("specificity")] == 0.75
    assert metrics[at("ppv")] == 0.75 and metrics[at("npv")] == 0.75
    assert 0.2 < metrics[at("sensitivity", CI_LOW)] < 0.75 < metrics[at("sensitivity", CI_HIGH)] < 1.0
    assert point.decide(p_all) == ["ALL", "ALL", "ALL", "HLT", "ALL", "HLT", "HLT", "HLT"]


def test_choose_names_the_other_decision_and_needs_a_positive_class() -> None:
    labels = np.array([0, 1, 2, 0])
    probs = np.array([[0.8, 0.1, 0.1], [0.3, 0.6, 0.1], [0.2, 0.2, 0.6], [0.5, 0.4, 0.1]])
    point = choose(["ALL", "AML", "HLT"], "ALL", labels, probs, 1.0)
    assert (point.positive, point.negative, point.threshold) == ("ALL", "not ALL", 0.5)
    assert choose(["ALL", "HLT"], "ALL", labels[:2] % 2, probs[:2, :2], 0.9).negative == "HLT"
    assert choose(["ALL", "AML", "HLT"], None, labels, probs, 0.95) is None, "no positive class: no decision"


def test_a_point_round_trips_and_a_damaged_one_is_refused() -> None:
    point = OperatingPoint("ALL", 0.42, 0.95, "HLT")
    assert OperatingPoint.from_dict(point.to_dict()) == point
    with pytest.raises(ValueError, match="not a probability"):
        OperatingPoint.from_dict({**point.to_dict(), "threshold": 1.5})
