"""Test metrics from class probabilities, with scikit-learn."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
from sklearn.metrics import (
    accuracy_score,
    confusion_matrix,
    log_loss,
    precision_recall_fscore_support,
    roc_auc_score,
)

from leukexp.vocabulary import class_key_parts


def classification_metrics(labels: np.ndarray, probs: np.ndarray, classes: list[str],
                           prefix: str = "test") -> dict[str, float]:
    """Accuracy, loss, sample count, macro and per-class precision/recall/F1 and one-vs-rest ROC-AUC.

    AUC of a class absent from `labels` is left out (and out of the macro mean). Per-class keys use the class's
    MLflow-safe name (`vocabulary.class_key_parts`).
    """
    indices = list(range(len(classes)))
    predicted = probs.argmax(axis=1)
    clipped = np.clip(probs, 1e-7, 1.0)
    metrics = {
        f"{prefix}/acc": float(accuracy_score(labels, predicted)),
        f"{prefix}/loss": float(log_loss(labels, clipped / clipped.sum(1, keepdims=True), labels=indices)),
        f"{prefix}/n": float(len(labels)),
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        precision, recall, f1, _ = precision_recall_fscore_support(
            labels, predicted, labels=indices, zero_division=0
        )
    metrics[f"{prefix}/precision_macro"] = float(precision.mean())
    metrics[f"{prefix}/recall_macro"] = float(recall.mean())
    metrics[f"{prefix}/f1_macro"] = float(f1.mean())
    aucs = []
    for i, name in enumerate(class_key_parts(classes)):
        metrics[f"{prefix}/precision/{name}"] = float(precision[i])
        metrics[f"{prefix}/recall/{name}"] = float(recall[i])
        metrics[f"{prefix}/f1/{name}"] = float(f1[i])
        positives = labels == i
        if 0 < positives.sum() < len(labels):
            auc = float(roc_auc_score(positives, probs[:, i]))
            metrics[f"{prefix}/auc/{name}"] = auc
            aucs.append(auc)
    if aucs:
        metrics[f"{prefix}/auc_macro"] = float(np.mean(aucs))
    return metrics


def confusion(labels: np.ndarray, probs: np.ndarray, classes: list[str]) -> pd.DataFrame:
    """Confusion matrix counts: rows are true classes, columns predicted."""
    matrix = confusion_matrix(labels, probs.argmax(axis=1), labels=list(range(len(classes))))
    return pd.DataFrame(matrix, index=pd.Index(classes, name="true"), columns=pd.Index(classes, name="predicted"))


def best_epoch_metrics(history: pd.DataFrame, best_epoch: int) -> dict[str, float]:
    """`best/<metric>` for every metric of the selected epoch, and `best/epoch`."""
    metrics: dict[str, float] = {"best/epoch": float(best_epoch)}
    if len(history) and 0 <= best_epoch < len(history):
        row = history.iloc[best_epoch]
        metrics.update({f"best/{key}": float(value) for key, value in row.items() if key != "epoch"})
    return metrics
