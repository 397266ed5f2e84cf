"""Bags (`bags` group): a set of instances with one label, scored as a whole (a patient's cells, a field's tiles).

- `bags=none` (`NoBags`): today's per-image study.
- `bags=images` (`ImageBags`): each bag is a folder of images, `ROOT/<class>/<bag>/<images>` (one folder per patient
  or smear), or, with `bags.layout=groups`, the images `data.groups_csv` names under one group.
- `bags=tiles` (`TileBags`, in `data.tiles`): each image cut into tiles; a bag is an image or a group of images.

This module holds the `Bags` interface, the per-image and image-folder kinds, and the bags' own labels
(`instances.csv`); the tiling is `data.tiles`.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import pandas as pd

from leukexp.csv_files import unique_rows
from leukexp.data.augment import Augmentation
from leukexp.errors import LeukexpError
from leukexp.registry import Registered

if TYPE_CHECKING:
    from leukexp.data.sources import Catalog, FolderSource

log = logging.getLogger(__name__)

INSTANCES_FILE = "instances.csv"  # optional, in a data root: file, instance_label (a cell's own label)


@dataclass
class BagTable:
    """A fold's bags: one row per instance (`bag`, `bag_index`, `source`, `tile`, `instance_label`) and one per bag
    (`bag`, `label`, `label_index`, `n_instances`). `tile` is the instance's view offset (0 for whole images)."""

    instances: pd.DataFrame
    bags: pd.DataFrame


class Bags(Registered, ABC):
    """How a study's images become bags of instances: the contract of every `bags` config."""

    active: ClassVar[bool] = True

    def prepare(self, source: FolderSource) -> None:
        """Adjust the data source before it scans (`images`: read bag folders)."""

    @abstractmethod
    def table(self, catalog: Catalog, cache_dir: str | Path | None = None) -> BagTable:
        """The bags of a scanned catalog (one line for a bag with two labels or an image too small)."""

    def views(self, augmentation: Augmentation) -> Augmentation:
        """The views instances are embedded through (tiles crop their image first)."""
        return augmentation

    def view_of(self, tile: int, view: int, views: Augmentation) -> int:
        """The embedding view index of view `view` of instance tile `tile` (whole images: the view itself)."""
        return int(view)

    def describe(self) -> str:
        """One line for the console."""
        return f"bags: {self.kind}"

    def spec(self) -> dict[str, Any]:
        """What a saved model needs to make the same instances of new images (its constructor's arguments)."""
        return {}

    def saved(self) -> dict[str, Any]:
        """`spec` with the kind: what `classifier.json` keeps (`Bags.from_saved` reads it back)."""
        return {"kind": self.kind, **self.spec()}

    @classmethod
    def from_saved(cls, saved: object, where: str) -> Bags:
        """The bags a saved model names (one line naming `where` for a damaged entry)."""
        if not isinstance(saved, dict):
            raise LeukexpError(f"{where}: bags is damaged (not a mapping)")
        arguments = {k: v for k, v in saved.items() if k != "kind"}
        try:
            return cls.of_kind(saved.get("kind"), f"{where}: bags")(**arguments)
        except TypeError as error:
            raise LeukexpError(f"{where}: bags is damaged ({error})") from None

    def instances(self, image: np.ndarray, where: str) -> list[tuple[np.ndarray, tuple[int, int, int, int] | None]]:
        """The instances one new image gives, as the study made them: (pixels, box in the image or None)."""
        return [(image, None)]

    @property
    def per_image(self) -> bool:
        """Whether each image is a bag of its own (tiles of one field), rather than a folder of images."""
        return False


class NoBags(Bags, kind="none"):
    """The per-image study: no bags."""

    active = False

    def table(self, catalog: Catalog, cache_dir: str | Path | None = None) -> BagTable:
        """None are made."""
        raise LeukexpError("bags=none: this run scores images one by one; choose bags=images or bags=tiles")


def instance_labels(catalog: Catalog) -> pd.Series:
    """Each image's own label from `instances.csv` in the data root (empty strings where there is none)."""
    path = Path(catalog.root) / INSTANCES_FILE
    if not path.is_file():
        return pd.Series("", index=catalog.frame.index)
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (ValueError, UnicodeDecodeError, OSError) as error:  # not a CSV: binary, truncated quotes, unreadable
        raise LeukexpError(f"{path}: not a readable CSV ({type(error).__name__}); write columns file,instance_label"
                           " or remove the file") from None
    if not {"file", "instance_label"} <= set(table.columns):
        raise LeukexpError(f"{path}: needs columns 'file' and 'instance_label' (found {', '.join(table.columns)})")
    lookup = unique_rows(table, "file", "instance_label", path)
    return catalog.frame["file"].map(lookup).fillna("")


