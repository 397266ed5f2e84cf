"""Test metrics from class probabilities, with scikit-learn."""

from __future__ import annotations

import warnings
from collections.abc import Callable

import numpy as np
import pandas as pd
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    cohen_kappa_score,
    confusion_matrix,
    log_loss,
    matthews_corrcoef,
    precision_recall_fscore_support,
    roc_auc_score,
)

from leukexp.evaluation.calibration import brier_score, expected_calibration_error
from leukexp.vocabulary import (
    ACC,
    AUC,
    BALANCED_ACC,
    BEST,
    BEST_EPOCH,
    BRIER,
    COUNT,
    ECE,
    EPOCH,
    F1,
    KAPPA,
    LOSS,
    MACRO,
    MCC,
    PRECISION,
    RECALL,
    TEST,
    class_key_parts,
    metric_name,
)


def classification_metrics(labels: np.ndarray, probs: np.ndarray, classes: list[str],
                           prefix: str = TEST) -> dict[str, float]:
    """Accuracy, balanced accuracy, Cohen's kappa, MCC, loss, sample count, calibration (top-label ECE in 15 bins,
    Brier score), macro and per-class precision/recall/F1 and one-vs-rest ROC-AUC.

    AUC of a class absent from `labels` is left out (and out of the macro mean). Per-class keys use the class's
    MLflow-safe name (`vocabulary.class_key_parts`).
    """
    indices = list(range(len(classes)))
    predicted = probs.argmax(axis=1)
    clipped = np.clip(probs, 1e-7, 1.0)
    def key(measure: str) -> str:
        return metric_name(prefix, measure)

    metrics = {
        key(ACC): float(accuracy_score(labels, predicted)),
        key(LOSS): float(log_loss(labels, clipped / clipped.sum(1, keepdims=True), labels=indices)),
        key(COUNT): float(len(labels)),
        **_agreement(labels, predicted, indices, key),
        key(ECE): expected_calibration_error(labels, probs),
        key(BRIER): brier_score(labels, probs),
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        precision, recall, f1, _ = precision_recall_fscore_support(
            labels, predicted, labels=indices, zero_division=0
        )
    metrics[key(PRECISION + MACRO)] = float(precision.mean())
    metrics[key(RECALL + MACRO)] = float(recall.mean())
    metrics[key(F1 + MACRO)] = float(f1.mean())
    aucs = []
    for i, name in enumerate(class_key_parts(classes)):
        metrics[key(f"{PRECISION}/{name}")] = float(precision[i])
        metrics[key(f"{RECALL}/{name}")] = float(recall[i])
        metrics[key(f"{F1}/{name}")] = float(f1[i])
        positives = labels == i
        if 0 < positives.sum() < len(labels):
            auc = float(roc_auc_score(positives, probs[:, i]))
            metrics[key(f"{AUC}/{name}")] = auc
            aucs.append(auc)
    if aucs:
        metrics[key(AUC + MACRO)] = float(np.mean(aucs))
    return metrics


def _agreement(labels: np.ndarray, predicted: np.ndarray, indices: list[int], key: Callable[[str], str]
               ) -> dict[str, float]:
    """Balanced accuracy, Cohen's kappa and MCC (NaN where a test set of one class leaves them undefined)."""
    if not len(labels):
        return {key(BALANCED_ACC): float("nan"), key(KAPPA): float("nan"), key(MCC): float("nan")}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return {key(BALANCED_ACC): _finite_or_nan(balanced_accuracy_score(labels, predicted)),
                key(KAPPA): _finite_or_nan(cohen_kappa_score(labels, predicted, labels=indices)),
                key(MCC): _finite_or_nan(matthews_corrcoef(labels, predicted))}


def _finite_or_nan(value: float) -> float:
    """A score scikit-learn may leave undefined (one class only) as NaN, never a warning or an error."""
    value = float(value)
    return value if np.isfinite(value) else float("nan")


def confusion(labels: np.ndarray, probs: np.ndarray, classes: list[str]) -> pd.DataFrame:
    """Confusion matrix counts: rows are true classes, columns predicted."""
    matrix = confusion_matrix(labels, probs.argmax(axis=1), labels=list(range(len(classes))))
    return pd.DataFrame(matrix, index=pd.Index(classes, name="true"), columns=pd.Index(classes, name="predicted"))


def best_epoch_metrics(history: pd.DataFrame, best_epoch: int | None) -> dict[str, float]:
    """`best/<metric>` for every metric of the selected epoch, and `best/epoch`; for a head without epochs (None),
    its one fit's metrics and no `best/epoch`."""
    metrics: dict[str, float] = {} if best_epoch is None else {BEST_EPOCH: float(best_epoch)}
    best_epoch = 0 if best_epoch is None else best_epoch
    if len(history) and 0 <= best_epoch < len(history):
        row = history.iloc[best_epoch]
        metrics.update({f"{BEST}{key}": float(value) for key, value in row.items() if key != EPOCH})
    return metrics
