"""Throughput: the backbone's bare forward (the raw limit) and one cold extraction pass over every view."""

from __future__ import annotations

import resource
import shutil
import time
from pathlib import Path

from benchmarks.common import all_views, torch
from leukexp.backbones.base import Backbone
from leukexp.config.plan import RunPlan


def measure_raw(backbone: Backbone, batch_size: int, seconds: float) -> dict[str, float]:
    """The bare forward of random input already on the device, images/s (after two warm-up batches)."""
    channels, height, width = backbone.preprocess.input_size
    images = torch.randn(batch_size, channels, height, width).to(backbone.device)
    for _ in range(2):
        backbone.embed(images)
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        backbone.embed(images)
        count += batch_size
    elapsed = time.perf_counter() - start
    return {"images_per_s": count / elapsed, "batch_size": batch_size}


def measure_extraction(cfg: RunPlan, backbone: Backbone, cache_dir: Path, made_on: str | None = None
                       ) -> dict[str, float]:
    """One cold pass of leukexp's extraction over every view of every image of the fold_data, views made where
    `made_on` says (`features.views`: cpu, device or auto; default the plan's)."""
    from leukexp.data.fold_data import build_fold_data
    from leukexp.features.embed import ViewPass, part_caches, sample_features

    fold_data = build_fold_data(cfg)
    samples = all_views(len(fold_data.catalog.frame), fold_data.augmentation.n_views)
    shutil.rmtree(cache_dir, ignore_errors=True)
    start = time.perf_counter()
    caches = part_caches(backbone, cache_dir)
    sample_features(backbone, fold_data.catalog.frame, samples, caches,
                    ViewPass(fold_data.augmentation, cfg.features.batch_size, cfg.features.num_workers,
                             description="benchmark pass", made_on=made_on or cfg.features.views))
    elapsed = time.perf_counter() - start
    return {"views": float(len(samples)), "seconds": elapsed, "images_per_s": len(samples) / elapsed,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def warm_workers(cfg: RunPlan, backbone: Backbone, cache_dir: Path) -> None:
    """One small pass with workers (not timed), so passes compared with each other all find the worker processes'
    fork server started (its start, importing torch and the view pipeline, is paid once per process)."""
    from leukexp.data.fold_data import build_fold_data
    from leukexp.features.embed import ViewPass, part_caches, sample_features

    fold_data = build_fold_data(cfg)
    sample_features(backbone, fold_data.catalog.frame, all_views(2, 1), part_caches(backbone, cache_dir),
                    ViewPass(fold_data.augmentation, 2, 1, description="warm-up"))
    shutil.rmtree(cache_dir, ignore_errors=True)
