"""Image sources: a folder of class sub-folders, scanned into a validated catalog."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pandas as pd

from leukexp.csv_files import read_csv, unique_rows, write_csv
from leukexp.data.io import (
    IMAGE_EXTENSIONS,
    MAX_PIXELS,
    BadImageError,
    decode_image,
    file_digest,
    image_notes,
    is_image_file,
)
from leukexp.data.tasks import Task
from leukexp.errors import LeukexpError
from leukexp.files import atomic_path

log = logging.getLogger(__name__)

# `bag`: the bag an image belongs to (its bag folder, else its group), read by `bags=images|tiles`
CATALOG_COLUMNS = ["path", "file", "folder", "label", "label_index", "group", "bag", "sha1"]


@dataclass
class Catalog:
    """The images of a study: one row per source image, with label, group and content hash."""

    root: Path
    classes: list[str]
    frame: pd.DataFrame
    skipped: list[str] = field(default_factory=list)
    duplicates: list[list[str]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.frame)


@dataclass
class FolderSource:
    """Images in `root/<class folder>/*.{jpg,png,tif,bmp,...}`.

    Args:
        root: the folder holding one sub-folder per class.
        groups_csv: optional CSV with columns `file,group` (file relative to root); splits are then
            grouped so one patient's images never straddle train and test.
        on_bad_image: `error` stops at the first unreadable image; `skip` leaves such images out and lists them.
        extensions: accepted image suffixes, matched in any letter case.
        read_threads: threads used to read and verify images.
        digest_cache: a folder where the content hashes of verified images are kept by path, size and
            modification time: a later scan reads only new or changed files (None: read every file every time).
        bag_folders: read `root/<class>/<bag>/<images>` instead: each sub-folder of a class folder is one bag
            (a patient or a smear), its group (`<class>/<bag>`); set by `bags=images` (`data.bags.ImageBags`).
        max_pixels: the most pixels one image may hold, read from its header before it is decoded (a bad image
            above it: `on_bad_image` decides).
    """

    root: str | Path | None = None
    groups_csv: str | None = None
    on_bad_image: Literal["error", "skip"] = "error"
    extensions: tuple[str, ...] = IMAGE_EXTENSIONS
    read_threads: int = 4
    name: str = "folder"
    digest_cache: str | Path | None = None
    bag_folders: bool = False
    max_pixels: int = MAX_PIXELS

    def prepare(self) -> Path:
        """Return the folder to scan (sources that generate images do so here)."""
        if self.root in (None, ""):
            raise LeukexpError("data.root is not set: give the folder of class folders, e.g. data.root=/path/to/images")
        return Path(self.root).expanduser()

    def scan(self, task: Task) -> Catalog:
        """Scan, verify and label every image, raising one-line errors for bad input."""
        if self.on_bad_image not in ("error", "skip"):
            raise LeukexpError(f"data.on_bad_image={self.on_bad_image!r}: use 'error' or 'skip'")
        root = self.prepare().resolve()
        class_dirs = class_folders(root)
        task.check_mapping_found(folder.name for folder in class_dirs)
        rows: list[dict[str, object]] = []
        notes: list[str] = []
        for folder in class_dirs:
            label = task.resolve_folder(folder.name)
            if label is None:
                continue
            if self.bag_folders:
                found = len(notes)
                rows.extend(self._bag_rows(root, folder, label, notes))
                for note in notes[found:]:
                    log.warning("%s", note)
                continue
            nested = sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
            if nested:
                notes.append(f"{folder.name}/: sub-folder(s) {', '.join(nested)} not read (images must lie"
                             " directly in the class folder)")
                log.warning("%s", notes[-1])
            files = sorted(p for p in folder.iterdir() if is_image_file(p, tuple(self.extensions)))
            if not files:
                raise LeukexpError(
                    f"class folder {folder} has no images ({', '.join(self.extensions)});"
                    " add images or remove the folder"
                )
            rows.extend({"path": str(p), "file": p.relative_to(root).as_posix(), "folder": folder.name,
                         "label": label} for p in files)
        if not rows:
            raise LeukexpError(f"data.root={root}: no class folder belongs to task '{task.name}'")
        digests = DigestCache.for_root(self.digest_cache, root)
        rows, skipped = self._verify(rows, digests.known(rows))
        digests.save(rows)
        frame = pd.DataFrame(rows)
        classes = task.resolve_classes(frame["label"].unique())
        frame["label_index"] = frame["label"].map({label: i for i, label in enumerate(classes)})
        frame["group"] = frame["bag"] if self.bag_folders else self._groups(root, frame)
        frame["bag"] = frame["group"].copy()  # before copies tie their groups together: a bag keeps its images
        duplicates = _resolve_duplicates(frame)
        frame = frame[CATALOG_COLUMNS].reset_index(drop=True)
        return Catalog(root=root, classes=classes, frame=frame, skipped=notes + skipped, duplicates=duplicates)

    def _bag_rows(self, root: Path, folder: Path, label: str, notes: list[str]) -> list[dict[str, object]]:
        """The images of every bag folder of one class folder (`<class>/<bag>/<images>`): one line for a class
        folder without bags, a bag without images, or images lying loose in the class folder; what is left out
        (hidden bag folders, images in a bag's sub-folders) is added to `notes`."""
        extensions = tuple(self.extensions)
        loose = [p.name for p in folder.iterdir() if is_image_file(p, extensions)]
        if loose:
            raise LeukexpError(f"{folder}: images lie directly in the class folder (e.g. {sorted(loose)[0]}); with"
                               " bags=images put each bag's images in its own folder: <class>/<bag>/<images>")
        folders = sorted(p for p in folder.iterdir() if p.is_dir())
        hidden = [p for p in folders if p.name.startswith(".")]
        if hidden:
            notes.append(f"{folder.name}/: hidden folder(s) {', '.join(p.name for p in hidden)} left out (a name"
                         " starting with '.' is hidden); rename them to read them as bags")
        bags = [p for p in folders if not p.name.startswith(".")]
        if not bags:
            raise LeukexpError(f"class folder {folder} has no bag folders; with bags=images each bag (a patient, a"
                               " smear) is a folder of images: <class>/<bag>/<images>")
        rows: list[dict[str, object]] = []
        for bag in bags:
            files = sorted(p for p in bag.iterdir() if is_image_file(p, extensions))
            nested = sorted(p for p in bag.rglob("*") if p.parent != bag and is_image_file(p, extensions))
            if not files:
                where = (f"; its {len(nested)} image(s) lie in sub-folders (e.g."
                         f" {nested[0].relative_to(root).as_posix()}): move them into the bag folder") if nested else (
                    f" ({', '.join(self.extensions)}); add its images or remove the folder")
                raise LeukexpError(f"bag folder {bag} has no images directly in it{where}")
            if nested:
                notes.append(f"{bag.relative_to(root).as_posix()}/: {len(nested)} image(s) in sub-folders left out"
                             f" (e.g. {nested[0].relative_to(root).as_posix()}): a bag's images lie directly in its"
                             " folder")
            rows.extend({"path": str(p), "file": p.relative_to(root).as_posix(), "folder": folder.name,
                         "label": label, "bag": f"{folder.name}/{bag.name}"} for p in files)
        return rows

    def _verify(self, rows: list[dict[str, object]], known: dict[str, str] | None = None
                ) -> tuple[list[dict[str, object]], list[str]]:
        """Read, decode and hash every image not in `known` (path -> hash of an unchanged, verified file)."""
        known = known or {}

        def check(row: dict[str, object]) -> str | BadImageError:
            if (digest := known.get(str(row["path"]))) is not None:
                return digest
            path = Path(str(row["path"]))
            try:
                data = path.read_bytes()
                decode_image(data, path, self.max_pixels)
            except BadImageError as error:
                return error
            except OSError as error:
                return BadImageError(f"{path}: cannot be read ({error.strerror})")
            for note in image_notes(data, path):
                log.warning("%s", note)
            return file_digest(data)

        with ThreadPoolExecutor(max_workers=max(1, self.read_threads)) as pool:
            results = list(pool.map(check, rows))
        kept, skipped = [], []
        for row, result in zip(rows, results, strict=True):
            if isinstance(result, BadImageError):
                if self.on_bad_image == "error":
                    raise BadImageError(f"{result} (or set data.on_bad_image=skip)")
                skipped.append(str(result))
                continue
            kept.append({**row, "sha1": result})
        for message in skipped:
            log.warning("skipped bad image: %s", message)
        return kept, skipped

    def _groups(self, root: Path, frame: pd.DataFrame) -> pd.Series:
        if not self.groups_csv:
            return frame["file"].copy()
        csv_path = Path(self.groups_csv).expanduser()
        if not csv_path.is_file():
            raise LeukexpError(f"data.groups_csv={csv_path}: no such file; give a CSV with columns file,group")
        table = pd.read_csv(csv_path, dtype=str, keep_default_na=False)
        if not {"file", "group"} <= set(table.columns):
            raise LeukexpError(f"{csv_path}: needs columns 'file' and 'group' (found {', '.join(table.columns)})")
        lookup = unique_rows(table, "file", "group", csv_path)
        groups = frame["file"].map(lookup)
        by_name = frame["file"].map(lambda f: lookup.get(Path(f).name))
        groups = groups.fillna(by_name)
        missing = frame.loc[groups.isna(), "file"].tolist()
        if missing:
            raise LeukexpError(
                f"{csv_path}: no group for {len(missing)} image(s), e.g. '{missing[0]}';"
                " add a row file,group for each image (file relative to data.root)"
            )
        return groups.astype(str)


def class_folders(root: Path, key: str = "data.root") -> list[Path]:
    """The class folders under `root` (hidden ones left out); a missing or empty root is one line naming `key`."""
    if not root.exists():
        raise LeukexpError(f"{key}={root}: no such folder; point {key} at a folder of class folders")
    if not root.is_dir():
        raise LeukexpError(f"{key}={root}: is a file, not a folder of class folders")
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        raise LeukexpError(f"{key}={root}: has no class sub-folders; put each class's images in its own folder")
    return folders


def _resolve_duplicates(frame: pd.DataFrame) -> list[list[str]]:
    """Fail on one image filed under two classes; tie same-class copies into one split group."""
    duplicates: list[list[str]] = []
    for _, copies in frame[frame.duplicated("sha1", keep=False)].groupby("sha1", sort=False):
        files = copies["file"].tolist()
        if copies["label"].nunique() > 1:
            first, other = copies.iloc[0], copies[copies["label"] != copies["label"].iloc[0]].iloc[0]
            if _is_blank(str(first["path"])):
                raise LeukexpError(
                    f"'{first['file']}' ({first['label']}) and '{other['file']}' ({other['label']}) are the same blank"
                    " image (one colour, no cells): it says nothing of a class; remove the blank images"
                )
            raise LeukexpError(
                f"duplicate image in two classes: '{first['file']}' and '{other['file']}' have the same content;"
                " remove the wrong copy"
            )
        duplicates.append(files)
        frame.loc[copies.index, "group"] = copies["group"].iloc[0]
    if duplicates:
        log.warning(
            "%d image(s) appear more than once (e.g. %s): each set is kept in one split so copies cannot leak"
            " between train and test", sum(len(d) for d in duplicates), " = ".join(duplicates[0]),
        )
    return duplicates


def _is_blank(path: str) -> bool:
    """Whether an image is one colour (a blank field or an empty frame)."""
    try:
        image = decode_image(Path(path).read_bytes(), path)
    except (LeukexpError, OSError):
        return False
    return bool((image.reshape(-1, 3).max(0) == image.reshape(-1, 3).min(0)).all())


class DigestCache:
    """Content hashes of verified images by file signature, one CSV per scanned root.

    The signature is what copies and `touch` cannot reset together: size, modification time, change time (set by
    the kernel on every write or rename, never by `cp -p`, `rsync -a` or unzip), inode, and a hash of the file's
    first and last 4 KiB (for file systems whose times are coarse or whose inodes are reused). A file whose
    signature is unchanged is not decoded again; anything new or changed is read, decoded and hashed as on a first
    scan, and bad images are never kept. Each row carries a checksum of its fields: a row that was edited (another
    image's hash pasted in would hand this image that image's features) is read again, never trusted. A missing,
    unreadable or foreign cache file only means a full scan.
    """

    COLUMNS = ("path", "size", "mtime_ns", "ctime_ns", "inode", "ends", "sha1", "check")

    def __init__(self, file: Path | None) -> None:
        self.file = file
        self._cached: dict[str, tuple[object, ...]] = {}  # the file's entries, as `known` read them
        self._seen: dict[str, Signature] = {}  # signatures of the files `known` looked at

    @classmethod
    def for_root(cls, folder: str | Path | None, root: Path) -> DigestCache:
        """The cache file of `root` in `folder` (None: no cache)."""
        if folder in (None, ""):
            return cls(None)
        key = hashlib.sha1(str(root).encode(), usedforsecurity=False).hexdigest()[:16]
        return cls(Path(folder).expanduser() / f"{key}.csv")

    @staticmethod
    def row_check(path: str, entry: tuple[object, ...]) -> str:
        """The checksum of one row's fields."""
        text = "\x1f".join(str(field) for field in (path, *entry))
        return hashlib.sha256(text.encode(), usedforsecurity=False).hexdigest()[:16]

    def known(self, rows: list[dict[str, object]]) -> dict[str, str]:
        """path -> hash for the rows whose file is unchanged since it was verified."""
        if self.file is None or not self.file.is_file():
            return {}
        try:
            table = read_csv(self.file, dtype={"path": str, "ends": str, "sha1": str, "check": str},
                             keep_default_na=False)
            entries = {path: ((int(size), int(mtime), int(ctime), int(inode), str(ends), sha1), check)
                       for path, size, mtime, ctime, inode, ends, sha1, check
                       in table[list(self.COLUMNS)].itertuples(index=False)}
        except Exception:  # a damaged or foreign file: scan everything, rewrite it afterwards
            log.warning("digest cache %s unreadable: every image is read again", self.file)
            return {}
        self._cached = {path: entry for path, (entry, check) in entries.items() if self.row_check(path, entry) == check}
        if len(self._cached) < len(entries):
            log.warning("digest cache %s: %d row(s) were edited or damaged; those images are read again", self.file,
                        len(entries) - len(self._cached))
        known = {}
        for row in rows:
            path = str(row["path"])
            with contextlib.suppress(OSError):  # gone since the listing: its read reports it
                self._seen[path] = _signature(path)
                if (entry := self._cached.get(path)) is not None and entry[:-1] == self._seen[path]:
                    known[path] = str(entry[-1])
        return known

    def save(self, rows: list[dict[str, object]]) -> None:
        """Remember the verified rows (path and `sha1`) with their files' size and time; nothing is written
        when the cache already holds exactly these entries."""
        if self.file is None:
            return
        entries = {}
        for row in rows:
            path = str(row["path"])
            with contextlib.suppress(OSError):  # a file gone since it was read is simply not remembered
                entries[path] = (*(self._seen.get(path) or _signature(path)), str(row["sha1"]))
        if entries == self._cached:
            return
        try:
            with atomic_path(self.file) as staging:
                table = pd.DataFrame([(path, *entry, self.row_check(path, entry)) for path, entry in entries.items()],
                                     columns=list(self.COLUMNS))
                write_csv(table, staging)
        except OSError as error:  # a read-only cache folder costs speed, not the run
            log.warning("digest cache %s not written (%s)", self.file, error.strerror)


Signature = tuple[int, int, int, int, str]
PROBE_BYTES = 4096


def _signature(path: str) -> Signature:
    """(size, modification and change time in ns, inode, hash of the first and last 4 KiB) of a file."""
    with open(path, "rb") as handle:
        stat = os.fstat(handle.fileno())
        head = handle.read(PROBE_BYTES)
        if stat.st_size > 2 * PROBE_BYTES:
            handle.seek(-PROBE_BYTES, os.SEEK_END)
        tail = handle.read(PROBE_BYTES)
    ends = hashlib.sha1(head + tail, usedforsecurity=False).hexdigest()[:16]
    return stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_ino, ends
