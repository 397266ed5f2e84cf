"""On-disk cache of backbone embeddings, keyed by (backbone weights, image content, view).

One `.npy` file per entry under `<root>/<backbone fingerprint>/<hash prefix>/`. Writes go to a unique
temporary file that is renamed into place, so a killed run never leaves a partial entry and two
processes writing the same entry at once both succeed with identical content.
"""

from __future__ import annotations

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

    def path(self, image_key: str, view_key: str) -> Path:
        """Where the entry for this image content hash and view lives."""
        return self.folder / image_key[:2] / f"{image_key}_{view_key}.npy"

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

    def put(self, image_key: str, view_key: str, value: np.ndarray) -> None:
        """Store an embedding atomically."""
        with atomic_path(self.path(image_key, view_key)) as staging, open(staging, "wb") as handle:
            np.save(handle, np.ascontiguousarray(value, dtype=np.float32), allow_pickle=False)

    def size_bytes(self) -> int:
        """Disk used by this backbone's entries."""
        return sum(p.stat().st_size for p in self.folder.rglob("*.npy")) if self.folder.exists() else 0
