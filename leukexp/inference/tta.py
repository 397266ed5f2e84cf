"""Test-time augmentation: each test image scored once, from the mean class probabilities of its views.

The run's step `run.steps.ScoreTestViews` embeds them; the views' features go through the feature cache like any
other (the study's `paper` views of a test image
are computed once), the head scores every view, and the probabilities are averaged per source image; metrics
and `predictions.csv` are then per source image.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from leukexp.evaluation.calibration import apply_temperature


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
