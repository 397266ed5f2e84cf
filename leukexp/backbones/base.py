"""The `Backbone` interface every frozen feature extractor implements, and the image preprocessing it declares."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import cv2
import numpy as np
import torch

from leukexp.errors import LeukexpError
from leukexp.registry import Registered

_INTERPOLATION = {"bicubic": cv2.INTER_CUBIC, "bilinear": cv2.INTER_LINEAR, "nearest": cv2.INTER_NEAREST}
PRECISIONS: dict[str, torch.dtype | None] = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


@runtime_checkable
class ImagePreprocess(Protocol):
    """Turns one 8-bit RGB image (H, W, 3) into the backbone's input tensor (3, H', W')."""

    @property
    def input_size(self) -> tuple[int, int, int]:
        """(channels, height, width) of the backbone's input."""
        ...

    def __call__(self, image: np.ndarray) -> torch.Tensor:
        """The backbone-ready tensor of one image: `normalize` of `resize`, for one image."""
        ...

    def resize(self, image: np.ndarray) -> np.ndarray:
        """The geometric part: 8-bit RGB (H, W, 3) -> 8-bit RGB (H', W', 3) at the input size."""
        ...

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """The value part, for a batch wherever it is: 8-bit (N, H', W', 3) -> float (N, 3, H', W')."""
        ...

    def describe(self) -> str:
        """A stable text form, part of the feature-cache key."""
        ...


def resize(image: np.ndarray, height: int, width: int, interpolation: str = "bicubic",
           crop_pct: float = 1.0, center_crop: bool = False) -> np.ndarray:
    """Resize the whole image to (height, width), or scale by 1/crop_pct and crop the centre."""
    flag = _INTERPOLATION.get(interpolation, cv2.INTER_LINEAR)
    if center_crop and crop_pct < 1.0:
        scaled = (round(height / crop_pct), round(width / crop_pct))
        image = cv2.resize(image, (scaled[1], scaled[0]), interpolation=flag)
        top, left = (scaled[0] - height) // 2, (scaled[1] - width) // 2
        return image[top:top + height, left:left + width]
    return cv2.resize(image, (width, height), interpolation=flag)


@dataclass(frozen=True)
class Preprocess:
    """Resize the whole image, scale to [0, 1], normalize per channel (timm-style models).

    Args:
        input_size: (channels, height, width) the backbone expects.
        mean: per-channel mean after scaling to [0, 1].
        std: per-channel standard deviation.
        interpolation: `bicubic`, `bilinear` or `nearest`.
        crop_pct: centre-crop fraction, used only when `center_crop` is true.
        center_crop: crop the centre (timm's evaluation default) instead of resizing the whole image.
    """

    input_size: tuple[int, int, int]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bicubic"
    crop_pct: float = 1.0
    center_crop: bool = False

    def resize(self, image: np.ndarray) -> np.ndarray:
        """8-bit RGB (H, W, 3) -> 8-bit RGB at the input size (an image already that size is kept)."""
        _, height, width = self.input_size
        if image.shape[:2] != (height, width) or self.center_crop:
            image = resize(image, height, width, self.interpolation, self.crop_pct, self.center_crop)
        return image

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """8-bit (N, H, W, 3) on any device -> normalized float (N, 3, H, W), channels-last in memory; the same
        float32 arithmetic as `__call__`, so a batch normalized on a GPU gives the same numbers."""
        mean = torch.tensor(self.mean, dtype=torch.float32, device=images.device)
        std = torch.tensor(self.std, dtype=torch.float32, device=images.device)
        return ((images.float() / 255.0 - mean) / std).permute(0, 3, 1, 2)

    def __call__(self, image: np.ndarray) -> torch.Tensor:
        """8-bit RGB (H, W, 3) -> normalized float tensor (3, H', W')."""
        array = self.resize(image).astype(np.float32)  # then in place: the same arithmetic, no temporaries
        array /= 255.0
        array -= np.asarray(self.mean, np.float32)
        array /= np.asarray(self.std, np.float32)
        return torch.from_numpy(array).permute(2, 0, 1)  # a channels-last view: the layout the backbone uses

    def describe(self) -> str:
        """A stable text form, part of the feature-cache key."""
        return (f"{self.input_size}|{self.mean}|{self.std}|{self.interpolation}|"
                f"{self.crop_pct if self.center_crop else 1.0}")


def resolve_device(name: str) -> torch.device:
    """`auto` -> CUDA when present, else CPU; `cpu` / `cuda[:N]` as given (CUDA must exist)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise LeukexpError(f"features.device={name}: no CUDA device here; use features.device=auto or cpu")
    try:
        return torch.device(name)
    except RuntimeError as error:
        raise LeukexpError(f"features.device={name}: not a device; use auto, cpu or cuda") from error


def check_precision(precision: str) -> str:
    """The precision name, checked against `fp32 | bf16 | fp16`."""
    if precision not in PRECISIONS:
        raise LeukexpError(f"features.precision={precision}: use one of {', '.join(PRECISIONS)}")
    return precision


class Backbone(Registered, ABC):
    """A frozen, pretrained feature extractor.

    Implementations declare what the rest of leukexp needs: the feature width, the image preprocessing,
    a fingerprint of everything that changes the features (the feature cache's key), a short label for tags
    and reports, `embed` for a preprocessed batch, and the reference a saved model uses to rebuild it.
    Device and precision are chosen once with `place`; `embed` always returns float32 on the CPU. An
    implementation names its kind (`class TimmBackbone(Backbone, kind="timm")`): saved models may build it, and
    its `check_config` runs on a config of it before any work.
    """

    label: str
    num_features: int
    preprocess: ImagePreprocess
    precision: str = "fp32"

    @property
    @abstractmethod
    def fingerprint(self) -> str:
        """Hash of weights, preprocessing and precision: equal fingerprints give equal features."""

    @abstractmethod
    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """Preprocessed images (N, 3, H, W) -> features (N, num_features), float32 on the CPU."""

    def embed_on_device(self, images: torch.Tensor) -> torch.Tensor:
        """`embed`, leaving the features where they were computed (float32): an extraction pass copies them back
        while the device computes the next batch. By default the CPU features of `embed`."""
        return self.embed(images)

    @abstractmethod
    def reference(self) -> dict[str, object]:
        """What a saved model records to rebuild this backbone (its config and fingerprint)."""

    @property
    def device(self) -> torch.device:
        """Where `embed` computes: the CPU unless `place` moved the backbone."""
        return torch.device("cpu")

    @classmethod
    def check_config(cls, config: dict[str, object], key: str) -> None:
        """A weights file that exists (cheap, before any weights load); implementations add their own checks."""
        from pathlib import Path

        weights = config.get("weights_file")
        if isinstance(weights, str) and weights and not Path(weights).expanduser().is_file():
            raise LeukexpError(f"{key}.weights_file={weights}: no such file; give the path of the weights file")

    def parts(self) -> list[Backbone]:
        """The backbones whose features are computed (and cached) separately and concatenated: itself."""
        return [self]

    def place(self, device: str = "cpu", precision: str = "fp32") -> Backbone:
        """Run on `device` (`auto`, `cpu`, `cuda`) in `precision` (`fp32`, `bf16`, `fp16`).

        This default runs on the CPU in fp32 only (`auto` then means the CPU).
        """
        if (device != "auto" and resolve_device(device).type != "cpu") or check_precision(precision) != "fp32":
            raise LeukexpError(f"model {self.label}: runs on the CPU in fp32 only; set features.device=cpu and"
                               " features.precision=fp32")
        return self
