"""Feature store fixtures shared by the store's test files: entries with known values, written as one shard."""

import hashlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from leukexp.features.cache import FeatureCache
from leukexp.features.codes import entry_codes


def stored_pairs(count: int, width: int = 4, view: str = "v") -> tuple[list[tuple[str, str]], np.ndarray]:
    """`count` (image hash, view) keys and their distinct values."""
    keys = [(hashlib.sha1(str(i).encode()).hexdigest(), view) for i in range(count)]
    return keys, np.arange(count * width, dtype=np.float32).reshape(count, width)


def write_good(root: Path, count: int = 6) -> tuple[list[tuple[str, str]], np.ndarray]:
    """`count` entries written to backbone folder `bb` under `root`."""
    keys, values = stored_pairs(count)
    cache = FeatureCache(root, "bb")
    put_pairs(cache, keys, values)
    cache.flush()
    return keys, values


def pair_codes(pairs: Sequence[tuple[str, str]]) -> np.ndarray:
    """The store's codes of `(image hash, view key)` pairs."""
    if not pairs:
        return np.zeros(0, np.uint64)
    images, views = zip(*pairs, strict=True)
    return entry_codes(images, views)


def put_pairs(cache: FeatureCache, pairs: Sequence[tuple[str, str]], values: np.ndarray) -> None:
    """Queue entries by `(image hash, view key)` (the store itself is keyed by codes)."""
    cache.put_codes(pair_codes(pairs), np.asarray(values, np.float32).reshape(len(pairs), -1))


def get_pairs(cache: FeatureCache, pairs: Sequence[tuple[str, str]], width: int) -> tuple[np.ndarray, np.ndarray]:
    """Entries by `(image hash, view key)`: values and a found mask."""
    return cache.get_codes(pair_codes(pairs), width)
