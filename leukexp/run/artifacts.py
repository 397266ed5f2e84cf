"""What a fold run writes: config, manifest, predictions, history, figures, its MLflow model and activation maps."""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from leukexp.csv_files import write_csv
from leukexp.evaluation.metrics import confusion
from leukexp.evaluation.plots import plot_confusion, plot_curves, plot_reliability, plot_roc
from leukexp.vocabulary import (
    CAM_DIR,
    CONFIG_FILE,
    CONFUSION_FILE,
    EXTERNAL_PREDICTIONS_FILE,
    HISTORY_FILE,
    MANIFEST_FILE,
    MODEL_DIR,
    PREDICTIONS_FILE,
    RELIABILITY_FILE,
    TEST_ACC,
    Predictions,
)

if TYPE_CHECKING:
    import pandas as pd

    from leukexp.backbones.base import Backbone
    from leukexp.data.bags import Bags
    from leukexp.data.fold_data import FoldData
    from leukexp.data.stain import StainNormalizer
    from leukexp.inference.classifier import TrainedOn
    from leukexp.run.fit import FitResult

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


def prediction_table(fold_data: FoldData, result: FitResult) -> Predictions:
    """The test samples' predictions in the `predictions.csv` schema (with bags: one row per bag, its name in the
    `file` column)."""
    if fold_data.bags is not None:
        names = fold_data.bag_names("test")
        return Predictions(files=names, views=np.zeros(len(names), int), labels=fold_data.labels("test"),
                           probs=result.test_probs, classes=fold_data.classes)
    test = fold_data.samples.test
    return Predictions(
        files=fold_data.catalog.frame["file"].to_numpy()[test["source"].to_numpy()],
        views=test["view"].to_numpy(),
        labels=test["label_index"].to_numpy(),
        probs=result.test_probs,
        classes=fold_data.classes,
    )


def write_run_artifacts(out: Path, config_yaml: str, fold_data: FoldData, backbone: Backbone,
                        model_config: dict[str, Any],
                        result: FitResult, metrics: dict[str, float], cam_per_class: int = 0,
                        external: Predictions | None = None, seed: int | None = None,
                        shares: pd.DataFrame | None = None) -> list[Path]:
    """Config, manifest, confusion matrix, predictions (and the external set's), history, figures, the trained model
    and (with `cam_per_class`) a panel of activation maps, in `out`; `seed` is the one the backbone was built under
    (a random-init backbone is rebuilt with it); `shares`: a differential's `pct_<type>` columns per test bag, added
    to `predictions.csv`."""
    out.mkdir(parents=True, exist_ok=True)
    (out / CONFIG_FILE).write_text(config_yaml)
    predictions = prediction_table(fold_data, result)
    matrix = confusion(predictions.labels, predictions.probs, fold_data.classes)
    write_csv(matrix, out / CONFUSION_FILE, index=True)
    table = predictions.to_frame()
    write_csv(table.join(shares, on="file") if shares is not None else table, out / PREDICTIONS_FILE)
    write_csv(result.history, out / HISTORY_FILE)
    title = f"{fold_data.task.name} {fold_data.fold.name}: acc {metrics[TEST_ACC]:.3f}"
    rerun = "Re-run the same command to make it (finished folds are kept)."
    figures = "Every figure can be redrawn from predictions.csv and history.csv in the run folder."
    optional_files = [
        optional("confusion_matrix.png", figures, lambda: plot_confusion(matrix, out / "confusion_matrix.png", title)),
        optional("roc.png", figures, lambda: plot_roc([("test", predictions.labels, predictions.probs)],
                                                      fold_data.classes, out / "roc.png")),
        *([optional("curves.png", figures, lambda: plot_curves(result.history, out / "curves.png",
                                                                result.best_epoch))]
          if result.best_epoch is not None else []),  # a head fitted at once has no epochs to draw
        optional(RELIABILITY_FILE, figures, lambda: plot_reliability(predictions.labels, predictions.probs,
                                                                     out / RELIABILITY_FILE, title)),
        optional("the MLflow model (model/)", rerun,
                 lambda: write_model(out / MODEL_DIR, result, backbone, model_config, fold_data.classes,
                                     fold_data.stain, fold_data.bagging, seed, fitted_pictures(fold_data))),
    ]
    if cam_per_class and fold_data.bags is None:  # with bags the attention pictures show what decided
        optional_files.append(optional(
            "the activation-map panel (cam/panel.png)",
            f"Make maps later with: leukexp-predict {out} IMAGES --cam DIR",
            lambda: write_cam_panel(out / CAM_DIR, fold_data, backbone, result, cam_per_class)))
    required = [out / name for name in (CONFIG_FILE, MANIFEST_FILE, CONFUSION_FILE, PREDICTIONS_FILE, HISTORY_FILE)]
    if external is not None:
        write_csv(external.to_frame(), out / EXTERNAL_PREDICTIONS_FILE)
        required.append(out / EXTERNAL_PREDICTIONS_FILE)
    return required + [path for path in optional_files if path is not None]


def write_cam_panel(folder: Path, fold_data: FoldData, backbone: Backbone, result: FitResult, per_class: int) -> Path:
    """`cam/panel.png`: activation maps of a few correct and wrong test images per class (or a note why not)."""
    from leukexp.data.io import read_image
    from leukexp.errors import LeukexpError
    from leukexp.inference.cam import cam_panel
    from leukexp.inference.classifier import Classifier

    folder.mkdir(parents=True, exist_ok=True)
    test = fold_data.samples.test.reset_index(drop=True)
    originals = test.drop_duplicates("source")  # one row per test image (its first view: the original)
    paths = fold_data.catalog.frame["path"].to_numpy()[originals["source"].to_numpy()]
    try:
        classifier = Classifier(backbone, result.head, fold_data.classes, result.temperature, result.operating_point,
                                fold_data.stain)
        cam_panel(classifier, lambda i: read_image(paths[i]), originals["label_index"].to_numpy(), folder / "panel.png",
                  per_class, probs=result.test_probs[originals.index.to_numpy()])
    except LeukexpError as error:
        (folder / "no_panel.txt").write_text(f"{error}\n")
    return folder


def fitted_pictures(fold_data: FoldData) -> TrainedOn:
    """The fold's training and validation pictures (content hash, file) and its data fingerprint."""
    from leukexp.data.splits import TRAIN, VAL
    from leukexp.inference.classifier import TrainedOn

    table = fold_data.manifest()
    fitted = table[table["split"].isin([TRAIN, VAL])].drop_duplicates("sha1")
    return TrainedOn(fitted[["sha1", "file"]].reset_index(drop=True), fold_data.data_fingerprint())


def write_model(path: Path, result: FitResult, backbone: Backbone, model_config: dict[str, Any],
                classes: list[str], stain: StainNormalizer | None = None, bagging: Bags | None = None,
                seed: int | None = None, trained_on: TrainedOn | None = None) -> Path:
    """The run's MLflow model: the trained head, its backbone reference, (with bags) how a new image becomes
    instances and the pictures it was fitted on, loadable by `mlflow.pyfunc`."""
    from leukexp.inference.classifier import save_classifier
    from leukexp.inference.serving import save_model

    with tempfile.TemporaryDirectory() as tmp:
        classifier = save_classifier(Path(tmp) / "classifier", result.head, backbone, model_config, classes,
                                     result.temperature, result.operating_point, stain, bagging, seed, trained_on)
        return save_model(path, classifier, classes, decision=result.operating_point is not None,
                          bags=result.head.aggregates)
