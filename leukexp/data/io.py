"""Image reading with OpenCV: any supported format, depth and channel count to 8-bit RGB."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import cv2
import numpy as np

from leukexp.errors import LeukexpError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp")
# how images are decoded; part of the feature cache's key, so a change of decoding (e.g. EXIF orientation, applied
# since version 2) never reuses features of the old pixels
DECODER_VERSION = 2
# the formats a file's first bytes name, for saying when a file is not what its suffix says
_MAGIC = {b"\xff\xd8\xff": "JPEG", b"\x89PNG": "PNG", b"GIF8": "GIF", b"II*\x00": "TIFF", b"MM\x00*": "TIFF",
          b"BM": "BMP", b"RIFF": "WebP"}
_SUFFIX_FORMAT = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG", ".tif": "TIFF", ".tiff": "TIFF", ".bmp": "BMP"}


# the most pixels an image may hold (`data.max_pixels`): a field of 10,000 x 10,000; read from the file's header
# before decoding, so a small file that decodes to 20,000 x 20,000 (1.2 GB of pixels, 20 GB at the peak of a run)
# is refused before it costs anything
MAX_PIXELS = 100_000_000


class BadImageError(LeukexpError):
    """An image file that is empty, unreadable or not an image."""


_JPEG_FRAMES = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def header_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) as the file's header states it, read without decoding: PNG and JPEG here, other formats
    through Pillow's lazy open (None where the header cannot say)."""
    if data.startswith(b"\x89PNG") and len(data) >= 24:
        return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    if data.startswith(b"\xff\xd8"):
        at = 2
        while at + 9 <= len(data) and data[at] == 0xFF:
            marker, length = data[at + 1], int.from_bytes(data[at + 2:at + 4], "big")
            if marker in _JPEG_FRAMES:
                return int.from_bytes(data[at + 7:at + 9], "big"), int.from_bytes(data[at + 5:at + 7], "big")
            at += 2 + length
        return None
    import io

    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as image:
            return image.size
    except Image.DecompressionBombError:
        return (1 << 31, 1 << 31)  # beyond Pillow's own limit: beyond any sane one
    except Exception:  # any header Pillow cannot read is left to OpenCV's decoder
        return None


def check_pixels(data: bytes, name: str | os.PathLike[str], max_pixels: int = MAX_PIXELS) -> None:
    """Refuse, before decoding, an image whose header states more than `max_pixels` pixels."""
    size = header_size(data)
    if size is not None and size[0] * size[1] > max_pixels:
        width, height = size
        raise BadImageError(f"{name}: {width:,} x {height:,} pixels ({width * height / 1e6:,.0f} M) is more than"
                            f" data.max_pixels={max_pixels:,}; shrink or tile the image, or raise data.max_pixels")


def is_image_file(path: Path, extensions: tuple[str, ...] = IMAGE_EXTENSIONS) -> bool:
    """True for a file whose suffix is an image extension, in any letter case (`.Jpg` too)."""
    return path.is_file() and path.suffix.lower() in extensions


def file_digest(data: bytes) -> str:
    """Content hash used for duplicate detection, manifests and the feature cache."""
    return hashlib.sha1(data, usedforsecurity=False).hexdigest()


def decode_image(data: bytes, name: str | os.PathLike[str], max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Decode encoded image bytes to an 8-bit RGB array of shape (H, W, 3); one holding more than `max_pixels`
    pixels is refused from its header, before decoding."""
    if not data:
        raise BadImageError(f"{name}: the file is empty (0 bytes); replace or remove it")
    check_pixels(data, name, max_pixels)
    # JPEG: 8-bit colour with the EXIF orientation applied (a phone or scanner may store the pixels rotated);
    # others: unchanged, to keep 16-bit depth and alpha for `to_rgb8`
    flag = cv2.IMREAD_COLOR if data.startswith(b"\xff\xd8\xff") else cv2.IMREAD_UNCHANGED
    image = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), flag)
    if image is None or image.size == 0:
        raise BadImageError(f"{name}: not a readable image (corrupt or unsupported); replace or remove it")
    return to_rgb8(image)


def image_format(data: bytes) -> str | None:
    """The format a file's first bytes name (JPEG, PNG, GIF, TIFF, BMP, WebP), None when unknown."""
    return next((name for magic, name in _MAGIC.items() if data.startswith(magic)), None)


def image_notes(data: bytes, path: Path) -> list[str]:
    """What a reader should know of a readable file: a format other than its suffix says, several frames."""
    notes = []
    found, named = image_format(data), _SUFFIX_FORMAT.get(path.suffix.lower())
    if found and named and found != named:
        notes.append(f"{path}: is a {found} file named {path.suffix}")
    if found in ("GIF", "TIFF", "WebP") or (found == "PNG" and b"acTL" in data[:8192]):  # acTL: an animated PNG
        ok, frames = cv2.imdecodemulti(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
        if ok and len(frames) > 1:
            kind = {"GIF": "an animated GIF", "TIFF": "a multi-page TIFF"}.get(found, f"an animated {found}")
            notes.append(f"{path}: {kind} of {len(frames)} frames; only the first frame is used")
    return notes


def to_rgb8(image: np.ndarray) -> np.ndarray:
    """Convert an OpenCV array (grey, BGR, BGRA; 8/16-bit or float) to contiguous 8-bit RGB."""
    if image.dtype == np.uint16:
        image = (image / 257.0).round().astype(np.uint8)
    elif image.dtype != np.uint8:
        image = image.astype(np.float64)
        peak = 1.0 if image.max(initial=0.0) <= 1.0 else 255.0
        image = np.clip(image / peak * 255.0, 0, 255).round().astype(np.uint8)
    if image.ndim == 2:
        return np.ascontiguousarray(cv2.cvtColor(image, cv2.COLOR_GRAY2RGB))
    channels = image.shape[2]
    if channels == 1:
        return np.ascontiguousarray(cv2.cvtColor(image[:, :, 0], cv2.COLOR_GRAY2RGB))
    if channels == 4:
        return np.ascontiguousarray(cv2.cvtColor(image, cv2.COLOR_BGRA2RGB))
    return np.ascontiguousarray(cv2.cvtColor(image[:, :, :3], cv2.COLOR_BGR2RGB))


def read_image(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an image file as 8-bit RGB, raising a one-line `BadImageError` naming the file."""
    try:
        data = Path(path).read_bytes()
    except OSError as error:
        raise BadImageError(f"{path}: cannot be read ({error.strerror}); check its permissions") from error
    return decode_image(data, path)
