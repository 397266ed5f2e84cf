"""Lightning callbacks: keep the best head in memory and record per-epoch history."""

from __future__ import annotations

import copy
import math
from typing import cast

import lightning as L
from torch import nn

from leukexp.vocabulary import EPOCH, HISTORY_METRICS, SELECTION_METRIC


class BestHeadKeeper(L.Callback):
    """Keeps a copy of the head's weights from the epoch with the best monitored value (the study's
    best-validation-accuracy checkpoint) without writing the frozen backbone to disk every epoch."""

    def __init__(self, monitor: str = SELECTION_METRIC, mode: str = "max") -> None:
        self.monitor = monitor
        self.sign = 1.0 if mode == "max" else -1.0
        self.best_score = -math.inf
        self.best_epoch = -1
        self.best_state: dict | None = None

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Remember the head if this epoch beats the best so far (first epoch wins ties)."""
        if trainer.sanity_checking or self.monitor not in trainer.callback_metrics:
            return
        score = self.sign * float(trainer.callback_metrics[self.monitor])
        if score > self.best_score:
            self.best_score = score
            self.best_epoch = trainer.current_epoch
            self.best_state = copy.deepcopy(_head(pl_module).state_dict())

    def restore(self, pl_module: L.LightningModule) -> None:
        """Load the best weights back into the head."""
        if self.best_state is not None:
            _head(pl_module).load_state_dict(self.best_state)



def _head(module: L.LightningModule) -> nn.Module:
    """The trained head of a `LeukemiaClassifier` (its `head` attribute)."""
    return cast(nn.Module, module.head)


class EpochHistory(L.Callback):
    """Per-epoch train/val loss and accuracy, for curves and per-step MLflow metrics."""


    def __init__(self) -> None:
        self.rows: list[dict[str, float]] = []

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Record the epoch's metrics (the module logs train and val metrics when validation ends an epoch)."""
        if trainer.sanity_checking:
            return
        metrics = trainer.callback_metrics
        row = {EPOCH: float(trainer.current_epoch)}
        row.update({key: float(metrics[key]) for key in HISTORY_METRICS if key in metrics})
        self.rows.append(row)
