"""Torch datasets over (source image, view) samples: preprocessed images or cached features."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from leukexp.data.augment import OfflineViews, OnlineAugment
from leukexp.data.io import read_image
from leukexp.models.backbones import Preprocess


class ViewDataset(Dataset):
    """Samples `(source, view, label_index)` of a catalog as backbone-ready image tensors.

    Args:
        catalog: the catalog frame (`path`, `sha1` columns).
        samples: rows with `source`, `view`, `label_index`.
        augmentation: the offline views or the online transform.
        preprocess: the backbone's resize and normalization.
        random: draw a fresh online view per item (training with `augmentation=online`).
    """

    def __init__(self, catalog: pd.DataFrame, samples: pd.DataFrame, augmentation: OfflineViews | OnlineAugment,
                 preprocess: Preprocess, random: bool = False) -> None:
        self.paths = catalog["path"].tolist()
        self.keys = catalog["sha1"].tolist()
        self.sources = samples["source"].to_numpy()
        self.views = samples["view"].to_numpy()
        self.labels = samples["label_index"].to_numpy()
        self.augmentation = augmentation
        self.preprocess = preprocess
        self.random = random
        self._last: tuple[int, np.ndarray] | None = None

    def __len__(self) -> int:
        return len(self.sources)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor | int]:
        source, view = int(self.sources[index]), int(self.views[index])
        if self._last is None or self._last[0] != source:
            self._last = (source, read_image(self.paths[source]))
        image = self._last[1]
        if self.random or view > 0:
            image = self.augmentation.apply(image, view, self.keys[source])
        return {"image": self.preprocess(image), "label": int(self.labels[index]), "index": index}


class FeatureDataset(Dataset):
    """Precomputed features with labels."""

    def __init__(self, features: np.ndarray, labels: np.ndarray) -> None:
        self.features = torch.as_tensor(features, dtype=torch.float32)
        self.labels = torch.tensor(np.asarray(labels), dtype=torch.long)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor | int]:
        return {"features": self.features[index], "label": self.labels[index], "index": index}
