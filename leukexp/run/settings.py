"""From the run plan to objects: the placed backbone, the head and its training settings."""

from __future__ import annotations

from typing import TYPE_CHECKING

from leukexp.backbones.base import Backbone
from leukexp.config.plan import RunPlan
from leukexp.heads.base import Head, HeadContext, TrainSettings

if TYPE_CHECKING:
    from leukexp.inference.cell_study import CellStudy


def train_settings(plan: RunPlan) -> TrainSettings:
    """The plan's `training`, `optimizer` and `trainer` as the head's training settings."""
    training = plan.training
    return TrainSettings(
        batch_size=training.batch_size,
        seed=plan.seed,
        optimizer=plan.optimizer.build(),
        trainer=plan.trainer.build(_partial_=True),
        early_stopping_patience=training.early_stopping_patience,
        num_workers=training.num_workers,
        cpu_threads=training.head_threads,
    )


def backbone_from_plan(plan: RunPlan) -> Backbone:
    """The plan's backbone, placed on `features.device` in `features.precision`."""
    backbone: Backbone = plan.model.build()
    return backbone.place(plan.features.device, plan.features.precision)


def head_from_plan(plan: RunPlan, backbone: Backbone, num_classes: int, class_weights: list[float] | None,
                   positive: int | None = None) -> Head:
    """The plan's head for this problem (its YAML is a partial taking a `HeadContext`); `positive`: the index of the
    task's positive class."""
    context = HeadContext(
        in_features=backbone.num_features,
        num_classes=num_classes,
        single_logit=num_classes == 2 and plan.training.binary_outputs == 1,
        class_weights=class_weights,
        seed=plan.seed,
        training=train_settings(plan),
        backbone=backbone,
        positive=positive,
    )
    return plan.head.build()(context)


def cell_study_from_plan(plan: RunPlan) -> CellStudy | None:
    """The finished cell study `head.cells` names, loaded and checked against the plan's backbone (None for
    `head.cells=own` or a head without cells)."""
    source = plan.head.get("cells")
    if not isinstance(source, str) or source.strip() in ("", "own"):
        return None
    from leukexp.config.identity import changes_the_result
    from leukexp.inference.cell_study import open_cell_study

    study = open_cell_study(source.strip(), plan.tracking.tracking_uri)
    study.check_backbone(plan.model.values(), changes_the_result)
    return study
