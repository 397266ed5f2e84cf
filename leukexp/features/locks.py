"""Extraction locks of a feature store folder: lock buckets by image hash, so parallel jobs compute each entry once.

The embeddings are spread over `LOCK_BUCKETS` buckets by image hash; a process claims a free bucket, re-reads it,
computes what is still missing and writes it before the next one, so parallel jobs split a cold extraction between
them. The locks are the kernel's (`flock`): a killed holder releases them. A folder whose file system does not honour
`flock` between processes is refused with one line (`check_locking`).
"""

from __future__ import annotations

import fcntl
import logging
import subprocess
import sys
import zlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from leukexp.errors import LeukexpError

log = logging.getLogger("leukexp")
LOCK_BUCKETS = 16  # extraction lock buckets per backbone folder, by image hash


def bucket_of(image_key: str) -> int:
    """The lock bucket of an image content hash (hex; any other key by its CRC-32, the same in every process, unlike
    Python's salted `hash`)."""
    try:
        return int(image_key[:8], 16) % LOCK_BUCKETS
    except ValueError:
        return zlib.crc32(image_key.encode()) % LOCK_BUCKETS


class FolderLocks:
    """The `flock` locks of one store folder: one-writer sections (`exclusive`) and extraction buckets (`claim`)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._locking_checked = False

    @contextmanager
    def exclusive(self, name: str) -> Iterator[bool]:
        """A non-blocking `flock` on `name` in the folder: yields whether this process holds it."""
        self.folder.mkdir(parents=True, exist_ok=True)
        with open(self.folder / name, "a") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                yield False
                return
            yield True

    def check_locking(self) -> None:
        """Before the first claim: the folder's file system must refuse a second process a lock this one holds
        (some network mounts grant every `flock`, and parallel jobs would then compute and write the same entries
        twice). Checked once per process and folder; one line when it does not."""
        if self._locking_checked:
            return
        self._locking_checked = True
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            with self.exclusive(".flock-check") as mine:
                refused = not mine or another_process_refused(self.folder / ".flock-check")
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
            for opened in handles:
                opened.close()
            handles, held = [], wanted
        try:
            yield held
        finally:
            for opened in handles:
                opened.close()  # closing the file releases its lock


def another_process_refused(path: Path) -> bool:
    """Whether a second process is refused `flock` on `path` (held by this one)."""
    probe = ("import fcntl, sys\nwith open(sys.argv[1], 'a') as handle:\n    try:\n"
             "        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)\n    except BlockingIOError:\n"
             "        sys.exit(3)\nsys.exit(0)")
    try:
        done = subprocess.run([sys.executable, "-S", "-c", probe, str(path)], timeout=30, capture_output=True)
    except (OSError, subprocess.TimeoutExpired):
        return True  # no second process to ask: nothing known against the file system
    return done.returncode == 3
