"""Feature fusion: several frozen backbones whose features are concatenated (`model=concat`)."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from leukexp.backbones.base import Backbone
from leukexp.errors import LeukexpError


def member_config(name: str) -> dict[str, Any]:
    """The resolved config of model option `name` (`conf/model/<name>.yaml`, its own defaults merged in)."""
    from leukexp.config.compose import load_option

    return load_option("model", name, key="model.members")


class ConcatBackbone(Backbone, kind="concat"):
    """The concatenation of its members' features; each member is cached under its own fingerprint.

    Args:
        members: model config names (`[efficientnet_lite0, efficientnet_lite2]`) or full model configs.
        pretrained: passed to every member (false: random weights, for tests).
        label: short name for tags and reports (default: the members' labels joined by `+`).
    """

    @classmethod
    def check_config(cls, config: dict[str, Any], key: str) -> None:
        """Each member's own checks (a member is a model config name or a whole model config)."""
        from leukexp.backbones.loading import check_backbone

        members = config.get("members")
        for member in members if isinstance(members, list) else []:
            member_cfg = member_config(member) if isinstance(member, str) else dict(member)
            check_backbone(member_cfg, f"{key}.members[{member if isinstance(member, str) else '...'}]")

    def __init__(self, members: Sequence[str | Mapping[str, Any]], pretrained: bool = True,
                 label: str | None = None) -> None:
        from leukexp.backbones.loading import build_backbone

        if len(members) < 2:
            raise LeukexpError("model.members: list two or more backbones,"
                               " e.g. [efficientnet_lite0, efficientnet_lite2]")
        configs = [member_config(m) if isinstance(m, str) else dict(m) for m in members]
        for config in configs:
            if "pretrained" in config:
                config["pretrained"] = bool(pretrained) and bool(config["pretrained"])
        self.members = [build_backbone(config, where="model.members") for config in configs]
        self.label = label or "+".join(m.label for m in self.members)
        self.num_features = sum(m.num_features for m in self.members)
        self.preprocess = self.members[0].preprocess  # each member preprocesses its own input (see `parts`)
        self.precision = "fp32"

    def parts(self) -> list[Backbone]:
        """Each member: features are computed and cached per member, then concatenated in this order."""
        return [part for member in self.members for part in member.parts()]

    def place(self, device: str = "cpu", precision: str = "fp32") -> ConcatBackbone:
        """Place every member."""
        for member in self.members:
            member.place(device, precision)
        self.precision = precision
        return self

    @property
    def device(self) -> torch.device:
        """Where the first member computes (all members are placed alike)."""
        return self.members[0].device

    @property
    def fingerprint(self) -> str:
        """Hash of the members' fingerprints, in order."""
        joined = "|".join(m.fingerprint for m in self.members)
        return hashlib.sha1(joined.encode(), usedforsecurity=False).hexdigest()[:16]

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """Not defined for one preprocessed batch: the members need their own preprocessing (use `parts`)."""
        raise LeukexpError("a concatenated backbone embeds per member: use backbone.parts()")

    def reference(self) -> dict[str, object]:
        """The members' references, in order."""
        return {"kind": "concat", "label": self.label, "fingerprint": self.fingerprint,
                "members": [m.reference() for m in self.members]}
