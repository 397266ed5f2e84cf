"""The data side of one fold: catalog, fold split, manifest, samples and stain normalizer, built from the run plan."""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from leukexp.config.plan import RunPlan
from leukexp.csv_files import write_csv
from leukexp.data.augment import Augmentation
from leukexp.data.bags import Bags, BagTable
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
    bags: BagTable | None = None  # with `bags=images|tiles`: the bags; samples are then instance rows with a `unit`
    views: Augmentation | None = None  # what instances are embedded through (tiles crop first); None: augmentation
    bagging: Bags | None = None  # how the bags were made (a saved model makes a new image's instances the same way)

    @property
    def instance_views(self) -> Augmentation:
        """The views samples are embedded through."""
        return self.views if self.views is not None else self.augmentation

    def part(self, name: str) -> pd.DataFrame:
        """The samples of split `name` (`train`, `val`, `test`)."""
        return getattr(self.samples, name)

    def labels(self, name: str) -> np.ndarray:
        """Class indices of a split's samples (with bags: of its bags, one per unit)."""
        part = self.part(name)
        if self.bags is None:
            return part["label_index"].to_numpy()
        return part.drop_duplicates("unit")["label_index"].to_numpy()

    def offsets(self, name: str) -> np.ndarray | None:
        """With bags: where each unit's instance rows start (and, last, the number of rows); else None."""
        if self.bags is None:
            return None
        sizes = self.part(name).groupby("unit", sort=True).size().to_numpy()
        return np.concatenate([[0], np.cumsum(sizes)])

    def bag_offsets(self, name: str) -> np.ndarray:
        """`offsets` of a bag study (a step for bags reached without them is a bug)."""
        offsets = self.offsets(name)
        if offsets is None:
            raise ValueError("bag offsets asked of a study without bags")
        return offsets

    def instance_labels(self, name: str) -> np.ndarray | None:
        """With bags: each instance's own class index (-1 where the data gives none); else None."""
        return None if self.bags is None else self.part(name)["instance_index"].to_numpy()

    def instance_types(self, name: str) -> np.ndarray | None:
        """With bags: each instance's own label as written (a class or a cell type; "" where none); else None."""
        return None if self.bags is None else self.part(name)["instance_label"].to_numpy(dtype=object)

    def bag_names(self, name: str) -> np.ndarray:
        """The bag of each unit of a split."""
        if self.bags is None:
            raise ValueError("bag names asked of a study without bags")
        part = self.part(name).drop_duplicates("unit")
        return self.bags.bags["bag"].to_numpy()[part["bag_index"].to_numpy()]

    @property
    def classes(self) -> list[str]:
        """Class names in label-index order."""
        return self.catalog.classes

    def manifest(self) -> pd.DataFrame:
        """One row per source image: file, label, group, split, content hash (and its bag, with bags)."""
        table = manifest(self.catalog.frame, self.split)
        if self.bags is not None:
            table.insert(3, "bag", self.catalog.frame["bag"].to_numpy())
            tiles = self.bags.instances.groupby("source").size()
            table.insert(4, "instances", tiles.reindex(range(len(table)), fill_value=0).to_numpy())
        return table

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
            write_csv(self.manifest(), staging)
        return path


def build_fold_data(plan: RunPlan) -> FoldData:
    """Instantiate the plan's data, task, fold, protocol, augmentation, stain and bags, build the split (over bags,
    with bags) and fit the stain normalizer to the fold's training images (or its reference)."""
    task: Task = plan.task.build(_convert_="all")
    source: FolderSource = plan.data.build(_convert_="all")
    fold: FoldSpec = plan.fold.build()
    protocol: Protocol = plan.protocol.build()
    augmentation = plan.augmentation.build(_convert_="all")
    bagging: Bags = plan.bags.build()
    bagging.prepare(source)
    catalog = source.scan(task)
    table, views = None, None
    if bagging.active:
        table = bagging.table(catalog, plan.paths.cache_dir)
        views = bagging.views(augmentation)
        split, samples = bag_split(catalog, table, fold, augmentation, bagging, views)
    else:
        split = assign_splits(catalog.frame, fold)
        samples = protocol.build(catalog.frame, split, augmentation.n_views, len(catalog.classes))
    stain: StainNormalizer = plan.stain.build()
    train = catalog.frame.iloc[samples.train["source"].unique()]
    stain.fit_to_study(train["path"].tolist(), train["sha1"].tolist())
    return FoldData(task, catalog, fold, protocol, augmentation, split, samples, stain, table, views,
                    bagging if bagging.active else None)


def bag_split(catalog: Catalog, table: BagTable, fold: FoldSpec, augmentation: Augmentation, bagging: Bags,
              views: Augmentation) -> tuple[pd.Series, Samples]:
    """Folds drawn over bags (stratified by bag label; a bag, and a group of bags, never straddles), then the
    instance rows of each split: training bags once per view of the augmentation (a unit per bag and view),
    validation and test bags as they are (a unit per bag)."""
    bags = table.bags
    groups = catalog.frame.groupby("bag", sort=False)["group"].first()
    per_bag = assign_splits(pd.DataFrame({"label": bags["label"], "group": bags["bag"].map(groups)}), fold, "bag")
    split = pd.Series(catalog.frame["bag"].map(dict(zip(bags["bag"], per_bag, strict=True))).to_numpy(),
                      index=catalog.frame.index)
    class_index = {label: i for i, label in enumerate(catalog.classes)}
    instances = table.instances.assign(
        label_index=bags["label_index"].to_numpy()[table.instances["bag_index"].to_numpy()],
        instance_index=table.instances["instance_label"].map(class_index).fillna(-1).astype(int))
    parts = {}
    for name in ("train", "val", "test"):
        chosen = instances[instances["bag_index"].map(dict(enumerate(per_bag))) == name]
        n_views = augmentation.n_views if name == "train" else 1
        rows = [chosen.assign(view=[bagging.view_of(t, v, views) for t in chosen["tile"]], bag_view=v)
                for v in range(n_views)]
        frame = pd.concat(rows, ignore_index=True).sort_values(["bag_index", "bag_view", "source", "tile"],
                                                               kind="stable")
        frame["unit"] = frame.groupby(["bag_index", "bag_view"], sort=False).ngroup()
        parts[name] = frame.drop(columns="bag_view").reset_index(drop=True)
    return split, Samples(parts["train"], parts["val"], parts["test"])
