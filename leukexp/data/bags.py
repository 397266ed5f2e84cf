"""Bags (`bags` group): a set of instances with one label, scored as a whole (a patient's cells, a field's tiles).

- `bags=none` (`NoBags`): today's per-image study.
- `bags=images` (`ImageBags`): each bag is a folder of images, `ROOT/<class>/<bag>/<images>` (one folder per patient
  or smear), or, with `bags.layout=groups`, the images `data.groups_csv` names under one group.
- `bags=tiles` (`TileBags`): each image is cut at its native resolution into `tile` x `tile` pixel tiles every
  `stride` pixels; a bag is an image (or, with `bags.per=group`, a group of images). A tile is dropped as blank when
  its grey levels barely vary (standard deviation below `min_std`) or it is mostly glare (mean grey above
  `max_mean`); of the rest at most `max_tiles` are kept, those with the most structure, in grid order.

A tile is a view of its image: view `1 + t * V + v` is tile `t` of the tiling's grid (row-major, `GRID_COLUMNS`
wide) under view `v` of the run's augmentation (V views), so its key in the feature store is the image's content
hash and its box, and every run that reads it finds it embedded.
"""

from __future__ import annotations

import hashlib
import json
import logging
from abc import ABC, abstractmethod
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import cv2
import numpy as np
import pandas as pd

from leukexp.data.augment import Augmentation
from leukexp.data.io import read_image
from leukexp.errors import LeukexpError
from leukexp.files import atomic_path
from leukexp.registry import Registered

if TYPE_CHECKING:
    from leukexp.data.sources import Catalog, FolderSource

log = logging.getLogger(__name__)

GRID_COLUMNS = 4096  # tile t sits at row t // GRID_COLUMNS, column t % GRID_COLUMNS of the grid
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


class NoBags(Bags, kind="none"):
    """The per-image study: no bags."""

    active = False

    def table(self, catalog: Catalog, cache_dir: str | Path | None = None) -> BagTable:
        """None are made."""
        raise LeukexpError("bags=none: this run scores images one by one; choose bags=images or bags=tiles")


def _instance_labels(catalog: Catalog) -> pd.Series:
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
    lookup = dict(zip(table["file"], table["instance_label"], strict=True))
    return catalog.frame["file"].map(lookup).fillna("")


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

    def prepare(self, source: FolderSource) -> None:
        """Bag folders are read as bags; with `layout=groups` the groups CSV is required."""
        if self.layout == "folders":
            source.bag_folders = True
        elif not source.groups_csv:
            raise LeukexpError("bags.layout=groups: set data.groups_csv (columns file,group) naming each image's bag")

    def table(self, catalog: Catalog, cache_dir: str | Path | None = None) -> BagTable:
        """Every image an instance of its bag."""
        frame = catalog.frame
        instances = pd.DataFrame({"bag": frame["bag"].to_numpy(), "source": np.arange(len(frame)), "tile": 0,
                                  "instance_label": _instance_labels(catalog).to_numpy()})
        return _indexed(instances, catalog)


def _indexed(instances: pd.DataFrame, catalog: Catalog) -> BagTable:
    """Instances ordered by bag, with each bag's index."""
    bags = bag_frame(instances, catalog)
    index = {bag: i for i, bag in enumerate(bags["bag"])}
    instances = instances.assign(bag_index=instances["bag"].map(index)).sort_values(
        ["bag_index", "source", "tile"], kind="stable").reset_index(drop=True)
    return BagTable(instances[["bag", "bag_index", "source", "tile", "instance_label"]], bags)


@dataclass(frozen=True)
class Tiling:
    """A grid of square tiles: size and stride in pixels."""

    size: int
    stride: int

    def box(self, tile: int) -> tuple[int, int, int, int]:
        """(x, y, width, height) of grid tile `tile`."""
        row, column = divmod(int(tile), GRID_COLUMNS)
        return column * self.stride, row * self.stride, self.size, self.size

    def grid(self, height: int, width: int) -> np.ndarray:
        """Every tile index that fits inside an image of this size (row-major)."""
        rows = (height - self.size) // self.stride + 1
        columns = (width - self.size) // self.stride + 1
        if rows < 1 or columns < 1:
            return np.zeros(0, int)
        return (np.arange(rows)[:, None] * GRID_COLUMNS + np.arange(columns)[None, :]).ravel()


