"""Tiles (`bags=tiles`): each image cut at its native resolution into `tile` x `tile` pixel tiles every `stride`
pixels, blank and glare tiles dropped, at most `max_tiles` kept; a bag is an image (or, with `bags.per=group`, a
group of images).

A tile is a view of its image: view `1 + t * V + v` is tile `t` of the tiling's grid (row-major, `GRID_COLUMNS`
wide: wider than any image within `data.max_pixels` can be) under view `v` of the run's augmentation (V views), so
its key in the feature store is the image's content hash and its box, and every run that reads it finds it embedded.
The tiles an image keeps are listed once per image content (`read_tile_lists`), for every later run.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np
import pandas as pd

from leukexp.data.augment import Augmentation
from leukexp.data.bags import Bags, BagTable, indexed_table, instance_labels
from leukexp.data.io import decode_image, header_size
from leukexp.errors import LeukexpError
from leukexp.files import atomic_path

if TYPE_CHECKING:
    from leukexp.data.sources import Catalog, FolderSource

log = logging.getLogger(__name__)

# tile t sits at row t // GRID_COLUMNS, column t % GRID_COLUMNS of the grid: 2**27 columns, more than an image of
# data.max_pixels' default (10**8) can have, and small enough that a view index (1 + t * views + v) of any such image
# fits in 64 bits
GRID_COLUMNS = 1 << 27
MAX_CANDIDATES = 1_000_000  # the default of `bags.max_candidates`: grid tiles scored per image
TILE_LIST_FORMAT = 2  # the tile list file's layout (2: tiles with a checksum, GRID_COLUMNS = 2**27)


@dataclass(frozen=True)
class Tiling:
    """A grid of square tiles: size and stride in pixels."""

    size: int
    stride: int

    def box(self, tile: int) -> tuple[int, int, int, int]:
        """(x, y, width, height) of grid tile `tile`."""
        row, column = divmod(int(tile), GRID_COLUMNS)
        return column * self.stride, row * self.stride, self.size, self.size

    def shape(self, height: int, width: int) -> tuple[int, int]:
        """(rows, columns) of the grid inside an image of this size (0 where not one tile fits)."""
        rows = (height - self.size) // self.stride + 1
        columns = (width - self.size) // self.stride + 1
        if rows < 1 or columns < 1:
            return 0, 0
        if columns > GRID_COLUMNS:
            raise LeukexpError(f"an image {width:,} px wide gives {columns:,} tile columns, more than a tile index"
                               f" holds ({GRID_COLUMNS:,}); raise bags.stride, or lower data.max_pixels")
        return rows, columns

    def grid(self, height: int, width: int) -> np.ndarray:
        """Every tile index that fits inside an image of this size (row-major)."""
        rows, columns = self.shape(height, width)
        return (np.arange(rows, dtype=np.int64)[:, None] * GRID_COLUMNS
                + np.arange(columns, dtype=np.int64)[None, :]).ravel()

    def statistics(self, grey: np.ndarray, stop: threading.Event | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Standard deviation and mean of every grid tile's grey levels (row-major, as `grid`): one band of tile
        rows at a time through running sums, so the memory is a few bands of the image, whatever the tile count;
        a set `stop` ends it between bands."""
        height, width = grey.shape
        rows, columns = self.shape(height, width)
        starts = np.arange(columns, dtype=np.int64) * self.stride
        std, mean = np.empty((rows, columns), np.float32), np.empty((rows, columns), np.float32)
        area = float(self.size * self.size)
        for row in range(rows):
            if stop is not None and stop.is_set():
                raise InterruptedError("tiling stopped")
            band = grey[row * self.stride:row * self.stride + self.size].astype(np.float64)
            sums = np.concatenate([[0.0], np.cumsum(band.sum(0))])
            squares = np.concatenate([[0.0], np.cumsum(np.square(band).sum(0))])
            average = (sums[starts + self.size] - sums[starts]) / area
            variance = (squares[starts + self.size] - squares[starts]) / area - average ** 2
            mean[row], std[row] = average, np.sqrt(np.maximum(variance, 0.0))
        return std.ravel(), mean.ravel()


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
        max_candidates: at most this many grid tiles scored in one image (read from its header before decoding):
            a 10,000 px field cut into 2 px tiles would be 25 M.
    """

    def __init__(self, tile: int = 224, stride: int | None = None, max_tiles: int = 128, min_std: float = 6.0,
                 max_mean: float = 245.0, per: str = "image", max_candidates: int = MAX_CANDIDATES) -> None:
        for key, value in (("tile", tile), ("stride", stride if stride is not None else tile),
                           ("max_tiles", max_tiles), ("max_candidates", max_candidates)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise LeukexpError(f"bags.{key}={value!r}: expected a whole number of pixels (tiles) >= 1")
        for key, level in (("min_std", min_std), ("max_mean", max_mean)):
            if isinstance(level, bool) or not isinstance(level, int | float) or not 0 <= level <= 255:
                raise LeukexpError(f"bags.{key}={level!r}: expected a grey level from 0 to 255")
        if per not in ("image", "group"):
            raise LeukexpError(f"bags.per={per!r}: expected image (each image a bag) or group")
        self.tiling = Tiling(int(tile), int(stride if stride is not None else tile))
        self.max_tiles, self.min_std, self.max_mean, self.per = int(max_tiles), float(min_std), float(max_mean), per
        self.max_candidates = int(max_candidates)

    def prepare(self, source: FolderSource) -> None:
        """With `per=group`, bag folders are read as bags."""
        if self.per == "group" and not source.groups_csv:
            source.bag_folders = True

    def fingerprint(self) -> str:
        """Everything that decides which tiles an image gives."""
        spec = [self.tiling.size, self.tiling.stride, self.max_tiles, self.min_std, self.max_mean, TILE_LIST_FORMAT]
        return hashlib.sha1(json.dumps(spec).encode(), usedforsecurity=False).hexdigest()[:10]

    def views(self, augmentation: Augmentation) -> Augmentation:
        """Tiles, then the augmentation's views of each."""
        return TileViews(self.tiling, augmentation)

    def view_of(self, tile: int, view: int, views: Augmentation) -> int:
        """View `view` of tile `tile`, through the tile views (`instance_views` made them)."""
        if not isinstance(views, TileViews):
            raise ValueError("tile views are read through the TileViews that made them")
        return views.view_index(tile, view)

    def describe(self) -> str:
        """The tiling in words."""
        return (f"bags: tiles of {self.tiling.size} px every {self.tiling.stride} px, at most {self.max_tiles} per"
                f" image, blank below grey std {self.min_std:g} or above mean {self.max_mean:g}")

    def spec(self) -> dict[str, Any]:
        """What cuts an image's tiles (saved with a model, so prediction cuts the same ones)."""
        return {"tile": self.tiling.size, "stride": self.tiling.stride, "max_tiles": self.max_tiles,
                "min_std": self.min_std, "max_mean": self.max_mean, "per": self.per,
                "max_candidates": self.max_candidates}

    @property
    def per_image(self) -> bool:
        """`per=image`: each field is a bag."""
        return self.per == "image"

    def instances(self, image: np.ndarray, where: str) -> list[tuple[np.ndarray, tuple[int, int, int, int] | None]]:
        """The kept tiles of a new image, cut as in training, with their boxes."""
        boxes = [self.tiling.box(t) for t in self.kept_tiles(image, where)]
        return [(np.ascontiguousarray(image[y:y + h, x:x + w]), (x, y, w, h)) for x, y, w, h in boxes]

    def check_candidates(self, height: int, width: int, where: str) -> None:
        """One line, before the image is decoded, where its grid has more tiles than `max_candidates`."""
        rows, columns = self.tiling.shape(height, width)
        if rows * columns > self.max_candidates:
            raise LeukexpError(f"{where}: {width:,} x {height:,} px cut into {self.tiling.size} px tiles every"
                               f" {self.tiling.stride} px is {rows * columns:,} candidate tiles, more than"
                               f" bags.max_candidates={self.max_candidates:,}; raise bags.tile or bags.stride (or"
                               " bags.max_candidates)")

    def kept_tiles(self, image: np.ndarray, where: str, stop: threading.Event | None = None) -> np.ndarray:
        """The tiles of one image that are not blank, at most `max_tiles` (most structure first, kept in grid
        order); an image smaller than one tile, or with every tile blank, is one line naming it and the key."""
        height, width = image.shape[:2]
        rows, columns = self.tiling.shape(height, width)
        if not rows:
            raise LeukexpError(f"{where}: {width}x{height} px is smaller than one tile (bags.tile={self.tiling.size});"
                               " lower bags.tile or leave the image out")
        self.check_candidates(height, width, where)
        std, mean = self.tiling.statistics(cv2.cvtColor(image, cv2.COLOR_RGB2GRAY), stop)
        structured, dark = std >= self.min_std, mean <= self.max_mean
        del mean
        kept = np.flatnonzero(structured & dark)  # grid positions, row-major
        if not len(kept):
            raise LeukexpError(f"{where}: every tile is blank ({self._blank_reason(structured, dark)}); leave the"
                               " image out or change that key")
        if len(kept) > self.max_tiles:  # the most structure; among equals, the first in grid order
            scores = std[kept]
            cut = np.partition(scores, len(scores) - self.max_tiles)[len(scores) - self.max_tiles]
            above = scores > cut
            ties = np.flatnonzero(scores == cut)[:self.max_tiles - int(above.sum())]
            kept = np.sort(np.concatenate([kept[above], kept[ties]]))
        return (kept // columns) * GRID_COLUMNS + kept % columns

    def _blank_reason(self, structured: np.ndarray, dark: np.ndarray) -> str:
        """Which rule dropped every tile, named by its key."""
        reasons = []
        if not structured.any():
            reasons.append(f"grey std below bags.min_std={self.min_std:g}")
        if not dark.any():
            reasons.append(f"mean grey above bags.max_mean={self.max_mean:g}")
        return " and ".join(reasons) or (f"each tile is either below bags.min_std={self.min_std:g} or above"
                                         f" bags.max_mean={self.max_mean:g}")

    def table(self, catalog: Catalog, cache_dir: str | Path | None = None) -> BagTable:
        """Every kept tile of every image an instance; tile lists are remembered per image content and tiling in
        one file (`cache_dir/tiles/<fingerprint>.json`), so a later run decodes no image to list them."""
        frame = catalog.frame
        store = Path(cache_dir) / "tiles" / f"{self.fingerprint()}.json" if cache_dir else None
        known = read_tile_lists(store)
        missing = [i for i, key in enumerate(frame["sha1"]) if key not in known or not known[key]]
        if missing:
            known |= self._list_tiles(frame, missing)
            if store is not None:
                try:
                    store.parent.mkdir(parents=True, exist_ok=True)
                    with atomic_path(store) as staging:
                        staging.write_text(tile_list_text(known))
                except OSError as error:  # a read-only cache costs the next run a decode, not this run
                    log.warning("tile lists not kept in %s (%s)", store, error.strerror)
        bags = frame["bag"] if self.per == "group" else frame["file"]
        labels = instance_labels(catalog)
        parts = [pd.DataFrame({"bag": bags.iloc[i], "source": i, "tile": known[key],
                               "instance_label": labels.iloc[i]})
                 for i, key in enumerate(frame["sha1"])]
        return indexed_table(pd.concat(parts, ignore_index=True), catalog)

    def _list_tiles(self, frame: pd.DataFrame, rows: list[int]) -> dict[str, list[int]]:
        """The kept tiles of some images, four at a time: each image's candidate count is checked from its header
        before it is decoded, and a failure or a stop signal ends the others within one band of tiles."""
        stop = threading.Event()

        def listed(i: int) -> tuple[str, list[int]]:
            row = frame.iloc[i]
            data = Path(row["path"]).read_bytes()
            size = header_size(data)
            if size is not None:
                self.check_candidates(size[1], size[0], str(row["file"]))
            return str(row["sha1"]), self.kept_tiles(decode_image(data, row["path"]), str(row["file"]), stop).tolist()

        pool = ThreadPoolExecutor(4)
        futures = [pool.submit(listed, i) for i in rows]
        try:
            return dict(future.result() for future in futures)
        except BaseException:
            stop.set()  # the running ones stop at their next band; those not started never start
            raise
        finally:
            pool.shutdown(wait=True, cancel_futures=True)


def tile_list_text(known: dict[str, list[int]]) -> str:
    """The tile list file: the lists and a checksum of them (an edited or damaged file is made again)."""
    body = json.dumps(known, sort_keys=True)
    check = hashlib.sha256(body.encode()).hexdigest()
    return json.dumps({"format": TILE_LIST_FORMAT, "check": check, "tiles": known}, sort_keys=True)


def read_tile_lists(store: Path | None) -> dict[str, list[int]]:
    """The remembered tile lists (image content hash -> kept tiles): empty where the file is missing, damaged,
    foreign or edited (its checksum disagrees), so the lists are made again."""
    if store is None or not store.is_file():
        return {}
    try:
        saved = json.loads(store.read_text())
        known = saved["tiles"]
        valid = (saved.get("format") == TILE_LIST_FORMAT and isinstance(known, dict) and all(
            isinstance(tiles, list) and all(isinstance(t, int) and t >= 0 for t in tiles) for tiles in known.values()))
        if valid and hashlib.sha256(json.dumps(known, sort_keys=True).encode()).hexdigest() == saved.get("check"):
            return known
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        pass
    log.warning("tile lists %s are damaged or were edited: the images are tiled again", store)
    return {}

