"""Stain normalization (`stain` group): every image mapped onto one reference stain before views and the backbone.

Macenko (stain vectors in optical density) and Reinhard (LAB mean and spread) come from torchstain's NumPy
normalizers. A normalizer is fitted once per run: to `stain.reference` (an image file) or, without one, to a mosaic
of up to `stain.fit_images` training images of the fold (never validation or test). Its fitted target is part of
the feature cache's key and travels with the saved model, so `leukexp-predict` normalizes new images the same way.
"""

from __future__ import annotations

import hashlib
import json
import logging
import warnings
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import cv2
import numpy as np

from leukexp.errors import LeukexpError
from leukexp.registry import Registered

log = logging.getLogger("leukexp")
MOSAIC_SIDE = 256  # each fitting image is resized to this square before the mosaic is fitted


def mosaic(images: Sequence[np.ndarray]) -> np.ndarray:
    """The images resized to one side and stacked into one tall image (what a normalizer is fitted to)."""
    return np.concatenate([cv2.resize(image, (MOSAIC_SIDE, MOSAIC_SIDE), interpolation=cv2.INTER_AREA)
                           for image in images], axis=0)


class StainNormalizer(Registered, ABC):
    """How images are brought to one stain before anything else sees them: the contract of every `stain` config.

    Attributes:
        name: short name for tags and the console (`none`, `macenko`, `reinhard`): its registered kind, the name a
            saved model keeps it under.
        reference: an image file whose stain every image takes on (None: fitted to training images).
        fit_images: at most this many training images are fitted to when there is no reference.
    """

    name: ClassVar[str]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.name = cls.kind

    def __init__(self, reference: str | None = None, fit_images: int = 32) -> None:
        self.reference = reference
        self.fit_images = int(fit_images)

    @property
    def active(self) -> bool:
        """Whether images are changed at all (`none` is not)."""
        return True

    @abstractmethod
    def fit(self, images: Sequence[np.ndarray]) -> None:
        """Fit the target stain to 8-bit RGB images (one reference image or a sample of the training split)."""

    @abstractmethod
    def state(self) -> dict[str, Any]:
        """The fitted target as plain numbers (saved with the model; its hash is part of the cache key)."""

    @abstractmethod
    def load_state(self, state: dict[str, Any]) -> None:
        """Take a fitted target saved by `state`."""

    @abstractmethod
    def normalize(self, image: np.ndarray) -> np.ndarray:
        """`image` (8-bit RGB) in the target stain."""

    def __call__(self, image: np.ndarray) -> np.ndarray:
        """`normalize`, or the image unchanged where the method finds no stain in it (a blank or saturated tile)."""
        try:
            with np.errstate(over="raise", invalid="raise", divide="raise"), warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                return np.ascontiguousarray(self.normalize(image))
        except (np.linalg.LinAlgError, ValueError, IndexError, FloatingPointError):
            return image

    def fingerprint(self) -> str:
        """A short hash of the method and its fitted target ('' for no normalization: the cache keys stay)."""
        if not self.active:
            return ""
        spec = json.dumps([self.name, self.state()], sort_keys=True)
        return hashlib.sha1(spec.encode(), usedforsecurity=False).hexdigest()[:10]

    def fit_to_study(self, train_paths: Sequence[str], train_keys: Sequence[str]) -> None:
        """Fit to `reference`, or to up to `fit_images` training images (an even, content-ordered sample)."""
        from leukexp.data.io import read_image

        if not self.active:
            return
        if self.reference:
            self.fit([read_reference(self.reference)])
            return
        order = np.argsort(np.asarray(train_keys))
        picks = order[np.linspace(0, len(order) - 1, min(self.fit_images, len(order))).round().astype(int)]
        self.fit([mosaic([read_image(train_paths[i]) for i in np.unique(picks)])])

    def describe(self) -> str:
        """One line for the console."""
        source = f"reference {self.reference}" if self.reference else f"{self.fit_images} training images"
        return f"stain: {self.name}, fitted to {source} (target {self.fingerprint()})"


def read_reference(path: str | Path) -> np.ndarray:
    """The reference image, or one line naming `stain.reference` when it is missing or not an image."""
    from leukexp.data.io import BadImageError, read_image

    file = Path(path).expanduser()
    if not file.is_file():
        raise LeukexpError(f"stain.reference={path}: no such file; give an image of a well-stained smear")
    try:
        image = read_image(file)
    except BadImageError as error:
        raise LeukexpError(f"stain.reference={path}: not an image ({error}); give a PNG, JPEG or TIFF of a"
                           " well-stained smear") from None
    why = degenerate(image)
    if why:
        raise LeukexpError(f"stain.reference={path}: {why}, no stain to learn from; give an image of a well-stained"
                           " smear (cells and background, at least 32 x 32 pixels)")
    return image


