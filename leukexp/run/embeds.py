"""What a fold run embeds, derived once from its plan: training views, validation and test originals, test-time
views and the external set. A run's steps and `leukexp-extract` both read this list, so they cannot disagree."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from leukexp.data.augment import Augmentation, named_views
from leukexp.features.embed import Features, ViewPass, cache_note, part_caches, sample_features
from leukexp.inference.tta import view_samples

if TYPE_CHECKING:
    from leukexp.backbones.base import Backbone
    from leukexp.config.plan import FeatureSettings, RunPlan
    from leukexp.data.fold_data import FoldData
    from leukexp.data.sources import Catalog
    from leukexp.data.stain import StainNormalizer
    from leukexp.features.cache import FeatureCache

# what a set of embeddings is for (the progress bar's words, and how steps find their set)
SPLITS = "features"
TEST_VIEWS = "test views"
EXTERNAL_IMAGES = "external images"


@dataclass(frozen=True)
class Embeds:
    """One set of (source, view) rows a run embeds: from one catalog, through one set of views.

    Attributes:
        purpose: `SPLITS`, `TEST_VIEWS` or `EXTERNAL_IMAGES`.
        catalog: the images (`sha1`, `path`, ...); `samples.source` indexes it.
        samples: the rows, in the order their features are returned (`source`, `view`, `label_index`, ...).
        views: the augmentation that makes view `v` of an image.
        stain: the fold's stain normalizer (applied after decoding; part of the cache key).
    """

    purpose: str
    catalog: pd.DataFrame
    samples: pd.DataFrame
    views: Augmentation
    stain: StainNormalizer

    def features(self, backbone: Backbone, caches: list[FeatureCache | None], settings: FeatureSettings,
                 description: str | None = None) -> np.ndarray:
        """The rows' features, from the store where present (every part of the backbone, concatenated)."""
        how = ViewPass(self.views, settings.batch_size, settings.num_workers, self.stain, description or self.purpose,
                       settings.views)
        return sample_features(backbone, self.catalog, self.samples, caches, how)


def scoring_views(plan: RunPlan) -> Augmentation:
    """The views a test or external image is scored from: those of `evaluation.tta`, else the original alone."""
    return named_views(plan.evaluation.tta, plan.seed, "evaluation.tta")


def embedded_splits(fold_data: FoldData) -> list[pd.DataFrame]:
    """The splits whose samples are embedded, in order: train (left out with online views, which see new views
    every epoch), validation, test."""
    samples = fold_data.samples
    return ([] if fold_data.augmentation.online else [samples.train]) + [samples.val, samples.test]


def split_features(fold_data: FoldData, every: np.ndarray) -> Features:
    """The `SPLITS` set's features cut back into the fold's splits (`train` None with online views)."""
    *train, val, test = np.split(every, np.cumsum([len(part) for part in embedded_splits(fold_data)])[:-1])
    return Features(train=train[0] if train else None, val=val, test=test)


def fold_embeds(plan: RunPlan, fold_data: FoldData, external: Catalog | None = None) -> list[Embeds]:
    """Every set of embeddings the fold's run asks for, in the order it asks."""
    samples, frame, stain = fold_data.samples, fold_data.catalog.frame, fold_data.stain
    embeds = [Embeds(SPLITS, frame, pd.concat(embedded_splits(fold_data), ignore_index=True),
                     fold_data.instance_views, stain)]
    views = scoring_views(plan)
    if plan.evaluation.tta != "none":
        embeds.append(Embeds(TEST_VIEWS, frame, view_samples(samples.test, views.n_views), views, stain))
    if external is not None:
        images = external.frame
        rows = pd.DataFrame({"source": np.repeat(np.arange(len(images)), views.n_views),
                             "view": np.tile(np.arange(views.n_views), len(images)),
                             "label_index": np.repeat(images["label_index"].to_numpy(), views.n_views)})
        embeds.append(Embeds(EXTERNAL_IMAGES, images, rows, views, stain))
    return embeds


def find(embeds: list[Embeds], purpose: str) -> Embeds:
    """The set for `purpose` (a step asks only for one the plan derived)."""
    return next(item for item in embeds if item.purpose == purpose)


def caches_for(plan: RunPlan, backbone: Backbone, stain: StainNormalizer) -> list[FeatureCache | None]:
    """The feature store folders of the backbone's parts for this stain target (None without a cache)."""
    return part_caches(backbone, plan.features.cache_dir, stain, plan.features.storage)


__all__ = ["EXTERNAL_IMAGES", "SPLITS", "TEST_VIEWS", "Embeds", "cache_note", "caches_for", "find", "fold_embeds",
           "scoring_views"]
