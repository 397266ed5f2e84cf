"""Entry codes: the 64-bit code of an (image content hash, view key) pair the feature store is keyed by.

An entry's code is 8 bytes of its image key's BLAKE2 XOR 8 bytes of its view key's: computed for a whole pass with
NumPy, once per catalog image and once per view, never a Python string per entry on the hot path.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np


def image_codes(image_keys: Sequence[str] | np.ndarray) -> np.ndarray:
    """64-bit codes of image keys (content hashes): 8 bytes of each key's BLAKE2 (any string: keys that share a
    prefix still differ), computed once per catalog image, not per entry."""
    joined = b"".join(_blake(str(key)) for key in image_keys)
    return np.frombuffer(joined, ">u8").astype(np.uint64) if joined else np.zeros(0, np.uint64)


def _blake(text: str) -> bytes:
    return hashlib.blake2b(text.encode(), digest_size=8).digest()


def view_code(view_key: str) -> np.uint64:
    """The 64-bit code of a view's cache key (`original`, `<fingerprint>-<index>`)."""
    return np.uint64(int.from_bytes(_blake(f"view:{view_key}"), "big"))


def entry_codes(image_keys: Sequence[str], view_keys: Sequence[str]) -> np.ndarray:
    """The store's codes of (image hash, view key) pairs, one per pair."""
    views = {key: view_code(key) for key in set(view_keys)}
    return image_codes(image_keys) ^ np.array([views[key] for key in view_keys], np.uint64).reshape(-1)
