"""The feature store: backbone embeddings keyed by (backbone weights, image content, view), for millions of entries.

Entries live in shard files under `<root>/<backbone key>/`, each a safetensors file holding one (n, width) `values`
tensor (float32, or float16 with `features.storage=float16`) and, in its header, the n entry keys in row order.
A pass writes one shard per `SHARD_ENTRIES` new entries (about 10 files per 100,000 entries), atomically (a
staging file renamed into place): several processes and machines write side by side without coordination, a
killed writer leaves no partial shard, and an entry written twice is harmless. Readers index the shards' headers
once per process (new shards are picked up on the next read) and gather rows through memory maps.

Two processes that would compute the same entries take turns through lock buckets (`claim`): the embeddings are
spread over `LOCK_BUCKETS` buckets by image hash; a process claims a free bucket, re-reads it, computes what is
still missing and writes it before the next one, so parallel jobs split a cold extraction between them and each
embedding is computed once. The locks are the kernel's (`flock`): a killed holder releases them.

safetensors (already a dependency for weights) was chosen over zarr and LMDB: one self-describing file per shard
that any tool reads, plain offsets that NumPy maps directly, no database lock on a network disk, and no package
more to install; measured numbers are in the README ("Outgrowing one machine").
"""

from __future__ import annotations

import json
import logging
import os
import struct
import threading
import uuid
import zlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO

import numpy as np
import pandas as pd

from leukexp.files import atomic_path

log = logging.getLogger("leukexp")
SHARD_SUFFIX = ".safetensors"
SHARD_ENTRIES = 16_384  # entries per shard a pass writes (the last one of a pass may be smaller)
LOCK_BUCKETS = 16  # extraction lock buckets per backbone folder, by image hash
STORAGE_DTYPES = {"float32": (np.float32, "F32"), "float16": (np.float16, "F16")}
_SAFETENSORS_DTYPES = {"F32": np.float32, "F16": np.float16}


def bucket_of(image_key: str) -> int:
    """The lock bucket of an image content hash (hex; any other key by its CRC-32, the same in every process, unlike
    Python's salted `hash`)."""
    try:
        return int(image_key[:8], 16) % LOCK_BUCKETS
    except ValueError:
        return zlib.crc32(image_key.encode()) % LOCK_BUCKETS


def entry_key(image_key: str, view_key: str) -> str:
    """The store's key of one embedding."""
    return f"{image_key}_{view_key}"


class Shard:
    """One shard file: its entry keys (from the header) and its values, mapped on first use."""

    def __init__(self, path: Path) -> None:
        with open(path, "rb") as handle:
            (length,) = struct.unpack("<Q", handle.read(8))
            header = json.loads(handle.read(length))
        meta = header["values"]
        self.path = path
        self.keys: list[str] = json.loads(header["__metadata__"]["keys"])
        self.dtype = _SAFETENSORS_DTYPES[meta["dtype"]]
        self.shape = tuple(meta["shape"])
        self.offset = 8 + length + int(meta["data_offsets"][0])
        self._values: np.ndarray | None = None

    @property
    def values(self) -> np.ndarray:
        """The (n, width) values, memory-mapped (read only)."""
        if self._values is None:
            self._values = np.memmap(self.path, self.dtype, "r", self.offset, self.shape)
        return self._values


