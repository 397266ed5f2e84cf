"""Building a backbone from its config, with only leukexp's own targets allowed (for saved models)."""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Mapping
from typing import Any

from omegaconf import OmegaConf

import leukexp.backbones
from leukexp.backbones.base import Backbone
from leukexp.config.compose import build
from leukexp.errors import LeukexpError
from leukexp.registry import target_names


def backbone_kinds() -> dict[str, type[Backbone]]:
    """Every backbone kind: each module of this package is imported (once), and its classes register themselves,
    so a new backbone module is found without an edit here."""
    for module in pkgutil.iter_modules(leukexp.backbones.__path__):
        importlib.import_module(f"leukexp.backbones.{module.name}")
    return Backbone.kinds()


def allowed_targets() -> frozenset[str]:
    """Every `_target_` a saved model's backbone config may name: the registered backbone classes and what they
    also allow (the offline weight files)."""
    backbone_kinds()
    return Backbone.allowed_targets()


def backbone_class(config: Mapping[str, Any]) -> type[Backbone] | None:
    """The registered backbone class a config's `_target_` names (None for any other target)."""
    target = str(config.get("_target_", ""))
    return next((cls for cls in backbone_kinds().values() if target in target_names(cls)), None)


def check_backbone(config: Mapping[str, Any], key: str = "model") -> None:
    """The checks the backbone class of a config declares (`Backbone.check_config`), before any weights load."""
    cls = backbone_class(config)
    (cls or Backbone).check_config(dict(config), key)


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
    allowed = allowed_targets()
    refused = [t for t in targets(config) if t not in allowed]
    if refused:
        raise LeukexpError(f"{where}: refuses to build {', '.join(refused)}: not one of leukexp's backbones")
    if found := interpolations(config):
        raise LeukexpError(f"{where}: refuses a config holding the interpolation {found[0][:80]!r}: a saved model's"
                           " config is resolved when it is written and never holds one")
    return build(OmegaConf.create(dict(config)), where)
