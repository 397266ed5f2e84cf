"""Compute (or fetch from the cache) backbone features for a set of samples, and for every split of a fold_data."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader

from leukexp.backbones.base import Backbone
from leukexp.console import progress_bar
from leukexp.data.augment import Augmentation
from leukexp.data.dataset import SourcePlans, SourceViews, clean_worker_context, quiet_worker
from leukexp.data.io import DECODER_VERSION
from leukexp.data.tensor_views import TensorViews, views_for
from leukexp.errors import LeukexpError
from leukexp.features.cache import FeatureCache
from leukexp.features.codes import image_codes, view_code
from leukexp.features.locks import LOCK_BUCKETS, bucket_of
from leukexp.runtime.process import usable_cores

if TYPE_CHECKING:
    from leukexp.data.stain import StainNormalizer

log = logging.getLogger("leukexp")


@dataclass
class Features:
    """Backbone features per split; `train` is None when training runs on images (online views)."""

    train: np.ndarray | None
    val: np.ndarray
    test: np.ndarray

    def training(self) -> np.ndarray:
        """`train`, for a step that scores the training rows again (a run on online views has none)."""
        if self.train is None:
            raise ValueError("the training rows were embedded on the fly (online views): no features kept")
        return self.train


# `features.batch_size` and `features.num_workers`: a number, or `auto` (chosen for the backbone's device)
Setting = int | str
CPU_BATCH = 16  # fastest measured for EfficientNet-Lite0 on a 2-core CPU (channels-last): 47 img/s vs 43 at 32
ACCELERATOR_BATCH = 256
MAX_WORKERS = 16
CPU_WORKER_VIEWS = 512
# lock buckets a process claims per pass of a large extraction: two jobs starting together each take a share
CLAIM_BUCKETS = LOCK_BUCKETS // 4
# below this many missing views a process claims every free bucket at once: one pass (one set of worker processes)
# costs less than sharing the work would save
SPLIT_MIN_VIEWS = 8192


def batch_size_for(setting: Setting, device: torch.device) -> int:
    """`features.batch_size`: as given, or `auto`: 256 on an accelerator, 16 on the CPU."""
    if setting == "auto":
        return CPU_BATCH if device.type == "cpu" else ACCELERATOR_BATCH
    return int(setting)


def workers_for(setting: Setting, device: torch.device, views: int = CPU_WORKER_VIEWS) -> int:
    """`features.num_workers`: as given, or `auto`: processes that decode and augment images while the backbone
    computes: one per spare core (at most 16) on an accelerator; on the CPU, where the backbone uses every core,
    one for a pass of at least 512 views (measured on 2 cores: 55 views/s instead of 49 with none; a worker takes
    a few seconds to start)."""
    if setting != "auto":
        return int(setting)
    cores = usable_cores()
    if device.type == "cpu":
        return 1 if cores > 1 and views >= CPU_WORKER_VIEWS else 0
    return max(1, min(MAX_WORKERS, cores - 1))


def put_many(cache: FeatureCache, codes: np.ndarray, values: np.ndarray | None = None) -> None:
    """Store a batch of embeddings (run in a writer thread while the backbone computes the next batch); with no
    values, write what is queued (`flush`).

    A cache that cannot be written (read-only, full disk, no permission) costs only the reuse: the features stay in
    this run's memory, one warning names the folder and why, and no half-written entry is left.
    """
    if cache.unwritable:
        return
    try:
        if values is None:
            cache.flush()
        else:
            cache.put_codes(codes, values)
    except OSError as error:
        cache.unwritable = f"{error.strerror or type(error).__name__} ({error.filename or cache.folder})"
        log.warning("feature cache %s cannot be written: %s; this run keeps its features in memory (free space or"
                    " fix the permissions, or set features.dir=...)", cache.folder, cache.unwritable)


def check_embeddings(output: np.ndarray, backbone: Backbone, catalog: pd.DataFrame, sources: np.ndarray) -> None:
    """The backbone's features must be finite: NaN or inf is one line naming an image, never a cached entry."""
    bad = ~np.isfinite(output).all(axis=1)
    if bad.any():
        example = catalog["file" if "file" in catalog else "path"].to_numpy()[sources[np.flatnonzero(bad)[0]]]
        raise LeukexpError(f"{backbone.label} gave NaN or infinite features for {int(bad.sum())} view(s), e.g. of"
                           f" {example}; use features.precision=fp32 or check model.weights_file")


