"""Torch datasets over (source image, view) samples: preprocessed images or cached features."""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable, Iterator

import cv2
import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from leukexp.backbones.base import ImagePreprocess
from leukexp.data.augment import Augmentation
from leukexp.data.io import read_image
from leukexp.data.tensor_views import TensorViews

# an image-to-image step applied right after decoding (stain normalization)
ImageStep = Callable[[np.ndarray], np.ndarray]


def read_normalized(path: str, stain: ImageStep | None) -> np.ndarray:
    """An image decoded, then (with `stain`) normalized: what views and the backbone start from."""
    image = read_image(path)
    return image if stain is None else stain(image)


class ViewDataset(Dataset):
    """Samples `(source, view, label_index)` of a catalog as backbone-ready image tensors.

    Args:
        catalog: the catalog frame (`path`, `sha1` columns).
        samples: rows with `source`, `view`, `label_index`.
        augmentation: the offline views or the online transform.
        preprocess: the backbone's resize and normalization.
        random: draw a fresh online view per item (training with `augmentation=online`).
        stain: the stain normalization applied to each image before its views (None: images as they are).
    """

    def __init__(self, catalog: pd.DataFrame, samples: pd.DataFrame, augmentation: Augmentation,
                 preprocess: ImagePreprocess, random: bool = False, stain: ImageStep | None = None) -> None:
        self.paths = catalog["path"].tolist()
        self.keys = catalog["sha1"].tolist()
        self.sources = samples["source"].to_numpy()
        self.views = samples["view"].to_numpy()
        self.labels = samples["label_index"].to_numpy()
        self.augmentation = augmentation
        self.preprocess = preprocess
        self.random = random
        self.stain = stain
        self._last: tuple[int, np.ndarray] | None = None

    def __len__(self) -> int:
        return len(self.sources)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor | int]:
        source, view = int(self.sources[index]), int(self.views[index])
        if self._last is None or self._last[0] != source:
            self._last = (source, read_normalized(self.paths[source], self.stain))
        image = self._last[1]
        if self.random or view > 0:
            image = self.augmentation.apply(image, view, self.keys[source])
        return {"image": self.preprocess(image), "label": int(self.labels[index]), "index": index}


class SourceViews(Dataset):
    """The views a pass needs, grouped by source image: item i decodes one image once and returns all its views,
    resized but still 8-bit (N, H, W, 3): a quarter of the bytes to move; `preprocess.normalize` follows on the
    backbone's device.

    Args:
        catalog: the catalog frame (`path`, `sha1` columns).
        sources: source index of each wanted row.
        views: view index of each wanted row.
        augmentation: the offline views.
        preprocess: the backbone's resize and normalization.
        stain: the stain normalization applied to each image before its views (None: images as they are).
    """

    def __init__(self, catalog: pd.DataFrame, sources: np.ndarray, views: np.ndarray,
                 augmentation: Augmentation, preprocess: ImagePreprocess, stain: ImageStep | None = None) -> None:
        self.paths = catalog["path"].tolist()
        self.keys = catalog["sha1"].tolist()
        self.augmentation = augmentation
        self.preprocess = preprocess
        self.stain = stain
        groups: dict[int, list[int]] = {}
        for row, source in enumerate(np.asarray(sources).tolist()):
            groups.setdefault(int(source), []).append(row)
        self.groups = list(groups.items())
        self.views = np.asarray(views)

    def __len__(self) -> int:
        return len(self.groups)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        source, rows = self.groups[index]
        image = read_normalized(self.paths[source], self.stain)
        views = [self.preprocess.resize(self.augmentation.apply(image, int(self.views[row]), self.keys[source])
                                        if self.views[row] else image) for row in rows]
        return {"image": torch.from_numpy(np.stack(views)), "row": torch.as_tensor(rows, dtype=torch.long)}


