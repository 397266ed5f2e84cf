"""The feature store: backbone embeddings keyed by (backbone weights, image content, view), for millions of entries.

Entries live in shard files under `<root>/<backbone key>/`, each a safetensors file holding a (n,) `keys` tensor of
64-bit entry codes and a (n, width) `values` tensor (float32, or float16 with `features.storage=float16`). An entry's
code is a 64-bit hash of its image's content hash XOR one of its view's key (`entry_codes`): computed for a
whole pass with NumPy, looked up with `searchsorted`, no Python string per entry on the hot path.

Writing: a pass writes a shard per `SHARD_ENTRIES` new entries, and whatever it holds after `FLUSH_SECONDS`
(a killed pass loses at most one piece), atomically (a staging file renamed into place): processes and machines
write side by side without coordination, and an entry written twice is harmless. After a pass, the folder's index
(`index.safetensors`: every code sorted, with its shard and row) is rewritten, and small shards are merged into
large ones (`compact`, also `leukexp-extract --compact`); both are safe while others read: a reader that finds a
shard gone re-reads the folder.

Reading: the index (and any shard written since) gives each wanted code's shard and row; rows are gathered shard by
shard in storage order, runs of consecutive rows copied as slices straight into the result.

Distrust: only regular files inside the folder are opened (no links, devices or pipes; never a blocking open); a
header must fit in its file and agree with its tensors before anything is allocated; a shard that does not, or that
holds NaN or infinite rows, is moved to `quarantine/` with one warning naming it and why, and its entries are
computed again, once.

Two processes that would compute the same entries take turns through lock buckets (`claim`): the embeddings are
spread over `LOCK_BUCKETS` buckets by image hash; a process claims a free bucket, re-reads it, computes what is
still missing and writes it before the next one, so parallel jobs split a cold extraction between them and each
embedding is computed once. The locks are the kernel's (`flock`): a killed holder releases them. A folder whose
file system does not honour `flock` between processes is refused with one line (`check_locking`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import mmap
import os
import stat
import struct
import subprocess
import sys
import threading
import time
import uuid
import zlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import numpy as np

from leukexp.errors import LeukexpError
from leukexp.files import atomic_path

log = logging.getLogger("leukexp")
SHARD_SUFFIX = ".safetensors"
INDEX_NAME = "index" + SHARD_SUFFIX
QUARANTINE = "quarantine"
SHARD_ENTRIES = 16_384  # entries per shard a pass writes (the last one of a pass may be smaller)
FLUSH_SECONDS = 60.0  # queued entries older than this are written at the next batch (a kill loses one piece)
COMPACT_BYTES = 1 << 30  # compaction merges small shards into shards of up to this many bytes
COMPACT_MIN_FILES = 8  # after a pass, compaction runs once this many shards are below half of COMPACT_BYTES
LOCK_BUCKETS = 16  # extraction lock buckets per backbone folder, by image hash
MAX_HEADER = 256 << 20  # a safetensors header longer than this is refused unread
MIN_RUN = 16  # rows stored and wanted consecutively from this many on are copied as one slice
GATHER_ROWS = 1 << 16  # rows of other reads gathered at a time (bounds the temporary)
STORAGE_DTYPES = {"float32": (np.float32, "F32"), "float16": (np.float16, "F16")}
_SAFETENSORS_DTYPES = {"F32": np.float32, "F16": np.float16, "U64": np.uint64, "U32": np.uint32, "I64": np.int64}


class DamagedShardError(Exception):
    """A shard file that is not what it claims; the message says why."""


def bucket_of(image_key: str) -> int:
    """The lock bucket of an image content hash (hex; any other key by its CRC-32, the same in every process, unlike
    Python's salted `hash`)."""
    try:
        return int(image_key[:8], 16) % LOCK_BUCKETS
    except ValueError:
        return zlib.crc32(image_key.encode()) % LOCK_BUCKETS


def image_codes(image_keys: Sequence[str]) -> np.ndarray:
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


def _pair_codes(pairs: Sequence[tuple[str, str]]) -> np.ndarray:
    if not pairs:
        return np.zeros(0, np.uint64)
    images, views = zip(*pairs, strict=True)
    return entry_codes(images, views)


@dataclass(frozen=True)
class _Tensor:
    """One tensor of a safetensors file: where its bytes lie, checked against the file."""

    dtype: type
    shape: tuple[int, ...]
    offset: int


def _read_header(handle: IO[bytes], size: int) -> tuple[dict, int]:
    """A safetensors header, bounded by the file's size before it is read: (header, start of the data)."""
    raw = handle.read(8)
    if len(raw) < 8:
        raise DamagedShardError("shorter than a header")
    (length,) = struct.unpack("<Q", raw)
    if length > min(size - 8, MAX_HEADER):
        raise DamagedShardError(f"its header claims {length:,} bytes in a file of {size:,}")
    try:
        header = json.loads(handle.read(length))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise DamagedShardError(f"its header is not JSON ({type(error).__name__})") from None
    if not isinstance(header, dict):
        raise DamagedShardError("its header is not a mapping")
    return header, 8 + length


def _tensor(header: dict, name: str, start: int, size: int) -> _Tensor:
    """Tensor `name` of a header, its dtype, shape and offsets agreeing with each other and with the file."""
    meta = header.get(name)
    if not isinstance(meta, dict):
        raise DamagedShardError(f"no {name} tensor")
    dtype = _SAFETENSORS_DTYPES.get(meta.get("dtype"))
    shape, offsets = meta.get("shape"), meta.get("data_offsets")
    if dtype is None:
        raise DamagedShardError(f"{name}: dtype {meta.get('dtype')!r}")
    if (not isinstance(shape, list) or not all(type(n) is int and n >= 0 for n in shape)
            or not isinstance(offsets, list) or len(offsets) != 2 or not all(type(n) is int for n in offsets)):
        raise DamagedShardError(f"{name}: shape {shape!r} or offsets {offsets!r} are not counts")
    nbytes = int(np.prod(shape, dtype=object)) * np.dtype(dtype).itemsize
    if offsets[1] - offsets[0] != nbytes or offsets[0] < 0 or start + offsets[1] > size:
        raise DamagedShardError(f"{name}: {shape} {meta['dtype']} does not fit its {size:,}-byte file")
    return _Tensor(dtype, tuple(shape), start + offsets[0])


def _index_matches(arrays: dict[str, np.ndarray], shards: Sequence[Shard]) -> bool:
    """Whether every code of an index is the code its shard holds at its row (the shards' own keys are the truth)."""
    for number, shard in enumerate(shards):
        mine = arrays["shard"] == number
        if mine.any() and not np.array_equal(shard.codes[arrays["row"][mine].astype(np.int64)], arrays["codes"][mine]):
            return False
    return True


def _open_regular(path: Path) -> tuple[IO[bytes], int]:
    """A regular file opened for reading without following a link or blocking (a pipe, a device), and its size."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        raise
    if not stat.S_ISREG(info.st_mode):
        raise DamagedShardError("not a regular file (a link, device or pipe)")
    descriptor = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    handle = os.fdopen(descriptor, "rb")
    size = os.fstat(handle.fileno()).st_size
    if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
        handle.close()
        raise DamagedShardError("not a regular file")
    return handle, size


class Shard:
    """One shard file: its entry codes and its values, mapped read-only; checked against its size when opened."""

    def __init__(self, path: Path) -> None:
        handle, size = _open_regular(path)
        with handle:
            header, start = _read_header(handle, size)
            values = _tensor(header, "values", start, size)
            if len(values.shape) != 2 or values.dtype not in (np.float32, np.float16):
                raise DamagedShardError(f"values: {values.shape} is not a (n, width) float table")
            legacy = None
            if "keys" in header:
                keys = _tensor(header, "keys", start, size)
                if keys.dtype is not np.uint64 or keys.shape != values.shape[:1]:
                    raise DamagedShardError(f"keys: {keys.shape} for {values.shape[0]} rows")
            else:  # the first shard layout: the keys as `<image hash>_<view key>` strings in the header
                legacy = self._legacy_codes(header, values.shape[0])
        self.path = path
        self.size = size
        self.shape = values.shape
        self.dtype = values.dtype
        self._values_at = values.offset
        self._codes = legacy
        self._codes_at = None if legacy is not None else keys.offset
        self._values: np.ndarray | None = None

    @staticmethod
    def _legacy_codes(header: dict, rows: int) -> np.ndarray:
        try:
            keys = json.loads(header["__metadata__"]["keys"])
        except (KeyError, TypeError, json.JSONDecodeError):
            raise DamagedShardError("no keys") from None
        if not isinstance(keys, list) or len(keys) != rows or not all(isinstance(k, str) and "_" in k for k in keys):
            raise DamagedShardError(f"{len(keys) if isinstance(keys, list) else 'no'} keys for {rows} rows")
        return entry_codes(*zip(*(key.split("_", 1) for key in keys), strict=True)) if rows else np.zeros(0, np.uint64)

    @property
    def codes(self) -> np.ndarray:
        """The (n,) entry codes, in row order."""
        if self._codes is None:
            self._codes = np.fromfile(self.path, np.uint64, self.shape[0], offset=self._codes_at)
        return self._codes

    @property
    def values(self) -> np.ndarray:
        """The (n, width) values as a plain array over a read-only map (slicing a `np.memmap` costs microseconds a
        slice); a small read maps lazily, a large one is streamed instead (`_stream_rows`)."""
        if self._values is not None:
            return self._values
        if not self.shape[0]:
            self._values = np.zeros(self.shape, self.dtype)
            return self._values
        with open(self.path, "rb") as handle:
            mapping = mmap.mmap(handle.fileno(), 0, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ)
        if len(mapping) < self._values_at + int(np.prod(self.shape)) * np.dtype(self.dtype).itemsize:
            raise ValueError(f"{self.path.name} is shorter than its header says")
        self._values = np.frombuffer(mapping, self.dtype, int(np.prod(self.shape)), self._values_at
                                     ).reshape(self.shape)
        return self._values


def write_tensors(path: Path, tensors: dict[str, np.ndarray], metadata: dict[str, str] | None = None) -> None:
    """A safetensors file, atomically, by plain file writes (which let other threads run)."""
    header: dict[str, object] = {"__metadata__": metadata} if metadata else {}
    offset = 0
    codes = {np.dtype(v): k for k, v in _SAFETENSORS_DTYPES.items()}
    for name, array in tensors.items():
        header[name] = {"dtype": codes[array.dtype], "shape": list(array.shape),
                        "data_offsets": [offset, offset + array.nbytes]}
        offset += array.nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # the data starts 8-byte aligned, as safetensors writes it
    with atomic_path(path) as staging, open(staging, "wb") as handle:
        handle.write(struct.pack("<Q", len(raw)))
        handle.write(raw)
        for array in tensors.values():
            handle.write(memoryview(np.ascontiguousarray(array)).cast("B"))


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
        self._locking_checked = False

    # reading

    def _reset_index(self) -> None:
        self._shards: list[Shard] = []
        self._names: dict[str, int] = {}
        self._codes = np.zeros(0, np.uint64)  # every stored code, sorted (an entry stored twice: both)
        self._shard_of = np.zeros(0, np.int32)
        self._row_of = np.zeros(0, np.int64)
        self._starts: tuple[int, np.ndarray] | None = None  # (shift, where each top-bits prefix starts in _codes)

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
        if not self._names:
            self._load_index(set(names))
        fresh = [name for name in names if name not in self._names]
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
        codes, shards, rows = [], [], []
        for name in names:
            shard = self._open(name)
            self._names[name] = -1
            if shard is None:
                continue
            number = len(self._shards)
            self._shards.append(shard)
            self._names[name] = number
            codes.append(shard.codes)
            shards.append(np.full(shard.shape[0], number, np.int32))
            rows.append(np.arange(shard.shape[0], dtype=np.int64))
        if not codes:
            return
        new = np.concatenate(codes)
        order = np.argsort(new, kind="stable")
        new, new_shards, new_rows = new[order], np.concatenate(shards)[order], np.concatenate(rows)[order]
        at = np.searchsorted(self._codes, new, side="right")  # after equal codes: the earlier entry stays first
        self._starts = None
        self._codes = np.insert(self._codes, at, new)
        self._shard_of = np.insert(self._shard_of, at, new_shards)
        self._row_of = np.insert(self._row_of, at, new_rows)

    def _load_index(self, present: set[str]) -> None:
        """The index file's entries, when every shard it lists is present with the size it had."""
        path = self.folder / INDEX_NAME
        try:
            handle, size = _open_regular(path)
            with handle:
                header, start = _read_header(handle, size)
                tensors = {name: _tensor(header, name, start, size) for name in ("codes", "shard", "row")}
                listed = json.loads(header["__metadata__"]["shards"])
                sizes = json.loads(header["__metadata__"]["sizes"])
        except FileNotFoundError:
            return
        except (DamagedShardError, OSError, KeyError, TypeError, ValueError) as error:
            log.warning("feature cache %s: its index is unreadable (%s); the shards are indexed instead", self.folder,
                        error)
            return
        rows = tensors["codes"].shape[0]
        if (not isinstance(listed, list) or not set(listed) <= present or len(sizes) != len(listed)
                or any(t.shape != (rows,) for t in tensors.values())):
            return  # out of date (a shard compacted or quarantined since): the shards are indexed instead
        shards = []
        for name, expected in zip(listed, sizes, strict=True):
            shard = self._open(name)
            if shard is None or shard.size != expected:
                self._reset_index()
                return
            shards.append(shard)
        arrays = {name: np.fromfile(path, t.dtype, rows, offset=t.offset) for name, t in tensors.items()}
        if rows and (np.any(np.diff(arrays["codes"]) < 0) or arrays["shard"].max() >= len(shards)
                     or np.any(arrays["row"] >= np.array([s.shape[0] for s in shards])[arrays["shard"]])):
            log.warning("feature cache %s: its index disagrees with its shards; the shards are indexed instead",
                        self.folder)
            return
        if not _index_matches(arrays, shards):  # rows edited or swapped: an image would get another's features
            log.warning("feature cache %s: its index names rows whose codes differ (edited or damaged); the shards"
                        " are indexed instead", self.folder)
            return
        self._shards = shards
        self._names = {name: number for number, name in enumerate(listed)}
        self._starts = None
        self._codes = arrays["codes"]
        self._shard_of = arrays["shard"].astype(np.int32)
        self._row_of = arrays["row"].astype(np.int64)

    def save_index(self) -> None:
        """Write the folder's index (every code sorted, with its shard and row) for the next processes to start
        from; one writer at a time, the others skip (the next one covers their shards)."""
        with self._exclusive(".index.lock") as mine:
            if not mine:
                return
            self._reset_index()
            self.refresh()
            present = [(name, number) for name, number in self._names.items() if number >= 0]
            renumber = np.zeros(len(self._shards), np.uint32)
            for new, (_, number) in enumerate(present):
                renumber[number] = new
            write_tensors(self.folder / INDEX_NAME,
                          {"codes": self._codes, "shard": renumber[self._shard_of],
                           "row": self._row_of.astype(np.uint32)},
                          {"shards": json.dumps([name for name, _ in present]),
                           "sizes": json.dumps([self._shards[number].size for _, number in present])})

    def entry_count(self) -> int:
        """Entries stored (after `refresh`). Not `__len__`: an empty store must not read as a missing one."""
        self.refresh()
        return len(np.unique(self._codes))

    def entry_codes(self) -> np.ndarray:
        """Every stored entry's code (see `entry_codes`), sorted, each once."""
        self.refresh()
        return np.unique(self._codes)

    def get_many(self, keys: Sequence[tuple[str, str]], width: int, count: bool = True
                 ) -> tuple[np.ndarray, np.ndarray]:
        """`get_codes` of `(image_key, view_key)` pairs."""
        return self.get_codes(_pair_codes(keys), width, count)

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
        values = _result_array(len(codes), width)
        at = self._lookup(codes)
        found = at >= 0
        positions = np.flatnonzero(found)
        shard_of, row_of = self._shard_of[at[positions]], self._row_of[at[positions]]
        order = np.lexsort((row_of, shard_of))  # storage order
        positions, shard_of, row_of = positions[order], shard_of[order], row_of[order]
        bounds = np.flatnonzero(np.diff(shard_of)) + 1
        for where, shards, rows in zip(np.split(positions, bounds), np.split(shard_of, bounds),
                                       np.split(row_of, bounds), strict=True):
            if not len(where):
                continue
            shard = self._shards[int(shards[0])]
            if shard.shape[1] != width:
                found[where] = False
                continue
            try:
                if len(rows) * 4 >= shard.shape[0]:  # most of the shard: read it in order, no page fault per page
                    _stream_rows(shard, rows, values, where)
                else:
                    _copy_rows(shard.values, rows, values, where)
            except FileNotFoundError:
                return None
            except (OSError, ValueError) as error:  # cut short or replaced since it was checked
                self.quarantine(shard.path, f"unreadable ({error})")
                return None
        values[~found] = 0.0
        finite = _finite_rows(values)
        if not finite.all():
            damaged = np.flatnonzero(found & ~finite)
            names = sorted({self._shards[int(s)].path.name for s in self._shard_of[at[damaged]]})
            for name in names:
                self.quarantine(self.folder / name, f"it holds NaN or infinite rows ({len(damaged)} wanted here)")
            values[damaged] = 0.0
            found[damaged] = False
            self._reset_index()  # the next look indexes the folder without the quarantined shards
        return values, found

    def _lookup(self, codes: np.ndarray) -> np.ndarray:
        """Where each code is in the sorted `_codes` (its first copy), -1 where absent. The codes are uniform, so a
        table of where each top-bits prefix starts leaves about one candidate per code: a few vectorized probes
        instead of a binary search per code."""
        at = np.full(len(codes), -1, np.int64)
        if not len(self._codes) or not len(codes):
            return at
        if self._starts is None:
            bits = min(max(1, len(self._codes).bit_length()), 30)
            shift = 64 - bits
            prefixes = (self._codes >> np.uint64(shift)).astype(np.int64)
            self._starts = shift, np.concatenate([[0], np.cumsum(np.bincount(prefixes, minlength=1 << bits))])
        shift, starts = self._starts
        prefixes = (codes >> np.uint64(shift)).astype(np.int64)
        low, high = starts[prefixes], starts[prefixes + 1]
        probe = np.minimum(low, len(self._codes) - 1)  # first probe of every code at once: most are settled here
        hit = (self._codes[probe] == codes) & (low < high)
        at[hit] = probe[hit]
        pending = np.flatnonzero(~hit & (low + 1 < high))
        while len(pending):  # codes sharing a prefix: the next candidates
            low[pending] += 1
            probe = low[pending]
            hit = self._codes[probe] == codes[pending]
            at[pending[hit]] = probe[hit]
            pending = pending[~hit]
            pending = pending[low[pending] + 1 < high[pending]]
        return at

    def recheck(self, keys: Sequence[tuple[str, str]] | np.ndarray, width: int) -> tuple[np.ndarray, np.ndarray]:
        """`get_codes` again for entries just counted as misses (under `claim`): those another process wrote in
        the meantime count as hits instead, so every process's misses are the entries it computed."""
        codes = keys if isinstance(keys, np.ndarray) else _pair_codes(keys)
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
        self._names.setdefault(path.name, -1)

    # writing

    def put_many(self, keys: Sequence[tuple[str, str]], values: np.ndarray) -> None:
        """`put_codes` of `(image_key, view_key)` pairs."""
        self.put_codes(_pair_codes(keys), values)

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

    def put(self, image_key: str, view_key: str, value: np.ndarray) -> None:
        """Store one embedding (written with the next shard; `flush` to write it now)."""
        self.put_many([(image_key, view_key)], np.asarray(value, np.float32).reshape(1, -1))

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
        with self._exclusive(".compact.lock") as mine:
            if not mine:
                return 0
            self._reset_index()
            self.refresh()
            groups: list[list[Shard]] = []
            for shard in (s for s in self._shards if s.size < COMPACT_BYTES // 2):
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

    @contextmanager
    def _exclusive(self, name: str) -> Iterator[bool]:
        """A non-blocking `flock` on `name` in the folder: yields whether this process holds it."""
        import fcntl

        self.folder.mkdir(parents=True, exist_ok=True)
        with open(self.folder / name, "a") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                yield False
                return
            yield True

    # coordination

    def check_locking(self) -> None:
        """Before the first claim: the folder's file system must refuse a second process a lock this one holds
        (some network mounts grant every `flock`, and parallel jobs would then compute and write the same entries
        twice). Checked once per process and folder; one line when it does not."""
        if self._locking_checked:
            return
        self._locking_checked = True
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            with self._exclusive(".flock-check") as mine:
                refused = not mine or _another_process_refused(self.folder / ".flock-check")
        except OSError:
            return  # a folder that cannot hold lock files: not locked, and not written (see `claim`)
        if not refused:
            raise LeukexpError(f"features.dir: the file system under {self.folder} does not honour flock between"
                               " processes (a second process was granted a held lock); put features.dir on a local"
                               " disk, NFSv4, or Lustre mounted with -o flock")

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


def _copy_rows(source: np.ndarray, rows: np.ndarray, target: np.ndarray, where: np.ndarray) -> None:
    """target[where] = source[rows], rows in storage order: runs of consecutive rows (and places) as slices, the rest
    gathered a bounded chunk at a time."""
    if len(rows) == 1:
        target[where[0]] = source[rows[0]]
        return
    breaks = np.flatnonzero((np.diff(rows) != 1) | (np.diff(where) != 1)) + 1
    starts = np.concatenate([[0], breaks])
    lengths = np.diff(np.concatenate([starts, [len(rows)]]))
    long = lengths >= MIN_RUN
    for start, length in zip(starts[long].tolist(), lengths[long].tolist(), strict=True):
        row, place = int(rows[start]), int(where[start])
        target[place:place + length] = source[row:row + length]
    if long.all():
        return
    short = np.ones(len(rows), bool)
    for start, length in zip(starts[long].tolist(), lengths[long].tolist(), strict=True):
        short[start:start + length] = False
    rest_rows, rest_where = rows[short], where[short]
    for start in range(0, len(rest_rows), GATHER_ROWS):
        target[rest_where[start:start + GATHER_ROWS]] = source[rest_rows[start:start + GATHER_ROWS]]


STREAM_BYTES = 32 << 20  # the buffer a shard is read through when most of it is wanted


def _stream_rows(shard: Shard, rows: np.ndarray, target: np.ndarray, where: np.ndarray) -> None:
    """target[where] = shard rows `rows` (sorted), reading the shard front to back: each stretch of the file is one
    `preadv` that scatters wanted rows straight into their places in the result (runs of rows as one piece) and the
    rows between into a scratch buffer, so the kernel copies from its page cache as for `np.load`, with no page
    fault per mapped page and no temporary. A float16 shard goes through a buffer (converted on the copy)."""
    count, width = shard.shape
    row_bytes = width * np.dtype(shard.dtype).itemsize
    handle, size = _open_regular(shard.path)
    with handle:
        if size < shard._values_at + count * row_bytes:
            raise ValueError(f"{shard.path.name} is shorter than its header says")
        if shard.dtype != target.dtype or not target.flags.c_contiguous:
            _buffered_rows(handle, shard, rows, target, where)
            return
        descriptor = handle.fileno()
        scratch = memoryview(bytearray(min(STREAM_BYTES, count * row_bytes)))
        rows_out = memoryview(target.reshape(-1).view(np.uint8))
        breaks = np.flatnonzero((np.diff(rows) != 1) | (np.diff(where) != 1)) + 1
        starts = np.concatenate([[0], breaks])
        lengths = np.diff(np.concatenate([starts, [len(rows)]])).tolist()
        limit, base = len(scratch), shard._values_at
        pieces: list[memoryview] = []
        first = position = 0  # the file row the pending preadv starts at, and where it has reached
        for row, place, length in zip(rows[starts].tolist(), where[starts].tolist(), lengths, strict=True):
            gap = (row - position) * row_bytes
            if pieces and (gap > limit or len(pieces) >= IOV_LIMIT - 2):
                _preadv(descriptor, pieces, base + first * row_bytes)
                pieces = []
            if not pieces:
                first, gap = row, 0
            if gap:
                pieces.append(scratch[:gap])
            pieces.append(rows_out[place * row_bytes:(place + length) * row_bytes])
            position = row + length
        if pieces:
            _preadv(descriptor, pieces, shard._values_at + first * row_bytes)


IOV_LIMIT = min(1024, os.sysconf("SC_IOV_MAX")) if hasattr(os, "sysconf") else 1024


def _preadv(descriptor: int, pieces: list[memoryview], offset: int) -> None:
    """One `preadv` of consecutive file bytes into `pieces`; after a short read (a signal) the rest is read again."""
    wanted = sum(len(piece) for piece in pieces)
    done = os.preadv(descriptor, pieces, offset)
    if done == wanted:
        return
    if done == 0:
        raise ValueError("a shard ended early")
    skip, rest = done, []
    for piece in pieces:
        if skip >= len(piece):
            skip -= len(piece)
        else:
            rest.append(piece[skip:])
            skip = 0
    _preadv(descriptor, rest, offset + done)


def _buffered_rows(handle: IO[bytes], shard: Shard, rows: np.ndarray, target: np.ndarray, where: np.ndarray
                   ) -> None:
    """target[where] = rows of the shard, read a stretch at a time through one reused buffer."""
    count, width = shard.shape
    row_bytes = width * np.dtype(shard.dtype).itemsize
    chunk = max(1, STREAM_BYTES // row_bytes)
    buffer = np.empty((min(chunk, count), width), shard.dtype)
    bounds = np.searchsorted(rows, np.arange(0, count + chunk, chunk))
    for number, (low, high) in enumerate(zip(bounds[:-1].tolist(), bounds[1:].tolist(), strict=False)):
        if low == high:
            continue  # nothing wanted in this stretch: not read
        start = number * chunk
        length = min(chunk, count - start)
        view = memoryview(buffer[:length]).cast("B")
        if os.preadv(handle.fileno(), [view], shard._values_at + start * row_bytes) != len(view):
            raise ValueError(f"{shard.path.name} ended early")
        _copy_rows(buffer[:length], rows[low:high] - start, target, where[low:high])


def _result_array(rows: int, width: int) -> np.ndarray:
    """An empty (rows, width) float32 array (plain pages: asking for huge pages made the kernel compact memory on
    every fault here, 20x slower)."""
    return np.empty((rows, width), np.float32)


def _finite_rows(values: np.ndarray) -> np.ndarray:
    """Which rows hold only finite numbers, checked a bounded block at a time (no full-size temporary)."""
    finite = np.ones(len(values), bool)
    step = max(1, (16 << 20) // max(1, values.shape[1] * values.itemsize))
    for start in range(0, len(values), step):
        block = values[start:start + step]
        if not np.isfinite(block.sum(axis=1)).all():  # one pass; rows with NaN or inf sum to NaN or inf
            finite[start:start + step] = np.isfinite(block).all(axis=1)
    return finite


def _another_process_refused(path: Path) -> bool:
    """Whether a second process is refused `flock` on `path` (held by this one)."""
    probe = ("import fcntl, sys\nwith open(sys.argv[1], 'a') as handle:\n    try:\n"
             "        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)\n    except BlockingIOError:\n"
             "        sys.exit(3)\nsys.exit(0)")
    try:
        done = subprocess.run([sys.executable, "-S", "-c", probe, str(path)], timeout=30, capture_output=True)
    except (OSError, subprocess.TimeoutExpired):
        return True  # no second process to ask: nothing known against the file system
    return done.returncode == 3