class FeatureCache:
    """Embeddings of one backbone (and preprocessing, decoder and stain target): shard files in one folder.

    Args:
        root: the cache folder shared by all backbones (`features.dir`).
        backbone_key: the backbone's cache key (its fingerprint, decoder version, stain target).
        storage: `float32` or `float16` (half the disk and memory; entries of the two never mix: other folders).
    """

    def __init__(self, root: str | Path, backbone_key: str, storage: str = "float32") -> None:
        if storage not in STORAGE_DTYPES:
            raise ValueError(f"features.storage={storage}: use float32 or float16")
        suffix = "" if storage == "float32" else f"-{storage}"
        self.folder = Path(root) / f"{backbone_key}{suffix}"
        self.storage = storage
        self.hits = 0
        self.misses = 0
        self.unwritable = ""  # why entries could not be written (then this run keeps them in memory only)
        self._keys: list[str] = []  # every indexed entry, in shard order (an entry written twice: first wins)
        self._places: list[np.ndarray] = []  # per shard: (shard number, row) of its entries
        self._lookup: pd.Index | None = None  # built on demand from the two above
        self._first = np.zeros((0, 2), np.int64)  # (shard, row) of each key of `_lookup`
        self._shards: list[Shard] = []
        self._seen: set[str] = set()
        self._pending_keys: list[str] = []
        self._pending_values: list[np.ndarray] = []
        self._pending_lock = threading.Lock()
        self._warned_legacy = False

    # reading

    def refresh(self) -> None:
        """Index shards written since the last look (by this or any other process)."""
        try:
            names = sorted(entry.name for entry in os.scandir(self.folder)
                           if entry.name.endswith(SHARD_SUFFIX) and not entry.name.startswith("."))
        except FileNotFoundError:
            return
        for name in names:
            if name in self._seen:
                continue
            self._seen.add(name)
            try:
                shard = Shard(self.folder / name)
            except (OSError, ValueError, KeyError, struct.error) as error:
                log.warning("feature cache %s: shard %s is unreadable (%s); its entries are computed again",
                            self.folder, name, type(error).__name__)
                continue
            number = len(self._shards)
            self._shards.append(shard)
            self._keys.extend(shard.keys)
            rows = np.arange(len(shard.keys))
            self._places.append(np.stack([np.full_like(rows, number), rows], axis=1))
            self._lookup = None
        self._warn_legacy()

    def _index(self) -> tuple[pd.Index, np.ndarray]:
        """Entry keys as a hashed index (C-speed lookups) and the (shard, row) of each."""
        if self._lookup is None:
            places = np.concatenate(self._places) if self._places else np.zeros((0, 2), np.int64)
            keys = pd.Index(self._keys)
            first = ~keys.duplicated()
            self._lookup, self._first = keys[first], places[first]
        return self._lookup, self._first

    def entry_count(self) -> int:
        """Entries stored (after `refresh`). Not `__len__`: an empty store must not read as a missing one."""
        self.refresh()
        return len(self._index()[0])

    def entry_keys(self) -> list[str]:
        """Every stored entry's key (`<image hash>_<view key>`)."""
        self.refresh()
        return sorted(self._index()[0])

    def get_many(self, keys: Sequence[tuple[str, str]], width: int, count: bool = True
                 ) -> tuple[np.ndarray, np.ndarray]:
        """Entries of many `(image_key, view_key)` pairs as one (len(keys), width) float32 array, and a mask of
        those found (an absent, other-width or non-finite entry is a miss, and so computed again). Rows are
        gathered shard by shard from memory maps, in storage order."""
        self.refresh()
        values = np.zeros((len(keys), width), np.float32)
        found = np.zeros(len(keys), bool)
        lookup, places = self._index()
        at = lookup.get_indexer([f"{image}_{view}" for image, view in keys]) if len(lookup) else np.full(len(keys), -1)
        wanted = np.flatnonzero(at >= 0)
        shard_of, row_of = places[at[wanted], 0], places[at[wanted], 1]
        order = np.lexsort((row_of, shard_of))  # shard by shard, rows in storage order
        wanted, shard_of, row_of = wanted[order], shard_of[order], row_of[order]
        bounds = np.flatnonzero(np.diff(shard_of)) + 1
        for positions, shards, rows in zip(np.split(wanted, bounds), np.split(shard_of, bounds),
                                           np.split(row_of, bounds), strict=True):
            if not len(positions):
                continue
            shard = self._shards[int(shards[0])]
            if shard.shape[1:] != (width,):
                continue
            try:
                block = np.asarray(shard.values[rows], np.float32)
            except (OSError, ValueError) as error:  # a shard cut short on disk: its entries are computed again
                log.warning("feature cache %s: shard %s is damaged (%s)", self.folder, shard.path.name, error)
                continue
            finite = np.isfinite(block).all(axis=1)  # a damaged entry (NaN, inf) is a miss: computed, written again
            if finite.all():
                values[positions] = block
                found[positions] = True
            else:
                values[positions[finite]] = block[finite]
                found[positions[finite]] = True
        if count:
            self.hits += int(found.sum())
            self.misses += int(len(keys) - found.sum())
        return values, found

    def recheck(self, keys: Sequence[tuple[str, str]], width: int) -> tuple[np.ndarray, np.ndarray]:
        """`get_many` again for entries just counted as misses (under `claim`): those another process wrote in
        the meantime count as hits instead, so every process's misses are the entries it computed."""
        values, found = self.get_many(keys, width, count=False)
        self.hits += int(found.sum())
        self.misses -= int(found.sum())
        return values, found

    # writing

    def put_many(self, keys: Sequence[tuple[str, str]], values: np.ndarray) -> None:
        """Queue entries; a full shard's worth is written at once (`flush` writes the rest)."""
        with self._pending_lock:
            self._pending_keys.extend(entry_key(*pair) for pair in keys)
            self._pending_values.append(np.asarray(values, np.float32))
            full = len(self._pending_keys) >= SHARD_ENTRIES
        if full:
            self.flush(whole_shards_only=True)

    def put(self, image_key: str, view_key: str, value: np.ndarray) -> None:
        """Store one embedding (written with the next shard; `flush` to write it now)."""
        self.put_many([(image_key, view_key)], np.asarray(value, np.float32).reshape(1, -1))

    def flush(self, whole_shards_only: bool = False) -> None:
        """Write the queued entries as shard files (atomically: a killed writer leaves none half-written); with
        `whole_shards_only`, only full shards, the rest stays queued."""
        with self._pending_lock:
            keys, blocks = self._pending_keys, self._pending_values
            values = np.concatenate(blocks) if blocks else np.zeros((0, 0), np.float32)
            keep = len(keys) % SHARD_ENTRIES if whole_shards_only else 0
            self._pending_keys = keys[len(keys) - keep:]
            self._pending_values = [values[len(keys) - keep:]] if keep else []
            keys, values = keys[:len(keys) - keep], values[:len(keys) - keep]
        if not keys:
            return
        for start in range(0, len(keys), SHARD_ENTRIES):
            self._write_shard(keys[start:start + SHARD_ENTRIES], values[start:start + SHARD_ENTRIES])

    def _write_shard(self, keys: list[str], values: np.ndarray) -> None:
        """One shard file in the safetensors layout, written by plain file writes (which let other threads run,
        unlike a library call holding the interpreter for the whole file)."""
        dtype, code = STORAGE_DTYPES[self.storage]
        values = np.ascontiguousarray(values, dtype)
        header = json.dumps({"__metadata__": {"keys": json.dumps(keys)},
                             "values": {"dtype": code, "shape": list(values.shape),
                                        "data_offsets": [0, values.nbytes]}}, separators=(",", ":")).encode()
        header += b" " * (-len(header) % 8)  # the data starts 8-byte aligned, as safetensors writes it
        path = self.folder / f"part-{os.getpid()}-{uuid.uuid4().hex[:12]}{SHARD_SUFFIX}"
        with atomic_path(path) as staging, open(staging, "wb") as handle:
            handle.write(struct.pack("<Q", len(header)))
            handle.write(header)
            handle.write(memoryview(values).cast("B"))

    # coordination

    @contextmanager
    def claim(self, buckets: Sequence[int] | None = None, wait: bool = True, limit: int | None = None
              ) -> Iterator[list[int]]:
        """Hold the extraction locks of lock buckets (all by default) for the block; yields the buckets held.

        With `wait=False` only the buckets free now are taken (possibly none; at most `limit`): a process takes
        what no other is computing. With `wait=True` every bucket is taken, waiting for each held one. A folder that
        cannot hold lock files (read-only) is not locked: every bucket is yielded.
        """
        import fcntl

        wanted = list(range(LOCK_BUCKETS)) if buckets is None else list(buckets)
        handles: list[IO[str]] = []
        held: list[int] = []
        said = False
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            for bucket in wanted:
                if limit is not None and len(held) >= limit:
                    break
                handle = open(self.folder / f".extract-{bucket:02d}.lock", "a")  # noqa: SIM115 - held for the block
                try:
                    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    if not wait:
                        handle.close()
                        continue
                    if not said:
                        log.info("feature cache %s: another process is extracting; waiting for its entries",
                                 self.folder)
                        said = True
                    fcntl.flock(handle, fcntl.LOCK_EX)
                handles.append(handle)
                held.append(bucket)
        except OSError:
            for handle in handles:
                handle.close()
            handles, held = [], wanted
        try:
            yield held
        finally:
            for handle in handles:
                handle.close()  # closing the file releases its lock

    # housekeeping

    def size_bytes(self) -> int:
        """Disk used by this backbone's shards."""
        return sum(p.stat().st_size for p in self.folder.glob(f"*{SHARD_SUFFIX}")) if self.folder.exists() else 0

    def files(self) -> int:
        """Shard files on disk."""
        return len(list(self.folder.glob(f"*{SHARD_SUFFIX}"))) if self.folder.exists() else 0

    def _warn_legacy(self) -> None:
        """One line for a folder still holding the one-file-per-entry layout of earlier versions."""
        if self._warned_legacy or not self.folder.is_dir():
            return
        self._warned_legacy = True
        legacy = next((d for d in self.folder.iterdir() if d.is_dir() and len(d.name) == 2
                       and next(d.glob("*.npy"), None) is not None), None)
        if legacy is not None:
            log.warning("feature cache %s holds entries of the older one-file-per-entry layout (%s/*.npy), which"
                        " this version does not read: they are computed again into shards; free the space with"
                        " `make clean-cache` or rm -r %s/??", self.folder, legacy.name, self.folder)
