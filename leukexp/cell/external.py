"""A fold's trained model scored on the external validation set (`evaluation.external`): `external/<metric>`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from leukexp.data.augment import Augmentation, named_views
from leukexp.evaluation.metrics import classification_metrics
from leukexp.evaluation.operating import operating_metrics
from leukexp.features.extract import Setting, sample_features
from leukexp.inference.tta import view_mean
from leukexp.vocabulary import EXTERNAL, Predictions

if TYPE_CHECKING:
    from leukexp.backbones.base import Backbone
    from leukexp.cell.fit import FitResult
    from leukexp.data.sources import Catalog
    from leukexp.data.stain import StainNormalizer
    from leukexp.features.cache import FeatureCache


@dataclass
class ExternalScores:
    """The external set's metrics (`external/...`) and per-image predictions (`external_predictions.csv`)."""

    metrics: dict[str, float]
    predictions: Predictions


def external_views(tta: str, seed: int) -> Augmentation:
    """The views an external image is scored from: the test-time views of `evaluation.tta`, else the original
    alone (as the test images are)."""
    return named_views(tta, seed, "evaluation.tta")


def score_external(catalog: Catalog, backbone: Backbone, result: FitResult, views: Augmentation,
                   caches: list[FeatureCache | None], stain: StainNormalizer | None = None,
                   batch_size: Setting = "auto", num_workers: Setting = "auto") -> ExternalScores:
    """Every external image scored by the fold's head (its views averaged, each scaled by the run's temperature),
    with the test metrics' names under `external/` and the operating point's measures at the validation
    threshold."""
    n_views = views.n_views
    frame = catalog.frame
    samples = pd.DataFrame({"source": np.repeat(np.arange(len(frame)), n_views),
                            "view": np.tile(np.arange(n_views), len(frame)),
                            "label_index": np.repeat(frame["label_index"].to_numpy(), n_views)})
    features = sample_features(backbone, frame, samples, views, caches, batch_size, num_workers,
                               "external images", stain)
    view_probs = result.head.predict_proba(features).reshape(len(frame), n_views, len(catalog.classes))
    probs = view_mean(view_probs, result.temperature)
    labels = frame["label_index"].to_numpy()
    metrics = classification_metrics(labels, probs, catalog.classes, EXTERNAL)
    if result.operating_point is not None:
        metrics |= operating_metrics(result.operating_point, catalog.classes, labels, probs, EXTERNAL)
    predictions = Predictions(files=frame["file"].to_numpy(), views=np.zeros(len(frame), int), labels=labels,
                              probs=probs, classes=catalog.classes)
    return ExternalScores(metrics, predictions)
