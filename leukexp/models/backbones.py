"""Frozen pretrained backbones from timm, with their own preprocessing and a weights fingerprint."""

from __future__ import annotations

import hashlib
import logging
import socket
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import cv2
import numpy as np
import timm
import torch
from torch import nn

from leukexp.errors import LeukexpError

log = logging.getLogger(__name__)

KeyMap = Literal["timm", "by_order"]
_INTERPOLATION = {"bicubic": cv2.INTER_CUBIC, "bilinear": cv2.INTER_LINEAR, "nearest": cv2.INTER_NEAREST}


@dataclass(frozen=True)
class Preprocess:
    """The backbone's input pipeline: resize the whole image, scale to [0, 1], normalize.

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

    def __call__(self, image: np.ndarray) -> torch.Tensor:
        """8-bit RGB (H, W, 3) -> normalized float tensor (3, H', W')."""
        _, height, width = self.input_size
        flag = _INTERPOLATION.get(self.interpolation, cv2.INTER_LINEAR)
        if self.center_crop and self.crop_pct < 1.0:
            scaled = (round(height / self.crop_pct), round(width / self.crop_pct))
            image = cv2.resize(image, (scaled[1], scaled[0]), interpolation=flag)
            top, left = (scaled[0] - height) // 2, (scaled[1] - width) // 2
            image = image[top:top + height, left:left + width]
        else:
            image = cv2.resize(image, (width, height), interpolation=flag)
        array = image.astype(np.float32) / 255.0
        array = (array - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)
        return torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1)))

    def describe(self) -> str:
        """A stable text form, part of the feature-cache key."""
        return (f"{self.input_size}|{self.mean}|{self.std}|{self.interpolation}|"
                f"{self.crop_pct if self.center_crop else 1.0}")


class FrozenBackbone(nn.Module):
    """A timm model without its classifier, frozen: no gradients, always in eval mode.

    Weights come from, in order: `weights_file` (a local .pth or .safetensors), the hub
    (`pretrained: true`, online only), or random (`pretrained: false`, logged loudly).

    Args:
        name: any timm model name (`tf_efficientnet_lite0`, `inception_v3`, `legacy_senet154`, ...).
        pretrained: load ImageNet weights (from `weights_file` if given, else the hub).
        weights_file: local weights; timm's `pretrained_cfg_overlay` file.
        key_map: `timm` when the file uses timm's tensor names; `by_order` when it holds the same
            tensors in the same order and shapes under other names.
        input_size: override the model's input size (e.g. 299 for Inception-V3 is its default).
        center_crop: crop the centre instead of resizing the whole image.
        label: short name for tags and reports (defaults to `name`).
    """

    def __init__(
        self,
        name: str,
        pretrained: bool = True,
        weights_file: str | Path | None = None,
        key_map: KeyMap = "timm",
        input_size: int | None = None,
        center_crop: bool = False,
        label: str | None = None,
    ) -> None:
        super().__init__()
        if not timm.is_model(name):
            raise LeukexpError(f"model.name={name!r} is not a timm model; see timm.list_models() for names")
        self.name = name
        self.label = label or name
        self.pretrained = bool(pretrained)
        self.weights_file = str(weights_file) if weights_file else None
        self.model = _create(name, self.pretrained, self.weights_file, key_map)
        for parameter in self.model.parameters():
            parameter.requires_grad_(False)
        self.model.eval()
        config = timm.data.resolve_model_data_config(self.model)
        size = tuple(config["input_size"])
        if input_size:
            size = (size[0], int(input_size), int(input_size))
        self.preprocess = Preprocess(
            input_size=size, mean=tuple(config["mean"]), std=tuple(config["std"]),
            interpolation=str(config.get("interpolation", "bicubic")),
            crop_pct=float(config.get("crop_pct", 1.0)), center_crop=center_crop,
        )
        self.num_features = int(self.model.num_features)
        self._fingerprint: str | None = None

    def train(self, mode: bool = True) -> FrozenBackbone:
        """Stay in eval mode whatever the caller asks: BatchNorm statistics and dropout stay frozen."""
        super().train(False)
        return self

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Images (N, 3, H, W) -> pooled features (N, num_features)."""
        return self.model(images)

    @property
    def fingerprint(self) -> str:
        """Hash of the weights' values and the preprocessing: the feature cache's backbone key."""
        if self._fingerprint is None:
            digest = hashlib.sha1(usedforsecurity=False)
            digest.update(f"{self.name}|{self.preprocess.describe()}".encode())
            for key, tensor in self.model.state_dict().items():
                digest.update(key.encode())
                digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
            self._fingerprint = digest.hexdigest()[:16]
        return self._fingerprint

    def reference(self) -> dict[str, object]:
        """What a saved head needs to rebuild this backbone."""
        return {"name": self.name, "label": self.label, "pretrained": self.pretrained,
                "weights_file": self.weights_file, "fingerprint": self.fingerprint,
                "preprocess": self.preprocess.__dict__}


