"""Row reads: wanted rows of a shard copied into their places in one result array, in storage order.

Runs of consecutive rows are copied as slices; when most of a shard is wanted it is streamed front to back with
`preadv` straight into the result (no page fault per mapped page, no temporary).
"""

from __future__ import annotations

import os
from typing import IO

import numpy as np

from leukexp.features.shards import Shard, open_regular

MIN_RUN = 16  # rows stored and wanted consecutively from this many on are copied as one slice
GATHER_ROWS = 1 << 16  # rows of other reads gathered at a time (bounds the temporary)


def copy_rows(source: np.ndarray, rows: np.ndarray, target: np.ndarray, where: np.ndarray) -> None:
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


def stream_rows(shard: Shard, rows: np.ndarray, target: np.ndarray, where: np.ndarray) -> None:
    """target[where] = shard rows `rows` (sorted), reading the shard front to back: each stretch of the file is one
    `preadv` that scatters wanted rows straight into their places in the result (runs of rows as one piece) and the
    rows between into a scratch buffer, so the kernel copies from its page cache as for `np.load`, with no page
    fault per mapped page and no temporary. A float16 shard goes through a buffer (converted on the copy)."""
    count, width = shard.shape
    row_bytes = width * np.dtype(shard.dtype).itemsize
    handle, size = open_regular(shard.path)
    with handle:
        if size < shard.values_at + count * row_bytes:
            raise ValueError(f"{shard.path.name} is shorter than its header says")
        if shard.dtype != target.dtype or not target.flags.c_contiguous:
            buffered_rows(handle, shard, rows, target, where)
            return
        descriptor = handle.fileno()
        scratch = memoryview(bytearray(min(STREAM_BYTES, count * row_bytes)))
        rows_out = target.reshape(-1).view(np.uint8).data
        breaks = np.flatnonzero((np.diff(rows) != 1) | (np.diff(where) != 1)) + 1
        starts = np.concatenate([[0], breaks])
        lengths = np.diff(np.concatenate([starts, [len(rows)]])).tolist()
        limit, base = len(scratch), shard.values_at
        pieces: list[memoryview] = []
        first = position = 0  # the file row the pending preadv starts at, and where it has reached
        for row, place, length in zip(rows[starts].tolist(), where[starts].tolist(), lengths, strict=True):
            gap = (row - position) * row_bytes
            if pieces and (gap > limit or len(pieces) >= IOV_LIMIT - 2):
                preadv(descriptor, pieces, base + first * row_bytes)
                pieces = []
            if not pieces:
                first, gap = row, 0
            if gap:
                pieces.append(scratch[:gap])
            pieces.append(rows_out[place * row_bytes:(place + length) * row_bytes])
            position = row + length
        if pieces:
            preadv(descriptor, pieces, shard.values_at + first * row_bytes)


IOV_LIMIT = min(1024, os.sysconf("SC_IOV_MAX")) if hasattr(os, "sysconf") else 1024


def preadv(descriptor: int, pieces: list[memoryview], offset: int) -> None:
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
    preadv(descriptor, rest, offset + done)


def buffered_rows(handle: IO[bytes], shard: Shard, rows: np.ndarray, target: np.ndarray, where: np.ndarray
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
        view = buffer[:length].data.cast("B")
        if os.preadv(handle.fileno(), [view], shard.values_at + start * row_bytes) != len(view):
            raise ValueError(f"{shard.path.name} ended early")
        copy_rows(buffer[:length], rows[low:high] - start, target, where[low:high])


def result_array(rows: int, width: int) -> np.ndarray:
    """An empty (rows, width) float32 array (plain pages: asking for huge pages made the kernel compact memory on
    every fault here, 20x slower)."""
    return np.empty((rows, width), np.float32)


def finite_rows(values: np.ndarray) -> np.ndarray:
    """Which rows hold only finite numbers, checked a bounded block at a time (no full-size temporary)."""
    finite = np.ones(len(values), bool)
    step = max(1, (16 << 20) // max(1, values.shape[1] * values.itemsize))
    for start in range(0, len(values), step):
        block = values[start:start + step]
        if not np.isfinite(block.sum(axis=1)).all():  # one pass; rows with NaN or inf sum to NaN or inf
            finite[start:start + step] = np.isfinite(block).all(axis=1)
    return finite