def degenerate(image: np.ndarray, min_side: int = 32) -> str:
    """Why an image cannot serve as a stain reference ('' when it can): too small, or of (almost) one colour, as a
    blank, black or uniform image is (its stain vectors would be noise and every normalized image off)."""
    height, width = image.shape[:2]
    if min(height, width) < min_side:
        return f"{width} x {height} pixels is too small"
    spread = float(image.reshape(-1, image.shape[-1]).astype(np.float32).std(axis=0).max())
    if spread < 2.0:
        return f"it is of one colour (mean {np.round(image.reshape(-1, 3).mean(axis=0)).astype(int).tolist()})"
    return ""


class NoStain(StainNormalizer, kind="none"):
    """Images as they are (`stain=none`)."""

    @property
    def active(self) -> bool:
        """Nothing changes."""
        return False

    def fit(self, images: Sequence[np.ndarray]) -> None:
        """Nothing to fit."""

    def state(self) -> dict[str, Any]:
        """No target."""
        return {}

    def load_state(self, state: dict[str, Any]) -> None:
        """No target."""

    def normalize(self, image: np.ndarray) -> np.ndarray:
        """The image unchanged."""
        return image

    def describe(self) -> str:
        """One line for the console."""
        return "stain: none"


class Macenko(StainNormalizer, kind="macenko"):
    """Macenko et al. 2009: stain vectors and their 99th-percentile concentrations in optical density, mapped onto
    the target's (torchstain's NumPy implementation)."""

    def __init__(self, reference: str | None = None, fit_images: int = 32) -> None:
        super().__init__(reference, fit_images)
        from torchstain.numpy.normalizers import NumpyMacenkoNormalizer

        self._method = NumpyMacenkoNormalizer()

    def fit(self, images: Sequence[np.ndarray]) -> None:
        """Stain vectors and maximum concentrations of the images (as one mosaic)."""
        try:
            self._method.fit(mosaic(images))
        except (np.linalg.LinAlgError, ValueError, IndexError) as error:
            raise LeukexpError(f"stain=macenko: no stain found to fit to ({type(error).__name__}); set"
                               " stain.reference to an image of a well-stained smear") from None
        self.load_state(self.state())  # the target as saved: a reloaded model normalizes bit for bit the same

    def state(self) -> dict[str, Any]:
        """The target's stain matrix (3 x 2) and maximum concentrations."""
        return {"stain_matrix": np.round(np.asarray(self._method.HERef, float), 6).tolist(),
                "max_concentrations": np.round(np.asarray(self._method.maxCRef, float), 6).tolist()}

    def load_state(self, state: dict[str, Any]) -> None:
        """Take a saved target."""
        self._method.HERef = np.asarray(state["stain_matrix"], float)
        self._method.maxCRef = np.asarray(state["max_concentrations"], float)

    def normalize(self, image: np.ndarray) -> np.ndarray:
        """The image's stains re-expressed with the target's vectors and concentrations."""
        return self._method.normalize(image, stains=False)[0]


class Reinhard(StainNormalizer, kind="reinhard"):
    """Reinhard et al. 2001: each LAB channel's mean and spread matched to the target's (torchstain's NumPy
    implementation)."""

    def __init__(self, reference: str | None = None, fit_images: int = 32) -> None:
        super().__init__(reference, fit_images)
        from torchstain.numpy.normalizers import NumpyReinhardNormalizer

        self._method = NumpyReinhardNormalizer()

    def fit(self, images: Sequence[np.ndarray]) -> None:
        """LAB means and spreads of the images (as one mosaic)."""
        self._method.fit(mosaic(images))
        self.load_state(self.state())  # the target as saved: a reloaded model normalizes bit for bit the same

    def state(self) -> dict[str, Any]:
        """The target's LAB means and standard deviations."""
        return {"means": np.round(np.asarray(self._method.target_means, float), 6).tolist(),
                "stds": np.round(np.asarray(self._method.target_stds, float), 6).tolist()}

    def load_state(self, state: dict[str, Any]) -> None:
        """Take a saved target."""
        self._method.target_means = np.asarray(state["means"], float)
        self._method.target_stds = np.asarray(state["stds"], float)

    def normalize(self, image: np.ndarray) -> np.ndarray:
        """The image with the target's LAB statistics."""
        return self._method.normalize(image)


def stain_from_state(saved: dict[str, Any] | None) -> StainNormalizer:
    """A normalizer saved with a model (`to_state`): None or `none` for models without one."""
    if not saved or saved.get("name", "none") == "none":
        return NoStain()
    normalizer = StainNormalizer.of_kind(saved.get("name"), "stain")()
    normalizer.load_state(dict(saved.get("target", {})))
    return normalizer


def to_state(normalizer: StainNormalizer) -> dict[str, Any]:
    """What a saved model keeps of its normalizer: the method and its fitted target."""
    return {"name": normalizer.name, "target": normalizer.state()}
