"""Training a head on a fold's features and predicting its validation and test samples (or bags)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from torch.utils.data import Dataset

from leukexp.data.fold_data import FoldData
from leukexp.evaluation.operating import OperatingPoint
from leukexp.features.embed import Features
from leukexp.heads.base import Aggregator, Head, Split


@dataclass
class FitResult:
    """A trained head, its validation and test probabilities and its per-epoch history."""

    head: Head
    val_probs: np.ndarray
    test_probs: np.ndarray
    history: pd.DataFrame
    best_epoch: int | None
    temperature: float = 1.0  # scales the probabilities above (and the saved model's), 1: as the head gives them
    operating_point: OperatingPoint | None = None  # the decision threshold chosen on validation (positive class)


def split_of(fold_data: FoldData, name: str, features: np.ndarray | None, images: Dataset | None = None) -> Split:
    """One split's labels and features (for bags: the bags' labels, their instances' features and offsets)."""
    return Split(fold_data.labels(name), features, images, fold_data.offsets(name), fold_data.instance_labels(name),
                 fold_data.instance_types(name))


def predict(head: Head, split: Split) -> np.ndarray:
    """The head's probabilities of a split's samples (an aggregator's: of its bags)."""
    if isinstance(head, Aggregator):
        return head.predict_proba(split.in_memory(), split.bags)
    return head.predict_proba(split.in_memory())


def fit_head(head: Head, fold_data: FoldData, features: Features, train_images: Dataset | None = None) -> FitResult:
    """Train `head` on the fold's training samples (features, or images for online views), predict val and test."""
    train = split_of(fold_data, "train", features.train, train_images)
    val, test = split_of(fold_data, "val", features.val), split_of(fold_data, "test", features.test)
    history = head.fit(train, val)
    return FitResult(head, predict(head, val), predict(head, test), history, head.best_epoch)