class SourcePlans(SourceViews):
    """For views made on the device (`TensorViews`): item i decodes a few images (about `ROWS_PER_ITEM`
    wanted views' worth) and returns them resized, 8-bit (S, H, W, 3), with each wanted row's image (`source_of_row`)
    and what the device does for it (`augmentation.plan`: sampling theta, warped or not, flip code): one image to
    move per source instead of one per view, and few items to pass between processes."""

    ROWS_PER_ITEM = 128

    def __init__(self, catalog: pd.DataFrame, sources: np.ndarray, views: np.ndarray,
                 augmentation: TensorViews, preprocess: ImagePreprocess, stain: ImageStep | None = None) -> None:
        super().__init__(catalog, sources, views, augmentation, preprocess, stain)
        self.plans = augmentation
        self.chunks: list[list[tuple[int, list[int]]]] = [[]]
        rows = 0
        for group in self.groups:
            if rows >= self.ROWS_PER_ITEM:
                self.chunks.append([])
                rows = 0
            self.chunks[-1].append(group)
            rows += len(group[1])

    def __len__(self) -> int:
        return len(self.chunks) if self.groups else 0

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        images, source_of_row, plans, rows = [], [], [], []
        for position, (source, wanted) in enumerate(self.chunks[index]):
            image = self.preprocess.resize(read_normalized(self.paths[source], self.stain))
            images.append(image)
            plans.append(self.plans.plan(self.views[wanted], self.keys[source], *image.shape[:2]))
            source_of_row += [position] * len(wanted)
            rows += wanted
        thetas, warped, flips = (np.concatenate(part) for part in zip(*plans, strict=True))
        return {"image": torch.from_numpy(np.stack(images)), "source_of_row": torch.as_tensor(source_of_row),
                "row": torch.as_tensor(rows, dtype=torch.long), "thetas": torch.from_numpy(thetas),
                "warped": torch.from_numpy(warped), "flips": torch.from_numpy(flips)}


def quiet_worker(worker_id: int) -> None:
    """DataLoader worker start: one OpenCV thread (many workers each with a thread per core would thrash)."""
    cv2.setNumThreads(1)


def clean_worker_context() -> multiprocessing.context.BaseContext | str | None:
    """Workers forked from a clean server process (`forkserver`, with the view pipeline imported once).

    Forking the run itself is unsafe once it has run threads (OpenMP, OpenCV, MLflow, cache writers): a lock
    held at the fork stays locked in the child, and the second extraction of a sequential sweep hung that way.
    Inside a joblib (loky) job, which offers no forkserver (and whose own start method cannot start DataLoader
    workers: a pickle error), the job's process is forked where the platform can.
    """
    if multiprocessing.get_start_method(allow_none=True) not in (None, "fork", "spawn", "forkserver"):
        return "fork" if "fork" in multiprocessing.get_all_start_methods() else None
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["leukexp.data.dataset"])
    return context


class FeatureBatches:
    """Batches of in-memory features as `{"features", "label", "index"}` dicts, by indexing whole tensors.

    What a `DataLoader` over the rows would yield (the same batches for the same generator), without per-batch
    sampling, fetching and collation; the tensors can live on the training device from the start.

    Args:
        features: (N, D) features.
        labels: (N,) class indices.
        batch_size: rows per batch (the last batch may be smaller).
        shuffle: a new permutation every epoch, drawn from `generator`.
        generator: the seeded generator of the permutations.
        device: where the tensors are kept (the trainer's device).
        block: yield lists of this many mini-batches (one training step of the module each) instead of single
            mini-batches: Lightning's per-batch work then runs once per block (None: single mini-batches).
    """

    def __init__(self, features: np.ndarray, labels: np.ndarray, batch_size: int, shuffle: bool = False,
                 generator: torch.Generator | None = None, device: torch.device | str = "cpu",
                 block: int | None = None) -> None:
        self.features = torch.as_tensor(features, dtype=torch.float32).to(device)
        self.labels = torch.as_tensor(np.array(labels), dtype=torch.long).to(device)
        self.batch_size = int(batch_size)
        self.shuffle = shuffle
        self.generator = generator
        self.block = block

    def __len__(self) -> int:
        batches = -(-len(self.labels) // self.batch_size)
        return batches if self.block is None else -(-batches // self.block)

    def __iter__(self) -> Iterator[dict[str, torch.Tensor] | list[dict[str, torch.Tensor]]]:
        rows = len(self.labels)
        # the random draws of DataLoader(shuffle=...) and its RandomSampler, in their order: the same batches
        # and the same later random numbers (dropout), so results equal a DataLoader's bit for bit
        torch.empty((), dtype=torch.int64).random_(generator=self.generator)
        order = torch.arange(rows)
        if self.shuffle:
            order = torch.randperm(rows, generator=self.generator)
            torch.randperm(rows, generator=self.generator)
        order = order.to(self.labels.device)
        batches = ({"features": self.features[index], "label": self.labels[index], "index": index}
                   for index in order.split(self.batch_size))
        if self.block is None:
            yield from batches
            return
        block: list[dict[str, torch.Tensor]] = []
        for batch in batches:
            block.append(batch)
            if len(block) == self.block:
                yield block
                block = []
        if block:
            yield block
