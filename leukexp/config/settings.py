"""From the composed config to typed objects: the backbone, the head and its training settings."""

from __future__ import annotations

import os
import random

import numpy as np
import torch
from omegaconf import DictConfig

from leukexp.backbones.base import Backbone
from leukexp.config.compose import build
from leukexp.heads.base import Head, HeadContext, TrainSettings


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch as Lightning's `seed_everything(workers=True)` does, without importing it."""
    os.environ["PL_GLOBAL_SEED"] = str(seed)
    os.environ["PL_SEED_WORKERS"] = "1"
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def train_settings(cfg: DictConfig) -> TrainSettings:
    """The `training`, `optimizer` and `trainer` groups as typed settings."""
    patience = cfg.training.get("early_stopping_patience")
    return TrainSettings(
        batch_size=int(cfg.training.batch_size),
        seed=int(cfg.seed),
        optimizer=build(cfg.optimizer, "optimizer"),
        trainer=build(cfg.trainer, "trainer", _partial_=True),
        early_stopping_patience=int(patience) if patience else None,
        num_workers=int(cfg.training.num_workers),
        cpu_threads=head_threads_setting(cfg.training.get("head_threads")),
    )


def head_threads_setting(value: object) -> int | str | None:
    """`training.head_threads`: `auto`, a number or null (as is)."""
    if value == "auto" or value is None:
        return value
    return int(value)


def build_backbone(cfg: DictConfig) -> Backbone:
    """The `model` group's backbone, placed on `features.device` in `features.precision`."""
    backbone: Backbone = build(cfg.model, "model")
    return backbone.place(str(cfg.features.get("device", "cpu")), str(cfg.features.get("precision", "fp32")))


def build_head(cfg: DictConfig, backbone: Backbone, num_classes: int, class_weights: list[float] | None) -> Head:
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
