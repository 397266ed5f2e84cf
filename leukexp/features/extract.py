"""Compute (or fetch from the cache) backbone features for a set of samples, and for every split of a study."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from torch.utils.data import DataLoader, Subset

from leukexp.backbones.base import Backbone
from leukexp.console import progress_bar
from leukexp.data.augment import OfflineViews, OnlineAugment
from leukexp.data.dataset import ViewDataset, worker_context
from leukexp.features.cache import FeatureCache

if TYPE_CHECKING:
    from leukexp.data.study import Study


@dataclass
class Features:
    """Backbone features per split; `train` is None when training runs on images (online views)."""

    train: np.ndarray | None
    val: np.ndarray
    test: np.ndarray


def extract_features(
    backbone: Backbone,
    catalog: pd.DataFrame,
    samples: pd.DataFrame,
    augmentation: OfflineViews | OnlineAugment,
    cache: FeatureCache | None,
    batch_size: int = 32,
    num_workers: int = 0,
    description: str = "features",
) -> np.ndarray:
    """Features (len(samples), backbone.num_features) in sample order; only cache misses run the backbone."""
    keys = catalog["sha1"].to_numpy()
    image_keys = [keys[s] for s in samples["source"].to_numpy()]
    view_keys = [augmentation.view_fingerprint(int(v)) for v in samples["view"].to_numpy()]
    features = np.zeros((len(samples), backbone.num_features), np.float32)
    missing = []
    for i, (image_key, view_key) in enumerate(zip(image_keys, view_keys, strict=True)):
        cached = cache.get(image_key, view_key) if cache is not None else None
        if cached is None or cached.shape != (backbone.num_features,):
            missing.append(i)
        else:
            features[i] = cached
    if not missing:
        return features
    dataset = Subset(ViewDataset(catalog, samples, augmentation, backbone.preprocess), missing)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                        multiprocessing_context=worker_context(num_workers))
    with progress_bar() as progress:
        bar = progress.add_task(f"{description} ({backbone.label})", total=len(missing))
        done = 0
        for batch in loader:
            output = backbone.embed(batch["image"]).numpy()
            for row, value in zip(batch["index"].tolist(), output, strict=True):
                features[row] = value
                if cache is not None:
                    cache.put(image_keys[row], view_keys[row], value)
            done += len(output)
            progress.update(bar, completed=done)
    return features


def sample_features(backbone: Backbone, catalog: pd.DataFrame, samples: pd.DataFrame,
                    augmentation: OfflineViews | OnlineAugment, caches: list[FeatureCache | None], batch_size: int = 32,
                    num_workers: int = 0, description: str = "features") -> np.ndarray:
    """Features of samples for every part of the backbone (each with its own cache, `caches[i]`), concatenated."""
    blocks = [extract_features(part, catalog, samples, augmentation, cache, batch_size, num_workers, description)
              for part, cache in zip(backbone.parts(), caches, strict=True)]
    return np.concatenate(blocks, axis=1)


def part_caches(backbone: Backbone, cache_dir: str | Path | None) -> list[FeatureCache | None]:
    """One cache per part of the backbone, keyed by that part's fingerprint (None everywhere without a cache)."""
    return [FeatureCache(cache_dir, part.fingerprint) if cache_dir is not None else None for part in backbone.parts()]


def study_features(study: Study, backbone: Backbone, cache_dir: str | Path | None, batch_size: int = 32,
                   num_workers: int = 0) -> tuple[Features, str]:
    """Features of every split of a study (train left out with online views: it sees new views every epoch),
    and a line saying how the cache did."""
    frame, samples = study.catalog.frame, study.samples
    caches = part_caches(backbone, cache_dir)

    def run(part: pd.DataFrame, name: str) -> np.ndarray:
        return sample_features(backbone, frame, part, study.augmentation, caches, batch_size, num_workers,
                               f"{name} features")

    train = None if study.augmentation.online else run(samples.train, "train")
    features = Features(train=train, val=run(samples.val, "val"), test=run(samples.test, "test"))
    note = "; ".join(f"feature cache: {c.hits} hits, {c.misses} misses ({c.folder})" for c in caches if c)
    return features, note
