"""Test-time augmentation: each test image scored once, from the mean class probabilities of its views.

The views' features go through the feature cache like any other (the study's `paper` views of a test image
are computed once), the head scores every view, and the probabilities are averaged per source image; metrics
and `predictions.csv` are then per source image.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from leukexp.data.augment import named_views
from leukexp.evaluation.calibration import apply_temperature
from leukexp.features.extract import Setting, sample_features

if TYPE_CHECKING:
    from leukexp.backbones.base import Backbone
    from leukexp.data.study import Study
    from leukexp.features.cache import FeatureCache
    from leukexp.heads.base import Head


def view_samples(test: pd.DataFrame, n_views: int) -> pd.DataFrame:
    """Every view of every test source image, source-major (the views of one image are consecutive)."""
    originals = test.drop_duplicates("source").reset_index(drop=True)
    rows = originals.loc[originals.index.repeat(n_views)].reset_index(drop=True)
    rows["view"] = np.tile(np.arange(n_views), len(originals))
    return rows


def view_mean(view_probs: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """(sources, views, classes) probabilities -> (sources, classes): each view's scaled by `temperature` (1: as
    given), then their mean, as `leukexp-predict --tta` scores an image."""
    sources, views, classes = view_probs.shape
    scaled = apply_temperature(view_probs.reshape(-1, classes), temperature)
    return scaled.reshape(sources, views, classes).mean(axis=1)


def score_with_views(study: Study, backbone: Backbone, head: Head, name: str, seed: int,
                     caches: list[FeatureCache | None], batch_size: Setting = "auto",
                     num_workers: Setting = "auto") -> tuple[Study, np.ndarray]:
    """The study with one test sample per source image, and the head's probabilities of every view of those images
    (sources, views, classes): `view_mean` scores each image from them."""
    views = named_views(name, seed)
    samples = view_samples(study.samples.test, views.n_views)
    features = sample_features(backbone, study.catalog.frame, samples, views, caches, batch_size, num_workers,
                               f"test views ({name})", study.stain)
    probs = head.predict_proba(features).reshape(-1, views.n_views, len(study.classes))
    originals = samples[samples["view"] == 0].reset_index(drop=True)
    return dataclasses.replace(study, samples=dataclasses.replace(study.samples, test=originals)), probs
