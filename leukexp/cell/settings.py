"""From the composed config to typed objects: the backbone, the head and its training settings."""

from __future__ import annotations

from omegaconf import DictConfig

from leukexp.backbones.base import Backbone
from leukexp.config.compose import build
from leukexp.config.schema import setting
from leukexp.heads.base import Head, HeadContext, TrainSettings


def train_settings(cfg: DictConfig) -> TrainSettings:
    """The `training`, `optimizer` and `trainer` groups as typed settings."""
    patience = setting(cfg, "training.early_stopping_patience")
    return TrainSettings(
        batch_size=int(cfg.training.batch_size),
        seed=int(cfg.seed),
        optimizer=build(cfg.optimizer, "optimizer"),
        trainer=build(cfg.trainer, "trainer", _partial_=True),
        early_stopping_patience=int(patience) if patience else None,
        num_workers=int(cfg.training.num_workers),
        cpu_threads=head_threads_setting(setting(cfg, "training.head_threads")),
    )


def head_threads_setting(value: object) -> int | str | None:
    """`training.head_threads`: `auto`, a number or null (as is)."""
    if value == "auto" or value is None:
        return value
    return int(value)


def backbone_from_config(cfg: DictConfig) -> Backbone:
    """The `model` group's backbone, placed on `features.device` in `features.precision`."""
    backbone: Backbone = build(cfg.model, "model")
    return backbone.place(str(setting(cfg, "features.device")), str(setting(cfg, "features.precision")))


def head_from_config(cfg: DictConfig, backbone: Backbone, num_classes: int, class_weights: list[float] | None) -> Head:
    """The `head` group's head for this problem (its YAML is a partial taking a `HeadContext`)."""
    context = HeadContext(
        in_features=backbone.num_features,
        num_classes=num_classes,
        single_logit=num_classes == 2 and int(cfg.training.binary_outputs) == 1,
        class_weights=class_weights,
        seed=int(cfg.seed),
        training=train_settings(cfg),
        backbone=backbone,
    )
    return build(cfg.head, "head")(context)