class TileViews(Augmentation):
    """The views of tiles: view `1 + t * V + v` is tile `t` cropped, then view `v` of the augmentation applied."""

    def __init__(self, tiling: Tiling, augmentation: Augmentation) -> None:
        self.tiling = tiling
        self.augmentation = augmentation
        self.name = f"tiles {tiling.size}/{tiling.stride} x {augmentation.name}"

    @property
    def n_views(self) -> int:
        """Views of one tile."""
        return self.augmentation.n_views

    def fingerprint(self) -> str:
        """The tiling and the augmentation's fingerprint."""
        return f"tile{self.tiling.size}s{self.tiling.stride}-{self.augmentation.fingerprint()}"

    def view_index(self, tile: int, view: int) -> int:
        """The index of view `view` of tile `tile`."""
        return 1 + int(tile) * self.n_views + int(view)

    def split(self, index: int) -> tuple[int, int]:
        """(tile, view) of a view index."""
        return divmod(int(index) - 1, self.n_views)

    def view_fingerprint(self, index: int) -> str:
        """The tile's box and the augmentation's view key: `tile@x,y+WxH|original`."""
        tile, view = self.split(index)
        x, y, width, height = self.tiling.box(tile)
        return f"tile@{x},{y}+{width}x{height}|{self.augmentation.view_fingerprint(view)}"

    def apply(self, image: np.ndarray, index: int, image_key: str) -> np.ndarray:
        """The tile's pixels at native resolution, then the augmentation's view of them."""
        tile, view = self.split(index)
        x, y, width, height = self.tiling.box(tile)
        crop = np.ascontiguousarray(image[y:y + height, x:x + width])
        return crop if view == 0 else self.augmentation.apply(crop, view, f"{image_key}@{x},{y}")