@dataclass(frozen=True)
class ViewPass:
    """How one pass embeds its rows: through which views (`views.apply(image, view, key)`), in backbone batches of
    `batch_size`, with `num_workers` decoding processes (`auto`: chosen for the device), after which stain
    normalization, under which words in the progress bar, views made where `made_on` says."""

    views: Augmentation
    batch_size: Setting = "auto"
    num_workers: Setting = "auto"
    stain: StainNormalizer | None = None
    description: str = "features"
    made_on: str = "auto"  # `features.views`: where views are made (auto, cpu, device; see `views_for`)


@dataclass(frozen=True)
class _Rows:
    """The rows of one pass: the catalog they index, the (source, view) samples and their store codes."""

    catalog: pd.DataFrame
    samples: pd.DataFrame
    codes: np.ndarray


def extract_features(backbone: Backbone, catalog: pd.DataFrame, samples: pd.DataFrame, cache: FeatureCache | None,
                     how: ViewPass) -> np.ndarray:
    """Features (len(samples), backbone.num_features) in sample order; only cache misses run the backbone.

    Misses are read by source image: each image is decoded once and all its missing views are made from it,
    in worker processes (`workers_for`); the backbone sees batches of `how.batch_size` views.
    """
    how = replace(how, views=views_for(how.views, how.made_on, backbone.device))
    keys = catalog["sha1"].to_numpy()
    sources, views = samples["source"].to_numpy(), samples["view"].to_numpy()
    codes = sample_codes(keys, sources, views, how.views)
    width = backbone.num_features
    if cache is not None:
        features, found = cache.get_codes(codes, width)
    else:
        features, found = np.zeros((len(samples), width), np.float32), np.zeros(len(samples), bool)
    missing = np.flatnonzero(~found)
    if len(missing) == 0:
        return features
    rows = _Rows(catalog, samples, codes)
    if cache is None:
        compute_missing(backbone, rows, how, None, features, missing)
        return features
    cache.check_locking()
    image_buckets = np.array([bucket_of(str(key)) for key in keys])
    buckets = image_buckets[sources[missing]]
    pending = sorted(set(buckets.tolist()))
    start = os.getpid() % len(pending)  # parallel jobs start at different buckets
    pending = pending[start:] + pending[:start]

    def fill(held: list[int]) -> None:
        """Under the locks of `held` buckets: read what others wrote meanwhile, compute and write the rest."""
        held_rows = missing[np.isin(buckets, held)]
        again, now = cache.recheck(codes[held_rows], width)
        features[held_rows[now]] = again[now]
        if (~now).any():
            compute_missing(backbone, rows, how, cache, features, held_rows[~now])
            put_many(cache, codes[:0])  # written before the locks go: whoever waited finds every entry

    per_pass = CLAIM_BUCKETS if len(missing) >= SPLIT_MIN_VIEWS else None
    while pending:  # free buckets (a few at a time in a large pass, so parallel jobs split it); else wait for one
        with cache.claim(pending, wait=False, limit=per_pass) as held:
            if held:
                fill(held)
        if not held:
            with cache.claim(pending[:1]) as held:
                fill(held)
        pending = [bucket for bucket in pending if bucket not in held]
    cache.settle()  # the folder's index rewritten, small shards merged
    return features


def sample_codes(image_keys: np.ndarray, sources: np.ndarray, views: np.ndarray, augmentation: Augmentation
                 ) -> np.ndarray:
    """The store codes of (source, view) rows: image codes per catalog image, view codes per distinct view, then one
    vectorized XOR (no string per row)."""
    per_view = np.zeros(int(views.max()) + 1 if len(views) else 1, np.uint64)
    for view in np.unique(views).tolist():
        per_view[view] = view_code(augmentation.view_fingerprint(int(view)))
    return image_codes(image_keys)[sources] ^ per_view[views]


@dataclass
class _Launched:
    """A batch whose features are on their way back from the device: `host` is filled once `done` has happened."""

    host: torch.Tensor
    done: torch.cuda.Event | None
    rows: torch.Tensor


def _batches(loader: DataLoader, device: torch.device, size: int, batched: bool) -> Iterator[dict[str, torch.Tensor]]:
    """The loader's items regrouped into backbone batches of `size` rows, assembled on `device` (the pinned items
    are copied while the device computes); `row` stays on the CPU."""
    parts: dict[str, list[torch.Tensor]] = {}
    pending = 0
    for item in loader:
        for name, value in item.items():
            if name != "row":
                item[name] = value.to(device, non_blocking=True)
        if batched:  # each row's source image, gathered on the device
            item["image"] = item["image"].index_select(0, item.pop("source_of_row"))
        for name, value in item.items():
            parts.setdefault(name, []).append(value)
        pending += len(item["row"])
        while pending >= size:
            split = {name: torch.cat(values).split([size, pending - size]) for name, values in parts.items()}
            yield {name: halves[0] for name, halves in split.items()}
            parts = {name: [halves[1]] for name, halves in split.items()}
            pending -= size
    if pending:
        yield {name: torch.cat(values) for name, values in parts.items()}


