"""Image reading with OpenCV: any supported format, depth and channel count to 8-bit RGB."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import cv2
import numpy as np

from leukexp.errors import LeukexpError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp")


class BadImageError(LeukexpError):
    """An image file that is empty, unreadable or not an image."""


def is_image_file(path: Path, extensions: tuple[str, ...] = IMAGE_EXTENSIONS) -> bool:
    """True for a file whose suffix is an image extension, in any letter case (`.Jpg` too)."""
    return path.is_file() and path.suffix.lower() in extensions


def file_digest(data: bytes) -> str:
    """Content hash used for duplicate detection, manifests and the feature cache."""
    return hashlib.sha1(data, usedforsecurity=False).hexdigest()


def decode_image(data: bytes, name: str | os.PathLike[str]) -> np.ndarray:
    """Decode encoded image bytes to an 8-bit RGB array of shape (H, W, 3)."""
    if not data:
        raise BadImageError(f"{name}: the file is empty (0 bytes); replace or remove it")
    image = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    if image is None or image.size == 0:
        raise BadImageError(f"{name}: not a readable image (corrupt or unsupported); replace or remove it")
    return to_rgb8(image)


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
