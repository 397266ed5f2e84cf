"""The feature store: backbone embeddings keyed by (backbone weights, image content, view), for millions of entries.

Entries live in shard files under `<root>/<backbone key>/` (`features.shards`): (n,) 64-bit entry codes
(`features.codes`) and (n, width) values (float32, or float16 with `features.storage=float16`).

Writing: a pass writes a shard per `SHARD_ENTRIES` new entries, and whatever it holds after `FLUSH_SECONDS`
(a killed pass loses at most one piece), atomically: processes and machines write side by side without coordination,
and an entry written twice is harmless. After a pass, the folder's index (`features.index`) is rewritten, and small
shards are merged into large ones (`compact`, also `leukexp-extract --compact`); both are safe while others read: a
reader that finds a shard gone re-reads the folder.

Reading: the index (and any shard written since) gives each wanted code's shard and row; rows are gathered shard by
shard in storage order (`features.rows`).

Distrust: a shard that fails its checks, or that holds NaN or infinite rows, is moved to `quarantine/` with one
warning naming it and why, and its entries are computed again, once. Two processes that would compute the same
entries take turns through lock buckets (`features.locks`).
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from collections.abc import Sequence
from contextlib import AbstractContextManager, suppress
from pathlib import Path

import numpy as np

from leukexp.features.index import INDEX_NAME, CodeIndex, read_index, write_index
from leukexp.features.locks import FolderLocks
from leukexp.features.rows import copy_rows, finite_rows, result_array, stream_rows
from leukexp.features.shards import SHARD_SUFFIX, STORAGE_DTYPES, DamagedShardError, Shard, write_tensors

log = logging.getLogger("leukexp")
QUARANTINE = "quarantine"
SHARD_ENTRIES = 16_384  # entries per shard a pass writes (the last one of a pass may be smaller)
FLUSH_SECONDS = 60.0  # queued entries older than this are written at the next batch (a kill loses one piece)
COMPACT_BYTES = 1 << 30  # compaction merges small shards into shards of up to this many bytes
COMPACT_MIN_FILES = 8  # after a pass, compaction runs once this many shards are below half of COMPACT_BYTES


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
        self._reset_index()
        self._pending_codes: list[np.ndarray] = []
        self._pending_values: list[np.ndarray] = []
        self._pending_since = 0.0
        self._pending_lock = threading.Lock()
        self._warned_legacy = False
        self.locks = FolderLocks(self.folder)

    # reading

    def _reset_index(self) -> None:
        self._index = CodeIndex()

    def _shard_names(self) -> list[str]:
        try:
            return sorted(entry.name for entry in os.scandir(self.folder)
                          if entry.name.endswith(SHARD_SUFFIX) and not entry.name.startswith(".")
                          and entry.name != INDEX_NAME)
        except (FileNotFoundError, NotADirectoryError):
            return []

    def refresh(self) -> None:
        """Index shards written since the last look (by this or any other process); at the first look, from the
        folder's index file where it is up to date."""
        names = self._shard_names()
        if not self._index.names:
            self._load_index(set(names))
        fresh = [name for name in names if name not in self._index.names]
        if fresh:
            self._add(fresh)
        self._warn_legacy()

    def _open(self, name: str) -> Shard | None:
        """A shard, or None (moved to quarantine if damaged; gone if another process compacted it)."""
        path = self.folder / name
        try:
            return Shard(path)
        except FileNotFoundError:
            return None
        except (DamagedShardError, OSError, ValueError) as error:
            self.quarantine(path, str(error) or type(error).__name__)
            return None

    def _add(self, names: Sequence[str]) -> None:
        self._index.add([(name, self._open(name)) for name in names])

    def _load_index(self, present: set[str]) -> None:
        """The index file's entries, when every shard it lists is present with the size it had."""
        self._index = read_index(self.folder, present, self._open) or CodeIndex()

    def save_index(self) -> None:
        """Write the folder's index (every code sorted, with its shard and row) for the next processes to start
        from; one writer at a time, the others skip (the next one covers their shards)."""
        with self.locks.exclusive(".index.lock") as mine:
            if not mine:
                return
            self._reset_index()
            self.refresh()
            write_index(self.folder, self._index)

    def entry_count(self) -> int:
        """Entries stored (after `refresh`). Not `__len__`: an empty store must not read as a missing one."""
        self.refresh()
        return len(np.unique(self._index.codes))

    def entry_codes(self) -> np.ndarray:
        """Every stored entry's code (see `entry_codes`), sorted, each once."""
        self.refresh()
        return np.unique(self._index.codes)

    def get_codes(self, codes: np.ndarray, width: int, count: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """Entries of many codes as one (len(codes), width) float32 array, and a mask of those found (an absent,
        other-width or damaged entry is a miss, and so computed again)."""
        for _ in range(3):  # a shard compacted away while this looked: the folder is read again
            self.refresh()
            result = self._gather(np.asarray(codes, np.uint64), width)
            if result is not None:
                break
            self._reset_index()
        else:
            result = np.zeros((len(codes), width), np.float32), np.zeros(len(codes), bool)
        values, found = result
        if count:
            self.hits += int(found.sum())
            self.misses += int(len(codes) - found.sum())
        return values, found

    def _gather(self, codes: np.ndarray, width: int) -> tuple[np.ndarray, np.ndarray] | None:
        """The rows of `codes` and a found mask; None when a shard went away meanwhile (read the folder again)."""
        values = result_array(len(codes), width)
        at = self._index.lookup(codes)
        found = at >= 0
        positions = np.flatnonzero(found)
        shard_of, row_of = self._index.shard_of[at[positions]], self._index.row_of[at[positions]]
        order = np.lexsort((row_of, shard_of))  # storage order
        positions, shard_of, row_of = positions[order], shard_of[order], row_of[order]
        bounds = np.flatnonzero(np.diff(shard_of)) + 1
        for where, shards, rows in zip(np.split(positions, bounds), np.split(shard_of, bounds),
                                       np.split(row_of, bounds), strict=True):
            if not len(where):
                continue
            shard = self._index.shards[int(shards[0])]
            if shard.shape[1] != width:
                found[where] = False
                continue
            try:
                if len(rows) * 4 >= shard.shape[0]:  # most of the shard: read it in order, no page fault per page
                    stream_rows(shard, rows, values, where)
                else:
                    copy_rows(shard.values, rows, values, where)
            except FileNotFoundError:
                return None
            except (OSError, ValueError) as error:  # cut short or replaced since it was checked
                self.quarantine(shard.path, f"unreadable ({error})")
                return None
        values[~found] = 0.0
        finite = finite_rows(values)
        if not finite.all():
            damaged = np.flatnonzero(found & ~finite)
            names = sorted({self._index.shards[int(s)].path.name for s in self._index.shard_of[at[damaged]]})
            for name in names:
                self.quarantine(self.folder / name, f"it holds NaN or infinite rows ({len(damaged)} wanted here)")
            values[damaged] = 0.0
            found[damaged] = False
            self._reset_index()  # the next look indexes the folder without the quarantined shards
        return values, found

    def recheck(self, codes: np.ndarray, width: int) -> tuple[np.ndarray, np.ndarray]:
        """`get_codes` again for entries just counted as misses (under `claim`): those another process wrote in
        the meantime count as hits instead, so every process's misses are the entries it computed."""
        values, found = self.get_codes(codes, width, count=False)
        self.hits += int(found.sum())
        self.misses -= int(found.sum())
        return values, found

    def quarantine(self, path: Path, reason: str) -> None:
        """Move a damaged shard aside (`quarantine/`), with one warning naming it and why; its entries are misses
        from now on, computed again once."""
        target = self.folder / QUARANTINE / f"{path.name}.{uuid.uuid4().hex[:6]}"
        try:
            target.parent.mkdir(exist_ok=True)
            os.rename(path, target)
            where = f"moved to {target}"
        except FileNotFoundError:
            return  # another process moved it first
        except OSError as error:
            where = f"left in place ({error.strerror})"
        log.warning("feature cache %s: shard %s is damaged: %s; %s, its entries are computed again", self.folder,
                    path.name, reason, where)
        self._index.names.setdefault(path.name, -1)

    # writing

    def put_codes(self, codes: np.ndarray, values: np.ndarray) -> None:
        """Queue entries; a full shard's worth is written at once, and everything queued once the oldest entry has
        waited `FLUSH_SECONDS` (`flush` writes the rest)."""
        with self._pending_lock:
            if not self._pending_codes:
                self._pending_since = time.monotonic()
            self._pending_codes.append(np.asarray(codes, np.uint64).reshape(-1))
            self._pending_values.append(np.asarray(values, np.float32).reshape(len(self._pending_codes[-1]), -1))
            queued = sum(len(c) for c in self._pending_codes)
            due = time.monotonic() - self._pending_since >= FLUSH_SECONDS
        if queued >= SHARD_ENTRIES or due:
            self.flush(whole_shards_only=not due)

    def flush(self, whole_shards_only: bool = False) -> None:
        """Write the queued entries as shard files (atomically: a killed writer leaves none half-written); with
        `whole_shards_only`, only full shards, the rest stays queued."""
        with self._pending_lock:
            if not self._pending_codes:
                return
            codes, values = np.concatenate(self._pending_codes), np.concatenate(self._pending_values)
            keep = len(codes) % SHARD_ENTRIES if whole_shards_only else 0
            self._pending_codes = [codes[len(codes) - keep:]] if keep else []
            self._pending_values = [values[len(codes) - keep:]] if keep else []
            codes, values = codes[:len(codes) - keep], values[:len(codes) - keep]
        dtype, _ = STORAGE_DTYPES[self.storage]
        for start in range(0, len(codes), SHARD_ENTRIES):
            path = self.folder / f"part-{os.getpid()}-{uuid.uuid4().hex[:12]}{SHARD_SUFFIX}"
            write_tensors(path, {"keys": codes[start:start + SHARD_ENTRIES],
                                 "values": np.asarray(values[start:start + SHARD_ENTRIES], dtype)})

    # housekeeping

    def compact(self, min_files: int = 2) -> int:
        """Merge shards below half of `COMPACT_BYTES` into shards of up to `COMPACT_BYTES` (an entry stored twice
        once), then rewrite the index; returns how many files fewer the folder holds. Safe while others read and
        write: the merged shards are written before the old ones go, and a reader that misses one reads the folder
        again. One compaction at a time per folder (another one running: nothing done)."""
        with self.locks.exclusive(".compact.lock") as mine:
            if not mine:
                return 0
            self._reset_index()
            self.refresh()
            groups: list[list[Shard]] = []
            for shard in (s for s in self._index.shards if s.size < COMPACT_BYTES // 2):
                fits = [g for g in groups if g[0].shape[1] == shard.shape[1] and g[0].dtype == shard.dtype
                        and sum(s.size for s in g) + shard.size <= COMPACT_BYTES]
                if fits:
                    fits[0].append(shard)
                else:
                    groups.append([shard])
            groups = [group for group in groups if len(group) >= 2]
            if sum(len(group) for group in groups) < min_files:
                return 0
            removed = 0
            for group in groups:
                self._merge(group)
                for shard in group:
                    with suppress(FileNotFoundError):
                        shard.path.unlink()
                        removed += 1
            self.save_index()
            log.info("feature cache %s: %d shards merged into %d", self.folder, removed, len(groups))
            return removed - len(groups)

    def _merge(self, group: list[Shard]) -> None:
        """One shard holding the entries of `group`, in their order (an entry stored twice: its first copy)."""
        codes = np.concatenate([shard.codes for shard in group])
        _, first = np.unique(codes, return_index=True)
        keep = np.zeros(len(codes), bool)
        keep[first] = True
        values = np.concatenate([np.asarray(shard.values) for shard in group])[keep]
        write_tensors(self.folder / f"part-{os.getpid()}-{uuid.uuid4().hex[:12]}{SHARD_SUFFIX}",
                      {"keys": codes[keep], "values": values})

    def settle(self) -> None:
        """After a pass: the index rewritten, and small shards merged once there are `COMPACT_MIN_FILES` of them."""
        if self.unwritable or not self.folder.is_dir():
            return
        try:
            if not self.compact(COMPACT_MIN_FILES):
                self.save_index()
        except OSError as error:  # a read-only or full disk: the shards stay as they are, readers index them
            log.warning("feature cache %s: index not written (%s)", self.folder, error.strerror or error)

    def check_locking(self) -> None:
        """`FolderLocks.check_locking` of this folder."""
        self.locks.check_locking()

    def claim(self, buckets: Sequence[int] | None = None, wait: bool = True, limit: int | None = None
              ) -> AbstractContextManager[list[int]]:
        """`FolderLocks.claim` of this folder: hold extraction lock buckets for the block."""
        return self.locks.claim(buckets, wait, limit)

    # housekeeping

    def size_bytes(self) -> int:
        """Disk used by this backbone's shards."""
        return sum(p.stat().st_size for p in self._paths())

    def files(self) -> int:
        """Shard files on disk."""
        return len(self._paths())

    def _paths(self) -> list[Path]:
        return [self.folder / name for name in self._shard_names()]

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
