"""The store's index: every stored entry code sorted, with the shard and row that hold it.

In memory it answers where each wanted code lies (`CodeIndex.lookup`); on disk (`index.safetensors` in the folder)
it lets the next process start without opening every shard. An index file is trusted only when every shard it lists
is present with the size it had and every code it names is the code its shard holds at that row.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from leukexp.features.shards import (
    SHARD_SUFFIX,
    DamagedShardError,
    Shard,
    open_regular,
    read_header,
    tensor_at,
    write_tensors,
)

log = logging.getLogger("leukexp")
INDEX_NAME = "index" + SHARD_SUFFIX


class CodeIndex:
    """The shards of a folder and their codes, sorted (an entry stored twice: both, the earlier first)."""

    def __init__(self) -> None:
        self.shards: list[Shard] = []
        self.names: dict[str, int] = {}  # every shard name looked at: its number in `shards`, -1 if unusable
        self.codes = np.zeros(0, np.uint64)
        self.shard_of = np.zeros(0, np.int32)
        self.row_of = np.zeros(0, np.int64)
        self._starts: tuple[int, np.ndarray] | None = None  # (shift, where each top-bits prefix starts in codes)

    def add(self, opened: Sequence[tuple[str, Shard | None]]) -> None:
        """Index shards just opened (None: unusable, remembered as looked at)."""
        codes, shards, rows = [], [], []
        for name, shard in opened:
            self.names[name] = -1
            if shard is None:
                continue
            number = len(self.shards)
            self.shards.append(shard)
            self.names[name] = number
            codes.append(shard.codes)
            shards.append(np.full(shard.shape[0], number, np.int32))
            rows.append(np.arange(shard.shape[0], dtype=np.int64))
        if not codes:
            return
        new = np.concatenate(codes)
        order = np.argsort(new, kind="stable")
        new, new_shards, new_rows = new[order], np.concatenate(shards)[order], np.concatenate(rows)[order]
        at = np.searchsorted(self.codes, new, side="right")  # after equal codes: the earlier entry stays first
        self._starts = None
        self.codes = np.insert(self.codes, at, new)
        self.shard_of = np.insert(self.shard_of, at, new_shards)
        self.row_of = np.insert(self.row_of, at, new_rows)

    def lookup(self, codes: np.ndarray) -> np.ndarray:
        """Where each code is in the sorted `codes` (its first copy), -1 where absent. The codes are uniform, so a
        table of where each top-bits prefix starts leaves about one candidate per code: a few vectorized probes
        instead of a binary search per code."""
        at = np.full(len(codes), -1, np.int64)
        if not len(self.codes) or not len(codes):
            return at
        if self._starts is None:
            bits = min(max(1, len(self.codes).bit_length()), 30)
            shift = 64 - bits
            prefixes = (self.codes >> np.uint64(shift)).astype(np.int64)
            self._starts = shift, np.concatenate([[0], np.cumsum(np.bincount(prefixes, minlength=1 << bits))])
        shift, starts = self._starts
        prefixes = (codes >> np.uint64(shift)).astype(np.int64)
        low, high = starts[prefixes], starts[prefixes + 1]
        probe = np.minimum(low, len(self.codes) - 1)  # first probe of every code at once: most are settled here
        hit = (self.codes[probe] == codes) & (low < high)
        at[hit] = probe[hit]
        pending = np.flatnonzero(~hit & (low + 1 < high))
        while len(pending):  # codes sharing a prefix: the next candidates
            low[pending] += 1
            probe = low[pending]
            hit = self.codes[probe] == codes[pending]
            at[pending[hit]] = probe[hit]
            pending = pending[~hit]
            pending = pending[low[pending] + 1 < high[pending]]
        return at


def read_index(folder: Path, present: set[str], open_shard: Callable[[str], Shard | None]) -> CodeIndex | None:
    """The folder's index file as a `CodeIndex`, when every shard it lists is present with the size it had and its
    rows agree with them; None otherwise (the shards are indexed instead)."""
    path = folder / INDEX_NAME
    try:
        handle, size = open_regular(path)
        with handle:
            header, start = read_header(handle, size)
            tensors = {name: tensor_at(header, name, start, size) for name in ("codes", "shard", "row")}
            listed = json.loads(header["__metadata__"]["shards"])
            sizes = json.loads(header["__metadata__"]["sizes"])
    except FileNotFoundError:
        return None
    except (DamagedShardError, OSError, KeyError, TypeError, ValueError) as error:
        log.warning("feature cache %s: its index is unreadable (%s); the shards are indexed instead", folder, error)
        return None
    rows = tensors["codes"].shape[0]
    if (not isinstance(listed, list) or not set(listed) <= present or len(sizes) != len(listed)
            or any(t.shape != (rows,) for t in tensors.values())):
        return None  # out of date (a shard compacted or quarantined since)
    shards = []
    for name, expected in zip(listed, sizes, strict=True):
        shard = open_shard(name)
        if shard is None or shard.size != expected:
            return None
        shards.append(shard)
    arrays: dict[str, np.ndarray] = {name: np.fromfile(path, t.dtype, rows, offset=t.offset)
                                     for name, t in tensors.items()}
    if rows and (np.any(np.diff(arrays["codes"]) < 0) or arrays["shard"].max() >= len(shards)
                 or np.any(arrays["row"] >= np.array([s.shape[0] for s in shards])[arrays["shard"]])):
        log.warning("feature cache %s: its index disagrees with its shards; the shards are indexed instead", folder)
        return None
    if not index_matches(arrays, shards):  # rows edited or swapped: an image would get another's features
        log.warning("feature cache %s: its index names rows whose codes differ (edited or damaged); the shards"
                    " are indexed instead", folder)
        return None
    index = CodeIndex()
    index.shards = shards
    index.names = {name: number for number, name in enumerate(listed)}
    index.codes = arrays["codes"]
    index.shard_of = arrays["shard"].astype(np.int32)
    index.row_of = arrays["row"].astype(np.int64)
    return index


def write_index(folder: Path, index: CodeIndex) -> None:
    """The index file of `index` (its usable shards renumbered in order), atomically."""
    present = [(name, number) for name, number in index.names.items() if number >= 0]
    renumber = np.zeros(len(index.shards), np.uint32)
    for new, (_, number) in enumerate(present):
        renumber[number] = new
    write_tensors(folder / INDEX_NAME,
                  {"codes": index.codes, "shard": renumber[index.shard_of], "row": index.row_of.astype(np.uint32)},
                  {"shards": json.dumps([name for name, _ in present]),
                   "sizes": json.dumps([index.shards[number].size for _, number in present])})


def index_matches(arrays: dict[str, np.ndarray], shards: Sequence[Shard]) -> bool:
    """Whether every code of an index is the code its shard holds at its row (the shards' own keys are the truth)."""
    for number, shard in enumerate(shards):
        mine = arrays["shard"] == number
        if mine.any() and not np.array_equal(shard.codes[arrays["row"][mine].astype(np.int64)], arrays["codes"][mine]):
            return False
    return True
