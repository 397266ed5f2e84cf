"""On-disk cache of backbone embeddings, keyed by (backbone weights, image content, view).

One `.npy` file per entry under `<root>/<backbone fingerprint>/<hash prefix>/`. Writes go to a unique
temporary file that is renamed into place, so a killed run never leaves a partial entry and two
processes writing the same entry at once both succeed with identical content.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import cache
from pathlib import Path

import numpy as np

from leukexp.files import atomic_path


class FeatureCache:
    """Embeddings of one backbone, stored as one small file each.

    Args:
        root: the cache folder shared by all backbones (`paths.cache_dir/features`).
        backbone_key: the backbone's fingerprint (weights and preprocessing).
    """

    def __init__(self, root: str | Path, backbone_key: str) -> None:
        self.folder = Path(root) / backbone_key
        self.hits = 0
        self.misses = 0
        self.unwritable = ""  # why entries could not be written (then this run keeps them in memory only)

    def path(self, image_key: str, view_key: str) -> Path:
        """Where the entry for this image content hash and view lives."""
        return Path(self._file(image_key, view_key))

    def _file(self, image_key: str, view_key: str) -> str:
        """`path` as a string (the many reads of `get_many` skip building Path objects)."""
        return f"{self.folder}/{image_key[:2]}/{image_key}_{view_key}.npy"

    def get(self, image_key: str, view_key: str) -> np.ndarray | None:
        """The cached embedding, or None (a missing or unreadable entry counts as a miss)."""
        path = self.path(image_key, view_key)
        try:
            value = np.load(path, allow_pickle=False)
        except (OSError, ValueError, EOFError):
            self.misses += 1
            return None
        self.hits += 1
        return value

    def get_many(self, keys: Sequence[tuple[str, str]], width: int, threads: int = 8
                 ) -> tuple[np.ndarray, np.ndarray]:
        """Entries of many `(image_key, view_key)` pairs as one (len(keys), width) float32 array, and a mask of
        those found (an absent, unreadable, other-width or non-finite entry is a miss, and so computed again).

        Files are read by a few threads and entries written by `put` are decoded from their known header,
        without parsing it: a warm run reads thousands of entries in a fraction of a second.
        """
        values = np.zeros((len(keys), width), np.float32)
        found = np.zeros(len(keys), bool)
        header = _npy_header(width)
        expected = len(header) + 4 * width

        def read(indices: range) -> None:
            for index in indices:
                try:
                    with open(self._file(*keys[index]), "rb") as handle:
                        data = handle.read()
                except OSError:
                    continue
                if len(data) == expected and data.startswith(header):
                    values[index] = np.frombuffer(data, np.float32, offset=len(header))
                    found[index] = True
                    continue
                try:
                    value = np.load(io.BytesIO(data), allow_pickle=False)
                except (OSError, ValueError, EOFError):
                    continue
                if value.shape == (width,):
                    values[index] = value
                    found[index] = True

        chunk = -(-len(keys) // max(1, threads)) or 1
        with ThreadPoolExecutor(max(1, threads)) as pool:
            list(pool.map(read, [range(i, min(i + chunk, len(keys))) for i in range(0, len(keys), chunk)]))
        if found.any() and not (finite := np.isfinite(values).all(axis=1))[found].all():
            found &= finite  # a damaged entry (NaN, inf) is recomputed and overwritten
            values[~found] = 0.0
        self.hits += int(found.sum())
        self.misses += int(len(keys) - found.sum())
        return values, found

    def put(self, image_key: str, view_key: str, value: np.ndarray) -> None:
        """Store an embedding atomically."""
        vector = np.ascontiguousarray(value, dtype=np.float32).reshape(-1)
        with atomic_path(self.path(image_key, view_key)) as staging, open(staging, "wb") as handle:
            handle.write(_npy_header(len(vector)) + vector.tobytes())  # the bytes np.save writes

    def size_bytes(self) -> int:
        """Disk used by this backbone's entries."""
        return sum(p.stat().st_size for p in self.folder.rglob("*.npy")) if self.folder.exists() else 0


@cache
def _npy_header(width: int) -> bytes:
    """The bytes `np.save` writes before the data of a float32 vector of `width` values."""
    buffer = io.BytesIO()
    np.save(buffer, np.zeros(width, np.float32), allow_pickle=False)
    return buffer.getvalue()[: -4 * width]
