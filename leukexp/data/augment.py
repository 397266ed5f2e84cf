"""Augmentation (`augmentation` group): the `Augmentation` interface, deterministic offline views (the study's 33
per image) and random online transforms.

A new kind of augmentation is one class implementing `Augmentation` and a YAML file naming it as `_target_`.
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

import albumentations as A
import numpy as np


def _stable_seed(*parts: object) -> int:
    digest = hashlib.sha1(":".join(map(str, parts)).encode(), usedforsecurity=False).digest()
    return int.from_bytes(digest[:4], "little")


@dataclass(frozen=True)
class ViewKey:
    """One offline view: a base transform (or the original) and an optional flip."""

    transform: str
    repeat: int
    flip: str | None

    @property
    def name(self) -> str:
        """A readable name such as `rotate#1+vflip`."""
        base = "original" if self.transform == "original" else f"{self.transform}#{self.repeat}"
        return base if self.flip is None else f"{base}+{self.flip}"


class Augmentation(ABC):
    """How a study's images become the views a backbone embeds: the contract of every `augmentation` config.

    View 0 of every image is the original (validation and test use it; its features are shared by every
    augmentation). Offline kinds give a fixed list of views, the same in every run, process and machine, so their
    features are cached per view; online kinds (`online = True`) draw a fresh view at every epoch and are never
    cached (the backbone runs on every training batch).

    Attributes:
        name: short name for tags, reports and the console (`paper`, `flips`).
        online: whether views are drawn anew every epoch.
    """

    name: str
    online: ClassVar[bool] = False

    @property
    @abstractmethod
    def n_views(self) -> int:
        """Views per training image, the original included (1 for online kinds: one fresh view per epoch)."""

    @abstractmethod
    def fingerprint(self) -> str:
        """A short hash of everything that decides the views' pixels (part of the feature cache's keys)."""

    @abstractmethod
    def view_fingerprint(self, index: int) -> str:
        """The cache key of view `index`: `original` for view 0, which every augmentation shares."""

    @abstractmethod
    def apply(self, image: np.ndarray, index: int, image_key: str) -> np.ndarray:
        """View `index` of an 8-bit RGB `image` whose content hash is `image_key` (offline kinds seed with it)."""


class OfflineViews(Augmentation):
    """A fixed list of deterministic views of every image.

    View 0 is the original. Then `repeats` random draws of each named transform, then every one of those
    flipped by each flip transform: with 5 transforms, 2 repeats and 2 flips that is (1 + 10) * 3 = 33
    views, the study's protocol. View k of an image is the same in every run, process and machine: its
    random parameters are seeded by the seed, the image's content hash and the base view.

    Args:
        transforms: name -> albumentations transform (applied with p=1).
        flips: name -> albumentations flip transform, each applied to every base view.
        repeats: random draws of each transform.
        seed: base seed of the view parameters.
    """

    def __init__(
        self,
        transforms: Mapping[str, A.BasicTransform] | None = None,
        flips: Mapping[str, A.BasicTransform] | None = None,
        repeats: int = 2,
        seed: int = 0,
        name: str = "offline",
    ) -> None:
        self.name = name
        self.transforms = dict(transforms or {})
        self.flips = dict(flips or {})
        self.repeats = int(repeats)
        self.seed = int(seed)
        base = [("original", 0)] + [(t, r) for t in self.transforms for r in range(self.repeats)]
        self.views = [ViewKey(t, r, None) for t, r in base] + [
            ViewKey(t, r, flip) for flip in self.flips for t, r in base
        ]
        spec = [self.seed, self.repeats, *(f"{k}={t!r}" for k, t in self.transforms.items()),
                *(f"{k}={t!r}" for k, t in self.flips.items())]
        self._fingerprint = hashlib.sha1(repr(spec).encode(), usedforsecurity=False).hexdigest()[:12]

    @property
    def n_views(self) -> int:
        """Number of views per image, the original included."""
        return len(self.views)

    def fingerprint(self) -> str:
        """A short hash of everything that decides the views' pixels (for the feature cache)."""
        return self._fingerprint

    def view_fingerprint(self, index: int) -> str:
        """Cache key of view `index`: the original is shared by every augmentation config."""
        if index == 0:
            return "original"
        return f"{self.fingerprint()}-{index}"

    def apply(self, image: np.ndarray, index: int, image_key: str) -> np.ndarray:
        """Return view `index` of `image` (whose content hash is `image_key`)."""
        view = self.views[index]
        if view.transform != "original":
            transform = self.transforms[view.transform]
            transform.set_random_seed(_stable_seed(self.seed, image_key, view.transform, view.repeat))
            image = transform(image=image)["image"]
        if view.flip is not None:
            image = self.flips[view.flip](image=image)["image"]
        return np.ascontiguousarray(image)


class OnlineAugment(Augmentation):
    """Random transforms drawn anew at every epoch; the backbone then runs on every batch.

    Args:
        transform: an albumentations pipeline (usually an `A.Compose` of the study's transforms).
    """

    online = True

    @property
    def n_views(self) -> int:
        """One fresh view per image and epoch."""
        return 1

    def __init__(self, transform: A.BasicTransform, name: str = "online") -> None:
        self.name = name
        self.transform = transform

    def fingerprint(self) -> str:
        """Online views are never cached; the fingerprint only names the pipeline."""
        return hashlib.sha1(repr(self.transform).encode(), usedforsecurity=False).hexdigest()[:12]

    def view_fingerprint(self, index: int) -> str:
        """Only the original is cacheable (validation and test images)."""
        return "original"

    def apply(self, image: np.ndarray, index: int, image_key: str) -> np.ndarray:
        """A fresh random view (the index and key are ignored: online views are never repeated)."""
        return np.ascontiguousarray(self.transform(image=image)["image"])


def named_views(name: str, seed: int = 42, key: str = "views") -> Augmentation:
    """The offline views of augmentation option `name` (e.g. `paper`, `flips`), seeded like a run with `seed`;
    `key` names the setting in the error line of an unknown or online option."""
    from hydra.utils import instantiate

    from leukexp.config.compose import load_option
    from leukexp.errors import LeukexpError

    views = instantiate(load_option("augmentation", name, [f"seed={seed}"], key=key), _convert_="all")
    if not isinstance(views, Augmentation) or views.online:
        raise LeukexpError(f"{key} {name}: not a fixed set of views (online augmentation cannot be averaged);"
                           " use flips or paper")
    return views