def check_own_labels(table: BagTable, classes: list[str], root: Path) -> None:
    """`head.labels=own` trains on the instances' own labels: one line where the data gives none, or gives labels
    that are not the task's classes."""
    path = Path(root) / INSTANCES_FILE
    given = table.instances["instance_label"]
    if not (given != "").any():
        raise LeukexpError(f"head.labels=own: no instance carries its own label ({path} is missing or names none of"
                           f" these images); add {INSTANCES_FILE} (columns file,instance_label) or use"
                           " head.labels=bag")
    foreign = sorted(set(given[given != ""]) - set(classes))
    if foreign:
        raise LeukexpError(f"head.labels=own: {path} labels instances {', '.join(map(repr, foreign[:5]))}, which are"
                           f" not classes of this task ({', '.join(classes)}); write class names, or use"
                           " head.labels=bag")


def bag_frame(instances: pd.DataFrame, catalog: Catalog) -> pd.DataFrame:
    """One row per bag with its label; a bag whose images carry two labels is one line."""
    frame = catalog.frame
    labels = frame.loc[instances["source"].to_numpy(), ["label", "label_index"]].set_axis(instances.index)
    grouped = pd.concat([instances[["bag"]], labels], axis=1).groupby("bag", sort=False)
    mixed = grouped["label"].nunique()
    if (mixed > 1).any():
        bag = mixed[mixed > 1].index[0]
        found = sorted(grouped.get_group(bag)["label"].unique())
        raise LeukexpError(f"bag {bag!r} holds images of two labels ({', '.join(found)}); a bag has one label: move"
                           " the images or fix data.groups_csv")
    bags = grouped.agg(label=("label", "first"), label_index=("label_index", "first"),
                       n_instances=("label", "size")).reset_index()
    return bags


class ImageBags(Bags, kind="images"):
    """Bags of whole images: bag folders (`layout=folders`) or the groups of `data.groups_csv` (`layout=groups`)."""

    def __init__(self, layout: str = "folders") -> None:
        if layout not in ("folders", "groups"):
            raise LeukexpError(f"bags.layout={layout!r}: expected folders (ROOT/<class>/<bag>/<images>) or groups"
                               " (data.groups_csv names each image's bag)")
        self.layout = layout

    def spec(self) -> dict[str, Any]:
        """The layout."""
        return {"layout": self.layout}

    def prepare(self, source: FolderSource) -> None:
        """Bag folders are read as bags; with `layout=groups` the groups CSV is required."""
        if self.layout == "folders":
            source.bag_folders = True
        elif not source.groups_csv:
            raise LeukexpError("bags.layout=groups: set data.groups_csv (columns file,group) naming each image's bag")

    def table(self, catalog: Catalog, cache_dir: str | Path | None = None) -> BagTable:
        """Every image an instance of its bag; with `layout=groups` a group whose images lie in two class folders is
        one line (two patients sharing an id, or a mislabelled row: merging them would be a guess)."""
        frame = catalog.frame
        grouped = frame.groupby("bag", sort=False)
        folders = grouped["folder"].unique()
        spread = folders[(folders.map(len) > 1) & (grouped["label"].nunique() == 1)]  # two labels: bag_frame says so
        if len(spread):
            bag, where = spread.index[0], sorted(spread.iloc[0])
            raise LeukexpError(f"data.groups_csv: group {bag!r} names images in two class folders ({where[0]}/,"
                               f" {where[1]}/); a bag is one patient: give each folder's patient its own group")
        instances = pd.DataFrame({"bag": frame["bag"].to_numpy(), "source": np.arange(len(frame)), "tile": 0,
                                  "instance_label": instance_labels(catalog).to_numpy()})
        return indexed_table(instances, catalog)


def indexed_table(instances: pd.DataFrame, catalog: Catalog) -> BagTable:
    """Instances ordered by bag, with each bag's index."""
    bags = bag_frame(instances, catalog)
    index = {bag: i for i, bag in enumerate(bags["bag"])}
    instances = instances.assign(bag_index=instances["bag"].map(index)).sort_values(
        ["bag_index", "source", "tile"], kind="stable").reset_index(drop=True)
    return BagTable(instances[["bag", "bag_index", "source", "tile", "instance_label"]], bags)
