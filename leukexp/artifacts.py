"""What a fold run and a CV parent write as artifacts, and reading them back (one schema for writer and reader)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from leukexp.evaluation import confusion
from leukexp.plots import plot_confusion, plot_curves, plot_roc
from leukexp.vocabulary import (
    CONFIG_FILE,
    CONFUSION_FILE,
    CV,
    HISTORY_FILE,
    MANIFEST_FILE,
    MODEL_DIR,
    PREDICTIONS_FILE,
    Predictions,
)

if TYPE_CHECKING:
    from leukexp.backbones.base import Backbone
    from leukexp.data.study import Study
    from leukexp.fit import FitResult


def prediction_table(study: Study, result: FitResult) -> Predictions:
    """The test samples' predictions in the `predictions.csv` schema."""
    test = study.samples.test
    return Predictions(
        files=study.catalog.frame["file"].to_numpy()[test["source"].to_numpy()],
        views=test["view"].to_numpy(),
        labels=test["label_index"].to_numpy(),
        probs=result.test_probs,
        classes=study.classes,
    )


def write_run_artifacts(out: Path, config_yaml: str, study: Study, backbone: Backbone, model_config: dict[str, Any],
                        result: FitResult, metrics: dict[str, float]) -> list[Path]:
    """Config, manifest, confusion matrix, predictions, history, figures and the trained model, in `out`."""
    from leukexp.predict import save_classifier

    out.mkdir(parents=True, exist_ok=True)
    (out / CONFIG_FILE).write_text(config_yaml)
    predictions = prediction_table(study, result)
    matrix = confusion(predictions.labels, predictions.probs, study.classes)
    matrix.to_csv(out / CONFUSION_FILE)
    predictions.to_frame().to_csv(out / PREDICTIONS_FILE, index=False)
    result.history.to_csv(out / HISTORY_FILE, index=False)
    title = f"{study.task.name} {study.fold.name}: acc {metrics['test/acc']:.3f}"
    return [
        out / CONFIG_FILE, out / MANIFEST_FILE, out / CONFUSION_FILE, out / PREDICTIONS_FILE, out / HISTORY_FILE,
        plot_confusion(matrix, out / "confusion_matrix.png", title),
        plot_roc([("test", predictions.labels, predictions.probs)], study.classes, out / "roc.png"),
        plot_curves(result.history, out / "curves.png", result.best_epoch),
        save_classifier(out / MODEL_DIR, result.head, backbone, model_config, study.classes),
    ]


def read_predictions(path: Path) -> Predictions:
    """A fold run's `predictions.csv`."""
    return Predictions.from_frame(pd.read_csv(path))


def write_cv_artifacts(out: Path, table: pd.DataFrame, predictions: dict[str, Predictions],
                       metrics: dict[str, float]) -> list[Path]:
    """The parent's `cv_folds.csv` (per-fold table with mean and std), mean confusion matrix and all folds' ROC."""
    summary = pd.concat([table, table.mean().to_frame("mean").T, table.std(ddof=1).to_frame("std").T])
    summary.index.name = "fold"
    summary.to_csv(out / "cv_folds.csv")
    paths = [out / "cv_folds.csv"]
    if not predictions:
        return paths
    classes = next(iter(predictions.values())).classes
    matrices = [confusion(p.labels, p.probs, classes).astype(float) for p in predictions.values()]
    mean_matrix = sum(matrices) / len(matrices)
    mean_matrix.to_csv(out / "cv_confusion_matrix.csv")
    accuracy = metrics.get(f"{CV}test/acc_mean", float("nan"))
    return [
        *paths, out / "cv_confusion_matrix.csv",
        plot_confusion(mean_matrix.round(1), out / "cv_confusion_matrix.png",
                       f"mean of {len(matrices)} folds: acc {accuracy:.3f}"),
        plot_roc([(fold, p.labels, p.probs) for fold, p in sorted(predictions.items())], classes,
                 out / "cv_roc.png", "ROC of every fold (one-vs-rest)"),
    ]
