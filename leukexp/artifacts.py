"""What a fold run and a CV parent write as artifacts, and reading them back (one schema for writer and reader)."""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from leukexp.evaluation import confusion
from leukexp.plots import plot_confusion, plot_curves, plot_roc
from leukexp.vocabulary import (
    CAM_DIR,
    CONFIG_FILE,
    CONFUSION_FILE,
    CV,
    HISTORY_FILE,
    MANIFEST_FILE,
    MODEL_DIR,
    PREDICTIONS_FILE,
    TEST_ACC,
    Predictions,
)

if TYPE_CHECKING:
    from leukexp.backbones.base import Backbone
    from leukexp.data.study import Study
    from leukexp.fit import FitResult

log = logging.getLogger("leukexp")


def optional(name: str, redo: str, write: Callable[[], Path | None]) -> Path | None:
    """Write an artifact that a run can finish without (a figure, the MLflow model, the activation-map panel).

    A failure is one warning line naming the artifact, the error and how to make it later; the run goes on.
    A user's interrupt and a full disk are not swallowed (an out-of-space run folder is the run's failure).
    """
    try:
        return write()
    except Exception as error:  # any bug or odd input in an optional artifact must not cost the run
        if isinstance(error, OSError) and error.errno == 28:  # ENOSPC: the required files cannot be kept either
            raise
        detail = str(error).splitlines()[0][:200] if str(error) else ""
        log.warning("%s not written (%s%s); the run goes on without it. %s", name, type(error).__name__,
                    f": {detail}" if detail else "", redo)
        return None


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
                        result: FitResult, metrics: dict[str, float], cam_per_class: int = 0) -> list[Path]:
    """Config, manifest, confusion matrix, predictions, history, figures, the trained model and (with
    `cam_per_class`) a panel of activation maps, in `out`."""
    out.mkdir(parents=True, exist_ok=True)
    (out / CONFIG_FILE).write_text(config_yaml)
    predictions = prediction_table(study, result)
    matrix = confusion(predictions.labels, predictions.probs, study.classes)
    matrix.to_csv(out / CONFUSION_FILE)
    predictions.to_frame().to_csv(out / PREDICTIONS_FILE, index=False)
    result.history.to_csv(out / HISTORY_FILE, index=False)
    title = f"{study.task.name} {study.fold.name}: acc {metrics[TEST_ACC]:.3f}"
    rerun = "Re-run the same command to make it (finished folds are kept)."
    figures = "Every figure can be redrawn from predictions.csv and history.csv in the run folder."
    optional_files = [
        optional("confusion_matrix.png", figures, lambda: plot_confusion(matrix, out / "confusion_matrix.png", title)),
        optional("roc.png", figures, lambda: plot_roc([("test", predictions.labels, predictions.probs)],
                                                      study.classes, out / "roc.png")),
        optional("curves.png", figures, lambda: plot_curves(result.history, out / "curves.png", result.best_epoch)),
        optional("the MLflow model (model/)", rerun,
                 lambda: write_model(out / MODEL_DIR, result, backbone, model_config, study.classes)),
    ]
    if cam_per_class:
        optional_files.append(optional(
            "the activation-map panel (cam/panel.png)",
            f"Make maps later with: leukexp-predict {out} IMAGES --cam DIR",
            lambda: write_cam_panel(out / CAM_DIR, study, backbone, result, cam_per_class)))
    required = [out / name for name in (CONFIG_FILE, MANIFEST_FILE, CONFUSION_FILE, PREDICTIONS_FILE, HISTORY_FILE)]
    return required + [path for path in optional_files if path is not None]


def write_cam_panel(folder: Path, study: Study, backbone: Backbone, result: FitResult, per_class: int) -> Path:
    """`cam/panel.png`: activation maps of a few correct and wrong test images per class (or a note why not)."""
    from leukexp.cam import cam_panel
    from leukexp.data.io import read_image
    from leukexp.errors import LeukexpError
    from leukexp.predict import Classifier

    folder.mkdir(parents=True, exist_ok=True)
    test = study.samples.test.reset_index(drop=True)
    originals = test.drop_duplicates("source")  # one row per test image (its first view: the original)
    paths = study.catalog.frame["path"].to_numpy()[originals["source"].to_numpy()]
    try:
        cam_panel(Classifier(backbone, result.head, study.classes), lambda i: read_image(paths[i]),
                  originals["label_index"].to_numpy(), folder / "panel.png", per_class,
                  probs=result.test_probs[originals.index.to_numpy()])
    except LeukexpError as error:
        (folder / "no_panel.txt").write_text(f"{error}\n")
    return folder

def write_model(path: Path, result: FitResult, backbone: Backbone, model_config: dict[str, Any],
                classes: list[str]) -> Path:
    """The run's MLflow model: the trained head and its backbone reference, loadable by `mlflow.pyfunc`."""
    from leukexp.predict import save_classifier
    from leukexp.serving import save_model

    with tempfile.TemporaryDirectory() as tmp:
        classifier = save_classifier(Path(tmp) / "classifier", result.head, backbone, model_config, classes)
        return save_model(path, classifier, classes)


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


DESCRIPTION_COLUMNS = {"test/acc": "test acc", "test/f1_macro": "macro F1", "test/auc_macro": "macro AUC",
                       "test/loss": "test loss", "best/val/acc": "best val acc"}


def result_summary(metrics: dict[str, float], finished: int, n_splits: int) -> str:
    """One line for a tag column: mean accuracy, its spread and how many folds it covers."""
    mean, std = metrics.get(f"{CV}test/acc_mean"), metrics.get(f"{CV}test/acc_std")
    if mean is None:
        return f"{finished}/{n_splits} folds"
    return f"acc {mean:.3f} ± {std or 0.0:.3f} ({finished}/{n_splits} folds)"


def parent_description(name: str, cv_group: str, table: pd.DataFrame, metrics: dict[str, float], n_splits: int,
                       run_ids: dict[str, str]) -> str:
    """The CV parent's markdown description: what the configuration is, its folds and their aggregates."""
    columns = [c for c in DESCRIPTION_COLUMNS if c in table.columns]
    status = "complete" if len(table) >= n_splits else f"incomplete: {len(table)} of {n_splits} folds finished"
    lines = [f"### {name}", "", f"{len(table)}/{n_splits} folds ({status}). " + result_summary(
        metrics, len(table), n_splits), "",
             "| fold | " + " | ".join(DESCRIPTION_COLUMNS[c] for c in columns) + " | run |",
             "|---|" + "---|" * (len(columns) + 1)]
    for fold, row in table.iterrows():
        cells = [f"{row[c]:.4f}" if pd.notna(row[c]) else "-" for c in columns]
        lines.append(f"| {fold} | " + " | ".join(cells) + f" | `{run_ids.get(str(fold), '')[:8]}` |")
    means = [metrics.get(f"{CV}{c}_mean") for c in columns]
    stds = [metrics.get(f"{CV}{c}_std") for c in columns]
    lines.append("| **mean ± std** | " + " | ".join(
        f"**{m:.4f}** ± {s:.4f}" if m is not None else "-" for m, s in zip(means, stds, strict=True)) + " | |")
    lines.append("| 95% CI (t, folds) | " + " | ".join(
        f"[{metrics[f'{CV}{c}_ci95_low']:.4f}, {metrics[f'{CV}{c}_ci95_high']:.4f}]"
        if f"{CV}{c}_ci95_low" in metrics else "-" for c in columns) + " | |")
    lines += ["", "Configuration: " + " ".join(f"`{token}`" for token in cv_group.split()), ""]
    return "\n".join(lines)
