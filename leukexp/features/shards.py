"""The shard file: a safetensors file of (n,) entry codes and (n, width) values, read without trusting it.

Only regular files are opened (no links, devices or pipes; never a blocking open); a header must fit in its file and
agree with its tensors before anything is allocated (`DamagedShardError` says why not). Files are written atomically
(a staging file renamed into place), by plain writes that let other threads run.
"""

from __future__ import annotations

import json
import mmap
import os
import stat
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import numpy as np

from leukexp.features.codes import entry_codes
from leukexp.files import atomic_path

SHARD_SUFFIX = ".safetensors"
MAX_HEADER = 256 << 20  # a safetensors header longer than this is refused unread
STORAGE_DTYPES = {"float32": (np.float32, "F32"), "float16": (np.float16, "F16")}
SAFETENSORS_DTYPES = {"F32": np.float32, "F16": np.float16, "U64": np.uint64, "U32": np.uint32, "I64": np.int64}


class DamagedShardError(Exception):
    """A shard file that is not what it claims; the message says why."""


@dataclass(frozen=True)
class TensorPlace:
    """One tensor of a safetensors file: where its bytes lie, checked against the file."""

    dtype: type
    shape: tuple[int, ...]
    offset: int


def read_header(handle: IO[bytes], size: int) -> tuple[dict, int]:
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


def tensor_at(header: dict, name: str, start: int, size: int) -> TensorPlace:
    """Tensor `name` of a header, its dtype, shape and offsets agreeing with each other and with the file."""
    meta = header.get(name)
    if not isinstance(meta, dict):
        raise DamagedShardError(f"no {name} tensor")
    dtype = SAFETENSORS_DTYPES.get(str(meta.get("dtype")))
    shape, offsets = meta.get("shape"), meta.get("data_offsets")
    if dtype is None:
        raise DamagedShardError(f"{name}: dtype {meta.get('dtype')!r}")
    if (not isinstance(shape, list) or not all(type(n) is int and n >= 0 for n in shape)
            or not isinstance(offsets, list) or len(offsets) != 2 or not all(type(n) is int for n in offsets)):
        raise DamagedShardError(f"{name}: shape {shape!r} or offsets {offsets!r} are not counts")
    nbytes = int(np.prod(shape, dtype=object)) * np.dtype(dtype).itemsize
    if offsets[1] - offsets[0] != nbytes or offsets[0] < 0 or start + offsets[1] > size:
        raise DamagedShardError(f"{name}: {shape} {meta['dtype']} does not fit its {size:,}-byte file")
    return TensorPlace(dtype, tuple(shape), start + offsets[0])



def open_regular(path: Path) -> tuple[IO[bytes], int]:
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
        handle, size = open_regular(path)
        with handle:
            header, start = read_header(handle, size)
            values = tensor_at(header, "values", start, size)
            if len(values.shape) != 2 or values.dtype not in (np.float32, np.float16):
                raise DamagedShardError(f"values: {values.shape} is not a (n, width) float table")
            legacy = None
            if "keys" in header:
                keys = tensor_at(header, "keys", start, size)
                if keys.dtype is not np.uint64 or keys.shape != values.shape[:1]:
                    raise DamagedShardError(f"keys: {keys.shape} for {values.shape[0]} rows")
            else:  # the first shard layout: the keys as `<image hash>_<view key>` strings in the header
                legacy = self._legacy_codes(header, values.shape[0])
        self.path = path
        self.size = size
        self.shape = values.shape
        self.dtype = values.dtype
        self.values_at = values.offset
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
            self._codes = np.fromfile(self.path, np.uint64, self.shape[0], offset=self._codes_at or 0)
        return self._codes

    @property
    def values(self) -> np.ndarray:
        """The (n, width) values as a plain array over a read-only map (slicing a `np.memmap` costs microseconds a
        slice); a small read maps lazily, a large one is streamed instead (`stream_rows`)."""
        if self._values is not None:
            return self._values
        if not self.shape[0]:
            self._values = np.zeros(self.shape, self.dtype)
            return self._values
        with open(self.path, "rb") as handle:
            mapping = mmap.mmap(handle.fileno(), 0, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ)
        if len(mapping) < self.values_at + int(np.prod(self.shape)) * np.dtype(self.dtype).itemsize:
            raise ValueError(f"{self.path.name} is shorter than its header says")
        self._values = np.frombuffer(mapping, self.dtype, int(np.prod(self.shape)), self.values_at
                                     ).reshape(self.shape)
        return self._values


def write_tensors(path: Path, tensors: dict[str, np.ndarray], metadata: dict[str, str] | None = None) -> None:
    """A safetensors file, atomically, by plain file writes (which let other threads run)."""
    header: dict[str, object] = {"__metadata__": metadata} if metadata else {}
    offset = 0
    codes = {np.dtype(v): k for k, v in SAFETENSORS_DTYPES.items()}
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
            handle.write(np.ascontiguousarray(array).data.cast("B"))
