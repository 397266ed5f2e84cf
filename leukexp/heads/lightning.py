"""The Lightning module that trains a torch head, on cached features or (online views) through the backbone."""

from __future__ import annotations

from collections.abc import Callable

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn

from leukexp.backbones.base import Backbone


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
        self.register_buffer("class_weights", weights, persistent=False)

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
        loss = self.loss(logits, batch["label"])
        predicted = (logits.squeeze(-1) > 0).long() if self.single_logit else logits.argmax(-1)
        accuracy = (predicted == batch["label"]).float().mean()
        size = len(batch["label"])
        self.log(f"{stage}/loss", loss, on_step=False, on_epoch=True, batch_size=size)
        self.log(f"{stage}/acc", accuracy, on_step=False, on_epoch=True, batch_size=size, prog_bar=stage == "val")
        return loss

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        """One optimization step on the head."""
        return self._step(batch, "train")

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        """Validation loss and accuracy (selects the best epoch)."""
        return self._step(batch, "val")

    def configure_optimizers(self) -> torch.optim.Optimizer:
        """The optimizer over the head's parameters only."""
        return self.optimizer_factory(self.head.parameters())
