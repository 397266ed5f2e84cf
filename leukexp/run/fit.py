"""Training a head on a study's features and predicting its validation and test samples."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from torch.utils.data import Dataset

from leukexp.data.protocol import Samples
from leukexp.evaluation.operating import OperatingPoint
from leukexp.features.embed import Features
from leukexp.heads.base import Head, Split


@dataclass
class FitResult:
    """A trained head, its validation and test probabilities and its per-epoch history."""

    head: Head
    val_probs: np.ndarray
    test_probs: np.ndarray
    history: pd.DataFrame
    best_epoch: int
    temperature: float = 1.0  # scales the probabilities above (and the saved model's), 1: as the head gives them
    operating_point: OperatingPoint | None = None  # the decision threshold chosen on validation (positive class)


def fit_head(head: Head, samples: Samples, features: Features, train_images: Dataset | None = None) -> FitResult:
    """Train `head` on the fold's training samples (features, or images for online views), predict val and test."""
    train = Split(samples.train["label_index"].to_numpy(), features.train, train_images)
    val = Split(samples.val["label_index"].to_numpy(), features.val)
    history = head.fit(train, val)
    return FitResult(head, head.predict_proba(features.val), head.predict_proba(features.test), history,
                     head.best_epoch)
