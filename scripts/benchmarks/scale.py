"""The framework at several sizes: a tiny random-weight model on synthetic smears, cold extraction and a warm job's
read per size, and how each time grows with the number of views."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from benchmarks.common import all_views, compose_plan, measure_sizes
from benchmarks.throughput import measure_raw
from benchmarks.warm_read import warm_read

SCALE_SIZES = (5_000, 50_000, 500_000)
SCALE_MODEL = ["model=timm", "model.name=test_efficientnet", "model.pretrained=false", "model.input_size=32",
               "augmentation=paper", "data.image_size=48", "features.batch_size=256"]
SCALE_CLASSES = ("ALL", "AML", "CLL", "CML", "HLT")


def scale_counts(views: int, per_image: int = 33) -> dict[str, int]:
    """Images per class for about `views` views of `per_image` each, spread over the five classes."""
    images = -(-views // per_image)
    per_class = -(-images // len(SCALE_CLASSES))
    return dict.fromkeys(SCALE_CLASSES, per_class)


def growth_exponent(sizes: list[float], seconds: list[float]) -> float:
    """The slope of log(time) against log(size): 1 is linear growth."""
    return float(np.polyfit(np.log(sizes), np.log(seconds), 1)[0])


def measure_scale(root: Path, views: int, extra: list[str]) -> dict[str, float]:
    """One size: cold extraction, files created, and a warm job's read time, baseline and peak RSS."""
    from leukexp.data.fold_data import build_fold_data
    from leukexp.features.embed import ViewPass, part_caches, sample_features
    from leukexp.run.settings import backbone_from_plan
    from leukexp.runtime.process import seed_everything

    counts = scale_counts(views)
    overrides = [*SCALE_MODEL, "data.counts={" + ", ".join(f"{k}: {v}" for k, v in counts.items()) + "}", *extra]
    cfg = compose_plan(root, overrides)
    seed_everything(cfg.seed)
    backbone = backbone_from_plan(cfg)
    started = time.perf_counter()
    fold_data = build_fold_data(cfg)
    data_s = time.perf_counter() - started
    samples = all_views(len(fold_data.catalog.frame), fold_data.augmentation.n_views)
    shutil.rmtree(Path(cfg.features.dir), ignore_errors=True)
    raw = measure_raw(backbone, 256, 5.0)["images_per_s"]
    start = time.perf_counter()
    caches = part_caches(backbone, cfg.features.dir)
    sample_features(backbone, fold_data.catalog.frame, samples, caches,
                    ViewPass(fold_data.augmentation, 256, cfg.features.num_workers, description="scale pass"))
    cold = time.perf_counter() - start
    files = caches[0].files()  # shard files after the pass (which merges small ones once 8 pile up)
    warm = warm_read("warm_job", root, json.dumps(overrides))
    return {"views": float(len(samples)), "images": float(len(fold_data.catalog.frame)), "data_s": data_s,
            "cold_s": cold, "cold_views_per_s": len(samples) / cold, "raw_views_per_s": raw,
            "cold_to_raw": len(samples) / cold / raw, "files": float(files),
            "files_per_100k": files / len(samples) * 100_000, "store_bytes": float(caches[0].size_bytes()),
            "job_rows": float(warm["rows"]), "job_bytes": float(warm["bytes"]), "job_read_s": warm["read_s"],
            "np_load_s": warm["np_load_s"], "read_speed_vs_np_load": warm["np_load_s"] / warm["read_s"],
            "job_peak_rss_bytes": float(warm["peak_rss_bytes"]),
            "rss_over_bytes_gb": (warm["peak_rss_bytes"] - warm["bytes"]) / 2**30}


READ_HEADERS = "job reads | job read s | np.load s | read speed vs np.load | job peak RSS - bytes |"


def read_table(headers: str, rows: list[dict[str, float]], first_cells: Callable[[dict[str, float]], str]
               ) -> list[str]:
    """A markdown table whose rows start with `first_cells` and end with the warm read's cells: rows and bytes,
    seconds, np.load's, the ratio, memory over the bytes."""
    lines = [f"| {headers} | {READ_HEADERS}", "|" + "---|" * (headers.count("|") + 6)]
    for row in rows:
        lines.append(f"| {first_cells(row)} | {row['job_rows']:,.0f} rows, {row['job_bytes'] / 2**20:,.0f} MiB |"
                     f" {row['job_read_s']:.3f} | {row['np_load_s']:.3f} | {row['read_speed_vs_np_load']:.2f}x |"
                     f" {row['rss_over_bytes_gb']:.2f} GiB |")
    return lines


def scale_table(rows: list[dict[str, float]]) -> str:
    """The scale results as a markdown table, with the growth exponents."""
    lines = read_table("views | images | cold views/s (x raw) | files (per 100 k)", rows, lambda row: (
        f"{row['views']:,.0f} | {row['images']:,.0f} | {row['cold_views_per_s']:,.0f} ({row['cold_to_raw']:.2f})"
        f" | {row['files']:.0f} ({row['files_per_100k']:.1f})"))
    views = [row["views"] for row in rows]
    if len(rows) > 1:
        lines.append("")
        lines.append(f"time vs views, exponent (1 = linear): cold extraction"
                     f" {growth_exponent(views, [r['cold_s'] for r in rows]):.2f}, warm job read"
                     f" {growth_exponent(views, [r['job_read_s'] for r in rows]):.2f}")
    return "\n".join(lines)


def scale_main(root: Path, sizes: list[int], extra: list[str], target: Path | None) -> list[dict[str, float]]:
    """`--scale`: every size in turn, a table, the JSON."""
    return measure_sizes(lambda views: measure_scale(root / f"scale-{views}", views, extra), sizes, scale_table,
                         target or root / "scale.json")