class TileBags(Bags, kind="tiles"):
    """Bags of tiles cut from large images at their native resolution.

    Args:
        tile: tile side in pixels.
        stride: step between tiles in pixels (`tile`: no overlap).
        max_tiles: at most this many tiles per image (those with the most structure).
        min_std: a tile whose grey levels vary less than this (0-255) is blank and dropped.
        max_mean: a tile whose mean grey is above this (0-255) is glare or empty glass and dropped.
        per: `image` (each image a bag) or `group` (the images of a bag folder or group together).
    """

    def __init__(self, tile: int = 224, stride: int | None = None, max_tiles: int = 128, min_std: float = 6.0,
                 max_mean: float = 245.0, per: str = "image") -> None:
        for key, value in (("tile", tile), ("stride", stride if stride is not None else tile),
                           ("max_tiles", max_tiles)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise LeukexpError(f"bags.{key}={value!r}: expected a whole number of pixels (tiles) >= 1")
        if per not in ("image", "group"):
            raise LeukexpError(f"bags.per={per!r}: expected image (each image a bag) or group")
        self.tiling = Tiling(int(tile), int(stride if stride is not None else tile))
        self.max_tiles, self.min_std, self.max_mean, self.per = int(max_tiles), float(min_std), float(max_mean), per

    def prepare(self, source: FolderSource) -> None:
        """With `per=group`, bag folders are read as bags."""
        if self.per == "group" and not source.groups_csv:
            source.bag_folders = True

    def fingerprint(self) -> str:
        """Everything that decides which tiles an image gives."""
        spec = [self.tiling.size, self.tiling.stride, self.max_tiles, self.min_std, self.max_mean]
        return hashlib.sha1(json.dumps(spec).encode(), usedforsecurity=False).hexdigest()[:10]

    def views(self, augmentation: Augmentation) -> Augmentation:
        """Tiles, then the augmentation's views of each."""
        return TileViews(self.tiling, augmentation)

    def view_of(self, tile: int, view: int, views: Augmentation) -> int:
        """View `view` of tile `tile`, through the tile views."""
        return views.view_index(tile, view)  # type: ignore[attr-defined]

    def describe(self) -> str:
        """The tiling in words."""
        return (f"bags: tiles of {self.tiling.size} px every {self.tiling.stride} px, at most {self.max_tiles} per"
                f" image, blank below grey std {self.min_std:g} or above mean {self.max_mean:g}")

    def kept_tiles(self, image: np.ndarray, where: str) -> np.ndarray:
        """The tiles of one image that are not blank, at most `max_tiles` (most structure first, kept in grid
        order); an image smaller than one tile is one line naming it."""
        height, width = image.shape[:2]
        grid = self.tiling.grid(height, width)
        if not len(grid):
            raise LeukexpError(f"{where}: {width}x{height} px is smaller than one tile (bags.tile={self.tiling.size});"
                               " lower bags.tile or leave the image out")
        grey = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY).astype(np.float32)
        stats = []
        for tile in grid:
            x, y, size, _ = self.tiling.box(tile)
            patch = grey[y:y + size, x:x + size]
            stats.append((float(patch.std()), float(patch.mean())))
        std, mean = np.array(stats).T
        keep = grid[(std >= self.min_std) & (mean <= self.max_mean)]
        if len(keep) > self.max_tiles:
            order = np.argsort(-std[np.isin(grid, keep)], kind="stable")[:self.max_tiles]
            keep = np.sort(keep[order])
        return keep

    def table(self, catalog: Catalog, cache_dir: str | Path | None = None) -> BagTable:
        """Every kept tile of every image an instance; tile lists are remembered per image content and tiling in
        one file (`cache_dir/tiles/<fingerprint>.json`), so a later run decodes no image to list them."""
        frame = catalog.frame
        store = Path(cache_dir) / "tiles" / f"{self.fingerprint()}.json" if cache_dir else None
        known: dict[str, list[int]] = {}
        if store is not None and store.is_file():
            try:
                known = json.loads(store.read_text())
            except (OSError, ValueError):
                known = {}
            if not isinstance(known, dict) or not all(
                    isinstance(tiles, list) and all(isinstance(t, int) and t >= 0 for t in tiles)
                    for tiles in known.values()):
                known = {}  # a damaged or foreign file: the tile lists are made again (and the file rewritten)
        missing = [i for i, key in enumerate(frame["sha1"]) if key not in known]
        if missing:
            def listed(i: int) -> tuple[str, list[int]]:
                row = frame.iloc[i]
                return str(row["sha1"]), self.kept_tiles(read_image(row["path"]), str(row["file"])).tolist()

            with ThreadPoolExecutor(4) as pool:
                known |= dict(pool.map(listed, missing))
            if store is not None:
                try:
                    store.parent.mkdir(parents=True, exist_ok=True)
                    with atomic_path(store) as staging:
                        staging.write_text(json.dumps(known))
                except OSError as error:  # a read-only cache costs the next run a decode, not this run
                    log.warning("tile lists not kept in %s (%s)", store, error.strerror)
        empty = [str(frame.iloc[i]["file"]) for i, key in enumerate(frame["sha1"]) if not known[key]]
        if empty:
            raise LeukexpError(f"{empty[0]}: every tile is blank (grey std below bags.min_std={self.min_std:g});"
                               " lower bags.min_std or leave the image out")
        bags = frame["bag"] if self.per == "group" else frame["file"]
        labels = _instance_labels(catalog)
        parts = [pd.DataFrame({"bag": bags.iloc[i], "source": i, "tile": known[key],
                               "instance_label": labels.iloc[i]})
                 for i, key in enumerate(frame["sha1"])]
        return _indexed(pd.concat(parts, ignore_index=True), catalog)


def check_bag_config(config: dict[str, Any]) -> None:
    """Cheap checks of a `bags` config before any work (its class builds it: the constructor checks its keys)."""
    from leukexp.config.compose import build

    build(dict(config), "bags")