def _create(name: str, pretrained: bool, weights_file: str | None, key_map: KeyMap) -> nn.Module:
    if not pretrained:
        log.warning("model %s: RANDOM weights (pretrained=false): features are meaningless for a real study", name)
        return timm.create_model(name, pretrained=False, num_classes=0)
    if weights_file:
        path = Path(weights_file).expanduser()
        if not path.is_file():
            raise LeukexpError(f"model.weights_file={path}: no such file; give a .pth or .safetensors file")
        if key_map == "by_order":
            model = timm.create_model(name, pretrained=False)
            model.load_state_dict(remap_by_order(load_state_dict(path), model.state_dict(), path))
            model.reset_classifier(0)
            return model
        try:
            return timm.create_model(name, pretrained=True, num_classes=0,
                                     pretrained_cfg_overlay={"file": str(path)})
        except RuntimeError as error:
            raise LeukexpError(
                f"model.weights_file={path}: does not fit {name} ({str(error).splitlines()[0][:160]});"
                " check the model name, or set model.key_map=by_order for renamed tensors"
            ) from error
    try:
        with _hub_offline_unless_reachable():
            return timm.create_model(name, pretrained=True, num_classes=0)
    except Exception as error:
        raise LeukexpError(
            f"model {name}: no local weights and the hub could not be reached ({type(error).__name__});"
            f" download the weights elsewhere and pass model.weights_file=PATH (.pth or .safetensors),"
            " or set model.pretrained=false for a random init"
        ) from error


@contextmanager
def _hub_offline_unless_reachable(host: str = "huggingface.co") -> Iterator[None]:
    """Without a route to the hub, use only its local cache: fail in a moment instead of retrying for a minute."""
    import huggingface_hub.constants as hub

    try:
        socket.getaddrinfo(host, 443)
        reachable = True
    except OSError:
        reachable = False
    previous = hub.HF_HUB_OFFLINE
    hub.HF_HUB_OFFLINE = previous or not reachable
    try:
        yield
    finally:
        hub.HF_HUB_OFFLINE = previous


def load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Read a .safetensors or .pth/.pt/.bin state dict (also one nested under `state_dict`)."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    state = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("state_dict", "model"):
        if isinstance(state, Mapping) and isinstance(state.get(key), Mapping):
            state = state[key]
    return dict(state)


def remap_by_order(source: Mapping[str, torch.Tensor], target: Mapping[str, torch.Tensor],
                   path: Path) -> dict[str, torch.Tensor]:
    """Give `source`'s tensors `target`'s names, one for one in order, checking every shape."""
    if len(source) != len(target):
        raise LeukexpError(f"{path}: holds {len(source)} tensors but the model has {len(target)}; wrong file?")
    remapped = {}
    for (src_key, tensor), (dst_key, expected) in zip(source.items(), target.items(), strict=True):
        if tuple(tensor.shape) != tuple(expected.shape):
            raise LeukexpError(
                f"{path}: tensor {src_key} {tuple(tensor.shape)} does not match {dst_key} {tuple(expected.shape)}"
            )
        remapped[dst_key] = tensor
    return remapped
