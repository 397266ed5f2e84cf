"""Torch datasets over (source image, view) samples: preprocessed images or cached features."""

from __future__ import annotations

import multiprocessing

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from leukexp.backbones.base import ImagePreprocess
from leukexp.data.augment import OfflineViews, OnlineAugment
from leukexp.data.io import read_image


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
                 preprocess: ImagePreprocess, random: bool = False) -> None:
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


def worker_context(num_workers: int) -> str | None:
    """`fork` for DataLoader workers where the platform has it.

    Inside a joblib (loky) job the default start method cannot start DataLoader workers (a pickle error);
    forking the job's process works there and everywhere else on Linux.
    """
    if num_workers > 0 and "fork" in multiprocessing.get_all_start_methods():
        return "fork"
    return None


def identity_collate(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Collate for datasets whose `__getitems__` already returns a whole batch."""
    return batch


class FeatureDataset(Dataset):
    """Precomputed features with labels; fetched a whole batch at a time (`collate_fn=identity_collate`)."""

    def __init__(self, features: np.ndarray, labels: np.ndarray) -> None:
        self.features = torch.as_tensor(features, dtype=torch.float32)
        self.labels = torch.tensor(np.asarray(labels), dtype=torch.long)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor | int]:
        return {"features": self.features[index], "label": self.labels[index], "index": index}

    def __getitems__(self, indices: list[int]) -> dict[str, torch.Tensor]:
        """One batch by fancy indexing instead of collating single items."""
        index = torch.as_tensor(indices, dtype=torch.long)
        return {"features": self.features[index], "label": self.labels[index], "index": index}
