"""The MLflow model of a fold run: a `python_function` model whose loader is leukexp's installed code.

It is saved with `loader_module="leukexp.inference.serving"` and the run's classifier folder as its data, so loading it
(`mlflow.pyfunc.load_model("runs:/<id>/model")`, `mlflow models serve`) runs `_load_pyfunc` below: it reads
JSON, tensors and skops files, never a pickle, and builds only leukexp's own backbones and heads.

Input: a DataFrame with a `path` column (image files) or an `image` column (base64-encoded image files);
from Python, `model.get_raw_model().predict_proba(list_of_rgb_arrays)` takes arrays too. Output: one row per
image, `predicted` and `p_<class>` per class.
"""

from __future__ import annotations

import base64
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from leukexp.data.io import decode_image, read_image
from leukexp.errors import LeukexpError
from leukexp.inference.classifier import Classifier, load_classifier
from leukexp.vocabulary import DECISION_COLUMN, LOADER_MODULE, MODEL_DATA_DIR, PROBABILITY_PREFIX


def signature(classes: list[str], decision: bool = False, bags: bool = False) -> Any:
    """Input: `path` or `image` (base64) per row (and, for a bag model, the row's `bag`); output: (a bag model: the
    `bag`,) `predicted`, one probability per class and (a model with an operating point) the screening `decision`."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema

    inputs = Schema([ColSpec("string", "path", required=False), ColSpec("string", "image", required=False),
                     *([ColSpec("string", "bag", required=False)] if bags else [])])
    outputs = Schema([*([ColSpec("string", "bag")] if bags else []), ColSpec("string", "predicted"),
                      *(ColSpec("double", f"{PROBABILITY_PREFIX}{c}") for c in classes),
                      *([ColSpec("string", DECISION_COLUMN)] if decision else [])])
    return ModelSignature(inputs=inputs, outputs=outputs)


def save_model(path: Path, classifier_dir: Path, classes: list[str], decision: bool = False,
               bags: bool = False) -> Path:
    """Write an MLflow pyfunc model at `path` holding the classifier folder as its data."""
    import mlflow.pyfunc

    from leukexp import __version__
    from leukexp.tracking import warmup

    warmup.wait(warmup.MODEL_SAVING)  # MLflow's map of installed distributions, begun while the head trained

    if path.exists():
        shutil.rmtree(path)  # the run folder's own earlier model (a run repeated into the same folder)
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / MODEL_DATA_DIR  # the folder's name inside the model: `data/classifier`
        shutil.copytree(classifier_dir, data)
        mlflow.pyfunc.save_model(path=str(path), loader_module=LOADER_MODULE, data_path=str(data),
                                 signature=signature(classes, decision, bags),
                                 pip_requirements=[f"leukexp=={__version__}"])
    return path


def probability_frame(probs: np.ndarray, classes: list[str], decisions: list[str] | None = None) -> pd.DataFrame:
    """`predicted` and `p_<class>` columns for class probabilities, and `decision` when given."""
    frame = pd.DataFrame({"predicted": [classes[i] for i in probs.argmax(1)],
                          **{f"{PROBABILITY_PREFIX}{c}": probs[:, i] for i, c in enumerate(classes)}})
    if decisions is not None:
        frame[DECISION_COLUMN] = decisions
    return frame


class LeukexpModel:
    """What `mlflow.pyfunc.load_model` wraps: a classifier that scores image files or base64 images."""

    def __init__(self, classifier: Classifier) -> None:
        self.classifier = classifier

    def predict(self, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        """One row per input row: the predicted class and a probability per class. A bag model (an aggregator)
        takes a bag: the rows sharing a `bag` value (all rows when there is no `bag` column) give one row, in the
        order bags first appear."""
        frame = pd.DataFrame(model_input)
        if self.classifier.scores_bags:
            return self._predict_bags(frame)
        images = [self._image(row) for row in frame.to_dict("records")]
        probs = self.classifier.predict_proba(images)
        return probability_frame(probs, self.classifier.classes, self.classifier.decisions(probs))

    def _predict_bags(self, frame: pd.DataFrame) -> pd.DataFrame:
        bags = frame["bag"].astype(str) if "bag" in frame else pd.Series("bag", index=frame.index)
        names, rows, shares = [], [], []
        for name, part in frame.groupby(bags, sort=False):
            names.append(name)
            scored = self.classifier.predict_bag([self._image(row) for row in part.to_dict("records")])
            rows.append(scored.probs)
            shares.append(scored.shares())  # a differential head: each cell type's share (%)
        probs = np.stack(rows)
        result = probability_frame(probs, self.classifier.classes, self.classifier.decisions(probs))
        result.insert(0, "bag", names)
        return result.join(pd.DataFrame(shares)) if any(shares) else result

    @staticmethod
    def _image(row: dict[str, Any]) -> np.ndarray:
        encoded, path = row.get("image"), row.get("path")
        if isinstance(encoded, str) and encoded:
            try:
                data = base64.b64decode(encoded, validate=True)
            except ValueError as error:
                raise LeukexpError("column 'image': not base64-encoded image bytes") from error
            return decode_image(data, Path("<image column>"))
        if isinstance(path, str) and path:
            return read_image(path)
        raise LeukexpError("each row needs a 'path' (an image file) or an 'image' (base64 image bytes)")

    def get_raw_model(self) -> Classifier:
        """The classifier itself (`predict_proba` on RGB arrays, `predict_bag` for a bag model)."""
        return self.classifier


def _load_pyfunc(data_path: str) -> LeukexpModel:
    """MLflow's entry point for this flavor: rebuild the classifier from the model's data folder."""
    return LeukexpModel(load_classifier(data_path))
