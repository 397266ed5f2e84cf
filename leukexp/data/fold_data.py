"""The data side of one fold: catalog, fold split, manifest, samples and stain normalizer, built from the run plan."""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from leukexp.config.plan import RunPlan
from leukexp.data.augment import Augmentation
from leukexp.data.protocol import Protocol, Samples
from leukexp.data.sources import Catalog, FolderSource
from leukexp.data.splits import FoldSpec, assign_splits, manifest, split_summary
from leukexp.data.stain import NoStain, StainNormalizer
from leukexp.data.tasks import Task
from leukexp.files import atomic_path

log = logging.getLogger(__name__)


@dataclass
class FoldData:
    """Everything about one fold's data that a model needs: images, labels, split, samples and stain."""

    task: Task
    catalog: Catalog
    fold: FoldSpec
    protocol: Protocol
    augmentation: Augmentation
    split: pd.Series
    samples: Samples
    stain: StainNormalizer = dataclasses.field(default_factory=NoStain)

    @property
    def classes(self) -> list[str]:
        """Class names in label-index order."""
        return self.catalog.classes

    def manifest(self) -> pd.DataFrame:
        """One row per source image: file, label, group, split, content hash."""
        return manifest(self.catalog.frame, self.split)

    def data_fingerprint(self) -> str:
        """Hash of the images, labels and groups (not the split): 'the same data' for resume and CV groups."""
        table = self.catalog.frame[["file", "label", "group", "sha1"]].sort_values("file")
        return hashlib.sha1(table.to_csv(index=False).encode(), usedforsecurity=False).hexdigest()[:16]

    def split_summary(self) -> pd.DataFrame:
        """Source images per class and split."""
        return split_summary(self.catalog.frame, self.split, self.classes)

    def write_manifest(self, path: Path) -> Path:
        """Write the split manifest as CSV (atomically) and return its path."""
        with atomic_path(path) as staging:
            self.manifest().to_csv(staging, index=False)
        return path


def build_fold_data(plan: RunPlan) -> FoldData:
    """Instantiate the plan's data, task, fold, protocol, augmentation and stain, build the split and fit the stain
    normalizer to the fold's training images (or its reference)."""
    task: Task = plan.task.build(_convert_="all")
    source: FolderSource = plan.data.build(_convert_="all")
    fold: FoldSpec = plan.fold.build()
    protocol: Protocol = plan.protocol.build()
    augmentation = plan.augmentation.build(_convert_="all")
    catalog = source.scan(task)
    split = assign_splits(catalog.frame, fold)
    samples = protocol.build(catalog.frame, split, augmentation.n_views, len(catalog.classes))
    stain: StainNormalizer = plan.stain.build()
    train = catalog.frame.iloc[samples.train["source"].unique()]
    stain.fit_to_study(train["path"].tolist(), train["sha1"].tolist())
    return FoldData(task, catalog, fold, protocol, augmentation, split, samples, stain)
