"""A fold's trained model scored on the external validation set (`evaluation.external`): `external/<metric>`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from leukexp.evaluation.metrics import classification_metrics
from leukexp.evaluation.operating import operating_metrics
from leukexp.inference.tta import view_mean
from leukexp.vocabulary import EXTERNAL, Predictions

if TYPE_CHECKING:
    from leukexp.run.fit import FitResult


@dataclass
class ExternalScores:
    """The external set's metrics (`external/...`) and per-image predictions (`external_predictions.csv`)."""

    metrics: dict[str, float]
    predictions: Predictions


def score_external(images: pd.DataFrame, classes: list[str], result: FitResult,
                   view_probs: np.ndarray) -> ExternalScores:
    """Every external image scored from the head's probabilities of its views (images, views, classes; each view
    scaled by the run's temperature, then averaged), with the test metrics' names under `external/` and the
    operating point's measures at the validation threshold."""
    probs = view_mean(view_probs, result.temperature)
    labels = images["label_index"].to_numpy()
    metrics = classification_metrics(labels, probs, classes, EXTERNAL)
    if result.operating_point is not None:
        metrics |= operating_metrics(result.operating_point, classes, labels, probs, EXTERNAL)
    predictions = Predictions(files=images["file"].to_numpy(), views=np.zeros(len(images), int), labels=labels,
                              probs=probs, classes=classes)
    return ExternalScores(metrics, predictions)
