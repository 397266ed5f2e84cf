"""Test metrics from class probabilities."""

import numpy as np
import pandas as pd
import pytest

from leukexp.evaluation.metrics import best_epoch_metrics, classification_metrics, confusion
from leukexp.vocabulary import (
    BALANCED_ACC,
    BEST,
    BEST_EPOCH,
    KAPPA,
    MCC,
    TEST,
    TEST_ACC,
    TEST_AUC_MACRO,
    TEST_COUNT,
    TEST_LOSS,
    TRAIN_LOSS,
    VAL_ACC,
    metric_name,
)

CLASSES = ["ALL", "AML", "HLT"]


def test_metrics_of_a_known_prediction() -> None:
    labels = np.array([0, 0, 1, 2])
    probs = np.array([[0.8, 0.1, 0.1], [0.2, 0.7, 0.1], [0.1, 0.8, 0.1], [0.1, 0.1, 0.8]])
    metrics = classification_metrics(labels, probs, CLASSES)
    assert metrics[TEST_ACC] == 0.75 and metrics[TEST_COUNT] == 4
    assert metrics["test/recall/ALL"] == 0.5 and metrics["test/precision/AML"] == 0.5
    assert metrics["test/f1/HLT"] == 1.0
    assert metrics[TEST_LOSS] == pytest.approx(-np.mean(np.log([0.8, 0.2, 0.8, 0.8])))
    assert metrics["test/auc/HLT"] == 1.0


def test_auc_of_an_absent_class_is_left_out() -> None:
    metrics = classification_metrics(np.array([0, 1]), np.array([[0.9, 0.1, 0.0], [0.2, 0.8, 0.0]]), CLASSES)
    assert "test/auc/HLT" not in metrics and metrics[TEST_AUC_MACRO] == 1.0


def test_confusion_counts() -> None:
    matrix = confusion(np.array([0, 0, 1]), np.array([[1, 0, 0], [0, 1, 0], [0, 1, 0.0]]), CLASSES)
    assert matrix.loc["ALL", "AML"] == 1 and matrix.loc["AML", "AML"] == 1 and matrix.to_numpy().sum() == 3


def test_best_epoch_metrics() -> None:
    history = pd.DataFrame({"epoch": [0, 1, 2], VAL_ACC: [0.5, 0.9, 0.7], TRAIN_LOSS: [1.0, 0.5, 0.4]})
    assert best_epoch_metrics(history, 1) == {BEST_EPOCH: 1.0, BEST + VAL_ACC: 0.9, "best/train/loss": 0.5}
    assert best_epoch_metrics(pd.DataFrame(), -1) == {BEST_EPOCH: -1.0}
    assert best_epoch_metrics(history.iloc[:1], None) == {BEST + VAL_ACC: 0.5, "best/train/loss": 1.0}, (
        "a head without epochs: its one fit's metrics, no best/epoch")


def test_agreement_beyond_accuracy() -> None:
    labels = np.array([0, 1, 1])
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]])
    metrics = classification_metrics(labels, probs, ["a", "b"])
    assert metrics[metric_name(TEST, BALANCED_ACC)] == pytest.approx(0.75)  # class a 1/1, class b 1/2
    assert metrics[metric_name(TEST, KAPPA)] == pytest.approx(0.4)
    assert metrics[metric_name(TEST, MCC)] == pytest.approx(0.5)
    one_class = classification_metrics(np.array([0, 0]), np.array([[0.9, 0.1], [0.8, 0.2]]), ["a", "b"])
    assert np.isnan(one_class[metric_name(TEST, KAPPA)]), "undefined on a test set of one class: NaN, not an error"
