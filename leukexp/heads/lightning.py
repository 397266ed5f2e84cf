"""The Lightning module that trains a torch head, on cached features or (online views) through the backbone."""

from __future__ import annotations

from collections.abc import Callable
from typing import cast

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.core.optimizer import LightningOptimizer
from torch import nn

from leukexp.backbones.base import Backbone
from leukexp.vocabulary import ACC, LOSS, metric_name


class LeukemiaClassifier(L.LightningModule):
    """A trainable head; batches carry either `features` (cached) or `image` (run through the frozen backbone).

    Args:
        head: the trainable network on the backbone's features.
        num_classes: number of classes.
        optimizer: a partial optimizer taking the head's parameters (Adam in the study).
        single_logit: binary task with one logit and BCE (the study) instead of two with cross-entropy.
        class_weights: loss weights per class (`protocol.balance=class_weights`).
        backbone: the frozen feature extractor, needed only for batches of images.
    """

    def __init__(self, head: nn.Module, num_classes: int, optimizer: Callable[..., torch.optim.Optimizer],
                 single_logit: bool = False, class_weights: list[float] | None = None,
                 backbone: Backbone | None = None) -> None:
        super().__init__()
        self.head = head
        self.backbone = backbone
        self.num_classes = num_classes
        self.optimizer_factory = optimizer
        self.single_logit = single_logit and num_classes == 2
        weights = torch.tensor(class_weights, dtype=torch.float32) if class_weights else None
        self.class_weights: torch.Tensor | None
        self.register_buffer("class_weights", weights, persistent=False)
        self._tallies: dict[str, torch.Tensor] = {}
        self._counts: dict[str, int] = {}
        # the steps are taken here: a training batch may hold many mini-batches (features in memory), so
        # Lightning's per-batch machinery runs once per block instead of once per optimizer step
        self.automatic_optimization = False

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Logits for a batch of features or images."""
        if "features" in batch:
            features = batch["features"]
        else:
            if self.backbone is None:
                raise ValueError("a batch of images needs the backbone")
            features = self.backbone.embed(batch["image"]).to(self.device)
        return self.head(features)

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """BCE on one logit, else (weighted) cross-entropy."""
        if self.single_logit:
            pos_weight = None
            if self.class_weights is not None:
                pos_weight = self.class_weights[1] / self.class_weights[0]
            return F.binary_cross_entropy_with_logits(logits.squeeze(-1), labels.float(), pos_weight=pos_weight)
        return F.cross_entropy(logits, labels, weight=self.class_weights)

    def _step(self, batch: dict[str, torch.Tensor], stage: str) -> torch.Tensor:
        logits = self(batch)
        labels = batch["label"]
        loss = self.loss(logits, labels)
        predicted = (logits.squeeze(-1) > 0).long() if self.single_logit else logits.argmax(-1)
        # summed on the device, logged once per epoch: no per-step logging or host synchronisation
        step = torch.stack([loss.detach() * len(labels), (predicted == labels).sum().float()])
        tally = self._tallies.get(stage)
        self._tallies[stage] = step if tally is None else tally + step
        self._counts[stage] = self._counts.get(stage, 0) + len(labels)
        return loss

    def on_validation_epoch_end(self) -> None:
        """Log the epoch's train and val loss and accuracy (validation closes every training epoch)."""
        if self.trainer.sanity_checking:
            self._tallies.pop("val", None)
            self._counts.pop("val", None)
            return
        for stage in ("train", "val"):
            self._log_epoch(stage)

    def on_train_epoch_end(self) -> None:
        """Log train metrics not logged yet (an epoch without validation)."""
        self._log_epoch("train")

    def _log_epoch(self, stage: str) -> None:
        tally, count = self._tallies.pop(stage, None), self._counts.pop(stage, 0)
        if tally is None or not count:
            return
        loss_sum, correct = tally.tolist()
        self.log(metric_name(stage, LOSS), loss_sum / count)
        self.log(metric_name(stage, ACC), correct / count, prog_bar=stage == "val")

    def training_step(self, batch: dict[str, torch.Tensor] | list[dict[str, torch.Tensor]],
                      batch_idx: int) -> torch.Tensor:
        """One optimizer step per mini-batch: a batch, or a block of them (`FeatureBatches`)."""
        optimizer = cast(LightningOptimizer, self.optimizers())  # one optimizer, from configure_optimizers
        for minibatch in batch if isinstance(batch, list) else [batch]:
            loss = self._step(minibatch, "train")
            optimizer.zero_grad()
            self.manual_backward(loss)
            optimizer.step()
        return loss

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        """Validation loss and accuracy (selects the best epoch)."""
        return self._step(batch, "val")

    def configure_optimizers(self) -> torch.optim.Optimizer:
        """The optimizer over the head's parameters only."""
        return self.optimizer_factory(self.head.parameters())