def compute_missing(backbone: Backbone, rows: _Rows, how: ViewPass, cache: FeatureCache | None,
                    features: np.ndarray, missing: np.ndarray) -> None:
    """Run the backbone on the `missing` rows (filling `features` and the cache).

    Workers decode each source image once; they make its views (the CPU path), or resize it and plan its views,
    which the device then makes a backbone batch at a time (`TensorViews`, see `data/tensor_views.py`). On an
    accelerator, a batch's features are copied back while the next batch computes.
    """
    catalog, codes, stain, views = rows.catalog, rows.codes, how.stain, how.views
    sources, view_index = rows.samples["source"].to_numpy(), rows.samples["view"].to_numpy()
    device = backbone.device
    size, workers = batch_size_for(how.batch_size, device), workers_for(how.num_workers, device, len(missing))
    on_device = views if isinstance(views, TensorViews) else None
    active_stain = stain if stain is not None and stain.active else None
    dataset = (SourcePlans(catalog, sources[missing], view_index[missing], on_device, backbone.preprocess, active_stain)
               if on_device is not None else
               SourceViews(catalog, sources[missing], view_index[missing], views, backbone.preprocess, active_stain))
    loader = DataLoader(dataset, batch_size=None, shuffle=False, num_workers=workers,
                        pin_memory=device.type == "cuda", prefetch_factor=4 if workers else None,
                        worker_init_fn=quiet_worker if workers else None,
                        multiprocessing_context=clean_worker_context() if workers else None)

    def launch(batch: dict[str, torch.Tensor]) -> _Launched:
        images = batch["image"]
        if on_device is not None:
            images = on_device.make(images, batch["thetas"], batch["warped"], batch["flips"])
        output = backbone.embed_on_device(backbone.preprocess.normalize(images))
        if output.device.type != "cuda":
            return _Launched(output.cpu(), None, batch["row"])
        host = torch.empty(output.shape, dtype=output.dtype, pin_memory=True)
        host.copy_(output, non_blocking=True)
        done = torch.cuda.Event()
        done.record()
        return _Launched(host, done, batch["row"])

    def finish(launched: _Launched) -> None:
        if launched.done is not None:
            launched.done.synchronize()
        output = launched.host.numpy()
        targets = missing[launched.rows.numpy()]
        check_embeddings(output, backbone, catalog, sources[targets])
        features[targets] = output
        if cache is not None:
            writes.append(writer.submit(put_many, cache, codes[targets], features[targets]))
        progress.update(bar, advance=len(output))

    with progress_bar() as progress, ThreadPoolExecutor(2) as writer, torch.inference_mode():
        bar = progress.add_task(f"{how.description} ({backbone.label})", total=len(missing))
        writes: list[Future[None]] = []
        previous: _Launched | None = None
        for batch in _batches(loader, device, size, on_device is not None):
            current = launch(batch)  # queued on the device before the previous batch is read back
            if previous is not None:
                finish(previous)
            previous = current
        if previous is not None:
            finish(previous)
        for write in writes:
            write.result()


def sample_features(backbone: Backbone, catalog: pd.DataFrame, samples: pd.DataFrame,
                    caches: list[FeatureCache | None], how: ViewPass) -> np.ndarray:
    """Features of samples for every part of the backbone (each with its own cache, `caches[i]`, keyed for the
    stain normalization the caches were opened with), concatenated."""
    blocks = [extract_features(part, catalog, samples, cache, how)
              for part, cache in zip(backbone.parts(), caches, strict=True)]
    return blocks[0] if len(blocks) == 1 else np.concatenate(blocks, axis=1)


def part_caches(backbone: Backbone, cache_dir: str | Path | None, stain: StainNormalizer | None = None,
                storage: str = "float32") -> list[FeatureCache | None]:
    """One cache per part of the backbone, keyed by that part's fingerprint, the image decoder's version, the
    fitted stain target, if any, and the storage precision (None everywhere without a cache)."""
    suffix = f"-s{stain.fingerprint()}" if stain is not None and stain.active else ""
    return [FeatureCache(cache_dir, f"{part.fingerprint}-d{DECODER_VERSION}{suffix}", storage)
            if cache_dir is not None else None for part in backbone.parts()]


def cache_note(caches: list[FeatureCache | None], what: str = "feature cache") -> str:
    """How the caches did, in one line: `feature cache: H hits, M misses (folder)`."""
    return "; ".join(f"{what}: {c.hits} hits, {c.misses} misses ({c.folder})"
                     + (f"; not written: {c.unwritable}" if c.unwritable else "") for c in caches if c)
