"""Offline views made in batches on the extraction device (`features.views=device`).

The CPU path (`OfflineViews.apply`) warps each full-size image with OpenCV, one view at a time, then resizes it: on a
GPU box the accelerator then waits for 16 cores doing warps. Here the decoding workers resize each image once and
draw its views' parameters (the same transforms, the same ranges as the albumentations configs, seeded per image
and view as the CPU path is); the device warps every view of a batch with one `grid_sample` (bilinear, the configs'
border mode) and flips with `torch.flip` (exactly a flip).

Warped views differ in their pixels from the CPU path's (resized then warped, not warped then resized; new draws),
so they have their own cache keys; the original and its pure flips are the same pixels on both paths and share
theirs. Only the geometric transforms of the study are known here (`Affine`, the two flips); an augmentation with
any other (stain jitter) keeps the CPU path (`TensorViews.unsupported` says why).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import albumentations as A
import cv2
import numpy as np
import torch
import torch.nn.functional as F

from leukexp.data.augment import Augmentation, OfflineViews, ViewKey, _stable_seed
from leukexp.errors import LeukexpError

# OpenCV border modes of the configs -> grid_sample padding
_PADDING = {cv2.BORDER_REPLICATE: "border", cv2.BORDER_CONSTANT: "zeros", cv2.BORDER_REFLECT: "reflection"}
_FLIPS = {A.VerticalFlip: 1, A.HorizontalFlip: 2}  # flip codes: bit 1 up-down, bit 2 left-right
VIEW_PATHS = ("auto", "cpu", "device")


@dataclass(frozen=True)
class AffineRanges:
    """The parameter ranges of one albumentations `Affine` (degrees, fractions of the size, or pixels)."""

    scale: Mapping[str, tuple[float, float]]
    rotate: tuple[float, float]
    shear: Mapping[str, tuple[float, float]]
    translate_percent: Mapping[str, tuple[float, float]] | None
    translate_px: Mapping[str, tuple[float, float]] | None
    keep_ratio: bool
    padding: str

    @classmethod
    def of(cls, transform: A.Affine) -> AffineRanges:
        """The ranges an `Affine` draws from, as it stores them."""
        return cls(scale=dict(transform.scale), rotate=tuple(transform.rotate), shear=dict(transform.shear),
                   translate_percent=None if transform.translate_percent is None else dict(transform.translate_percent),
                   translate_px=None if transform.translate_px is None else dict(transform.translate_px),
                   keep_ratio=bool(transform.keep_ratio), padding=_PADDING[transform.border_mode])

    def draw(self, random: np.random.Generator, height: int, width: int) -> np.ndarray:
        """One draw: the 3x3 matrix mapping source pixels to view pixels, composed as albumentations does (about the
        image centre: scale, rotate, shear, translate)."""
        scale = {axis: random.uniform(*self.scale[axis]) for axis in ("x", "y")}
        if self.keep_ratio:
            scale["y"] = scale["x"]
        rotate = np.deg2rad(random.uniform(*self.rotate))
        shear = {axis: -np.deg2rad(random.uniform(*self.shear[axis])) for axis in ("x", "y")}
        if self.translate_px is not None:
            shift = (random.uniform(*self.translate_px["x"]), random.uniform(*self.translate_px["y"]))
        elif self.translate_percent is not None:
            shift = (random.uniform(*self.translate_percent["x"]) * width,
                     random.uniform(*self.translate_percent["y"]) * height)
        else:
            shift = (0.0, 0.0)
        centre_x, centre_y = width / 2 - 0.5, height / 2 - 0.5
        to_corner = np.array([[1, 0, -centre_x], [0, 1, -centre_y], [0, 0, 1]])
        scaling = np.diag([scale["x"], scale["y"], 1.0])
        rotation = np.array([[np.cos(rotate), np.sin(rotate), 0], [-np.sin(rotate), np.cos(rotate), 0], [0, 0, 1]])
        shearing = np.array([[1, np.tan(shear["x"]), 0], [np.tan(shear["y"]), 1, 0], [0, 0, 1]])
        back = np.array([[1, 0, centre_x + shift[0]], [0, 1, centre_y + shift[1]], [0, 0, 1]])
        return back @ shearing @ rotation @ scaling @ to_corner


def sampling_theta(matrix: np.ndarray, height: int, width: int) -> np.ndarray:
    """`affine_grid`'s theta (2x3, normalized coordinates, `align_corners=False`) for a source -> view pixel matrix:
    each view pixel samples the source where the inverse matrix sends it."""
    to_normal = np.array([[2 / width, 0, 1 / width - 1], [0, 2 / height, 1 / height - 1], [0, 0, 1]])
    return (to_normal @ np.linalg.inv(matrix) @ np.linalg.inv(to_normal))[:2].astype(np.float32)


class TensorViews(Augmentation):
    """The views of an `OfflineViews`, made as tensors in batches (on the extraction device).

    Args:
        base: the offline views (transforms, flips, repeats and seed) this makes on the device.
    """

    def __init__(self, base: OfflineViews) -> None:
        reason = self.unsupported(base)
        if reason:
            raise ValueError(reason)
        self.base = base
        self.name = base.name
        self.views: list[ViewKey] = base.views
        self.ranges = {name: AffineRanges.of(transform) for name, transform in base.transforms.items()}
        self.flip_codes = {name: _FLIPS[type(flip)] for name, flip in base.flips.items()}
        self.padding = next((ranges.padding for ranges in self.ranges.values()), "border")

    @staticmethod
    def unsupported(views: Augmentation) -> str:
        """Why `views` cannot be made on the device ('' when they can): online views, a transform that is not an
        `Affine` with bilinear interpolation and a known border, or a flip of another kind."""
        if not isinstance(views, OfflineViews):
            return f"augmentation {views.name}: only offline views are made on the device"
        for name, transform in views.transforms.items():
            if type(transform) is not A.Affine or transform.fit_output or transform.balanced_scale:
                return (f"augmentation {views.name}: transform {name} ({type(transform).__name__}) is made on the"
                        " CPU only (the device knows albumentations.Affine and the two flips)")
            if transform.interpolation != cv2.INTER_LINEAR or transform.border_mode not in _PADDING:
                return (f"augmentation {views.name}: transform {name} needs linear interpolation and a replicate,"
                        " constant or reflect border on the device")
        if len({transform.border_mode for transform in views.transforms.values()}) > 1:
            return f"augmentation {views.name}: the device makes views with one border mode for every transform"
        for name, flip in views.flips.items():
            if type(flip) not in _FLIPS:
                return f"augmentation {views.name}: flip {name} ({type(flip).__name__}) is made on the CPU only"
        return ""

    @property
    def n_views(self) -> int:
        """Views per image, the original included (those of the base)."""
        return self.base.n_views

    def fingerprint(self) -> str:
        """The base's fingerprint, marked as made on the device."""
        return f"{self.base.fingerprint()}-t"

    def view_fingerprint(self, index: int) -> str:
        """The original and its pure flips are the same pixels as the CPU path's (shared keys); warped views not."""
        if self.views[index].transform == "original":
            return self.base.view_fingerprint(index)
        return f"{self.fingerprint()}-{index}"

    def plan(self, views: np.ndarray, image_key: str, height: int, width: int) -> tuple[np.ndarray, np.ndarray,
                                                                                          np.ndarray]:
        """What the device does for `views` of one image of `height` x `width`: per view a sampling theta (2x3),
        whether it is warped, and its flip code. Drawn where the image is decoded (a worker)."""
        thetas = np.zeros((len(views), 2, 3), np.float32)
        warped = np.zeros(len(views), bool)
        flips = np.zeros(len(views), np.int8)
        for row, index in enumerate(np.asarray(views).tolist()):
            view = self.views[index]
            if view.transform != "original":
                random = np.random.default_rng(_stable_seed(self.base.seed, image_key, view.transform, view.repeat))
                matrix = self.ranges[view.transform].draw(random, height, width)
                thetas[row], warped[row] = sampling_theta(matrix, height, width), True
            if view.flip is not None:
                flips[row] = self.flip_codes[view.flip]
        return thetas, warped, flips

    def make(self, images: torch.Tensor, thetas: torch.Tensor, warped: torch.Tensor, flips: torch.Tensor
             ) -> torch.Tensor:
        """Views of a batch, where `images` are: (N, H, W, 3) 8-bit (each row's source image, repeated as needed)
        -> (N, H, W, 3) float in [0, 255]. One `grid_sample` warps the batch and `torch.where` keeps the warp for
        the warped rows, flips are `torch.flip`: nothing here waits for the device."""
        device = images.device
        out = images.float()
        if self.ranges:
            thetas, warped = thetas.to(device, non_blocking=True), warped.to(device, non_blocking=True)
            source = out.permute(0, 3, 1, 2)
            grid = F.affine_grid(thetas, list(source.shape), align_corners=False)
            warp = F.grid_sample(source, grid, mode="bilinear", padding_mode=self.padding, align_corners=False)
            out = torch.where(warped[:, None, None, None], warp.permute(0, 2, 3, 1).clamp(0, 255), out)
        if self.flip_codes:
            flips = flips.to(device, non_blocking=True)[:, None, None, None]
            out = torch.where((flips & 1).bool(), out.flip(1), out)
            out = torch.where((flips & 2).bool(), out.flip(2), out)
        return out

    def apply(self, image: np.ndarray, index: int, image_key: str) -> np.ndarray:
        """View `index` of one image, made as on the device (on the CPU here), rounded to 8 bits."""
        height, width = image.shape[:2]
        thetas, warped, flips = self.plan(np.array([index]), image_key, height, width)
        view = self.make(torch.from_numpy(np.ascontiguousarray(image))[None], torch.from_numpy(thetas),
                         torch.from_numpy(warped), torch.from_numpy(flips))
        return view[0].round().to(torch.uint8).numpy()


def views_for(views: Augmentation, path: str, device: torch.device) -> Augmentation:
    """The views a pass makes, by `features.views`: `cpu` (as configured), `device` (as tensors, wherever the
    backbone runs), `auto` (as tensors where the backbone runs on an accelerator and the transforms allow)."""
    if path == "cpu" or (path == "auto" and device.type == "cpu"):
        return views
    reason = TensorViews.unsupported(views)
    if reason and path == "device":
        raise LeukexpError(f"features.views=device: {reason}; use features.views=auto (the CPU for these) or cpu")
    return TensorViews(views) if isinstance(views, OfflineViews) and not reason else views
