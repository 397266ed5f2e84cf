"""The feature store alone at millions of entries (synthetic codes and values, no images or model): a cold pass's
writes, its index and compaction, a warm job's read against `np.load` of the same bytes."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import numpy as np

from benchmarks.common import measure_sizes
from benchmarks.scale import read_table
from benchmarks.warm_read import warm_read


def store_keys(images: int) -> tuple[np.ndarray, np.ndarray]:
    """Image codes of `images` synthetic content hashes, and the codes of the 33 views of the study."""
    import hashlib

    from leukexp.features.codes import image_codes, view_code

    keys = [hashlib.sha1(str(i).encode(), usedforsecurity=False).hexdigest() for i in range(images)]
    views = np.array([view_code("original"), *(view_code(f"scale-{v}") for v in range(1, 33))], np.uint64)
    return image_codes(keys), views


def store_job_codes(images: int) -> np.ndarray:
    """What a warm job of a fold reads: every view of its training images (80 %), the others' originals."""
    image, views = store_keys(images)
    train = int(images * 0.8)
    return np.concatenate([(image[:train, None] ^ views[None, :]).reshape(-1), image[train:] ^ views[0]])


def measure_store(root: Path, entries: int) -> dict[str, float]:
    """The store alone at `entries` entries (33 views per image, 256 floats each, random values): written as a cold
    pass writes (each image's views together, images in lock-bucket order), the pass's index and compaction, then
    a warm job's read in a fresh process against np.load of the same bytes in another one."""
    from leukexp.features.cache import FeatureCache

    shutil.rmtree(root, ignore_errors=True)
    images = -(-entries // 33)
    image, views = store_keys(images)
    cache = FeatureCache(root, "store")
    rng = np.random.default_rng(0)
    start = time.perf_counter()
    for chunk in np.array_split(rng.permutation(images), max(1, images // 512)):
        codes = (image[chunk, None] ^ views[None, :]).reshape(-1)
        cache.put_codes(codes, rng.standard_normal((len(codes), 256), np.float32))
    cache.flush()
    written = time.perf_counter() - start
    files_before = cache.files()
    start = time.perf_counter()
    cache.settle()
    settled = time.perf_counter() - start
    warm = warm_read("store_job", root, str(images))
    return {"views": float(images * 33), "images": float(images), "write_s": written, "settle_s": settled,
            "files_before_compaction": float(files_before), "files": float(cache.files()),
            "files_per_100k": cache.files() / (images * 33) * 100_000, "job_rows": float(warm["rows"]),
            "job_bytes": float(warm["bytes"]), "job_read_s": warm["read_s"], "np_load_s": warm["np_load_s"],
            "read_speed_vs_np_load": warm["np_load_s"] / warm["read_s"],
            "job_peak_rss_bytes": float(warm["peak_rss_bytes"]),
            "rss_over_bytes_gb": (warm["peak_rss_bytes"] - warm["bytes"]) / 2**30}


def store_main(root: Path, sizes: list[int], target: Path | None) -> list[dict[str, float]]:
    """`--store`: the store alone at every size, a table, the JSON."""
    return measure_sizes(lambda entries: measure_store(root / f"store-{entries}", entries), sizes, store_table,
                         target or root / "store.json")


def store_table(rows: list[dict[str, float]]) -> str:
    """The store results as a markdown table."""
    return "\n".join(read_table("entries | files before -> after compaction (per 100 k) | write s |"
                                 " index + compaction s", rows, lambda row: (
                                     f"{row['views']:,.0f} | {row['files_before_compaction']:.0f} ->"
                                     f" {row['files']:.0f} ({row['files_per_100k']:.2f}) | {row['write_s']:.1f} |"
                                     f" {row['settle_s']:.1f}")))
