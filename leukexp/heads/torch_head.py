"""The adapter for torch heads: a network on frozen features, trained by Lightning, best-val epoch kept."""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import torch
from torch import nn

from leukexp.errors import LeukexpError
from leukexp.heads.base import Head, HeadContext, Split, check_trainable_size, head_threads, history_frame
from leukexp.heads.mlp_network import MLPHead
from leukexp.runtime.process import torch_threads
from leukexp.vocabulary import SELECTION_METRIC

WEIGHTS = "head.pt"
# optimizer steps per Lightning training batch on in-memory features (Lightning's per-batch work is ~1 ms)
STEPS_PER_BLOCK = 32
# set by Lightning's import: torch then counts GPUs through NVML, uncached, on every Adam step
NVML_CUDA_CHECK = "PYTORCH_NVML_BASED_CUDA_CHECK"


class TorchHead(Head, kind="torch"):
    """A torch network trained on features with Lightning; the epoch with the best val/acc is kept.

    Args:
        network: the MLP on the backbone's features.
        context: the problem's shape and training settings.
        network_config: the network's arguments (`hidden`, `dropout`, `activation`), saved for `load`.
    """


    network_type: ClassVar[type[nn.Module]] = MLPHead  # what `load` rebuilds from the saved arguments

    def __init__(self, network: nn.Module, context: HeadContext, network_config: dict[str, Any]) -> None:
        self.network = network
        self.context = context
        self.network_config = network_config
        self.single_logit = context.single_logit

    def fit(self, train: Split, val: Split) -> pd.DataFrame:
        """Train for the trainer's epochs; restore the best validation epoch; return the history."""
        import lightning as L  # imported here: building and checking a head stays quick
        from lightning.pytorch.callbacks import EarlyStopping, RichProgressBar
        from torch.utils.data import DataLoader

        from leukexp.console import quiet
        from leukexp.data.dataset import FeatureBatches, clean_worker_context
        from leukexp.heads.callbacks import BestHeadKeeper, EpochHistory
        from leukexp.heads.lightning import LeukemiaClassifier

        context, settings = self.context, self.context.training
        if settings.optimizer is None or settings.trainer is None:
            raise ValueError("a torch head trains with the plan's optimizer and trainer (TrainSettings)")
        module = LeukemiaClassifier(self.network, context.num_classes, settings.optimizer,
                                    single_logit=self.single_logit, class_weights=context.class_weights,
                                    backbone=context.backbone)
        generator = torch.Generator().manual_seed(settings.seed)
        keeper, history = BestHeadKeeper(SELECTION_METRIC, "max"), EpochHistory()
        callbacks: list[L.Callback] = [keeper, history]
        if not quiet():
            callbacks.append(RichProgressBar(leave=False))
        if settings.early_stopping_patience:
            patience = int(settings.early_stopping_patience)
            callbacks.append(EarlyStopping(SELECTION_METRIC, mode="max", patience=patience))
        trainer = settings.trainer(callbacks=callbacks, enable_progress_bar=not quiet())
        device = trainer.strategy.root_device  # features go there once, not batch by batch
        train_loader: DataLoader[Any] | FeatureBatches
        if train.features is None:
            if train.images is None:
                raise ValueError("training needs features or images")
            workers = settings.num_workers
            train_loader = DataLoader(train.images, batch_size=settings.batch_size, shuffle=True,
                                      generator=generator, num_workers=workers,
                                      multiprocessing_context=clean_worker_context() if workers else None)
        else:
            train_loader = FeatureBatches(train.features, train.labels, settings.batch_size, shuffle=True,
                                          generator=generator, device=device, block=STEPS_PER_BLOCK)
        val_loader = FeatureBatches(val.in_memory(), val.labels, batch_size=256, device=device)
        threads = None
        if device.type == "cpu" and train.features is not None:
            parameters = sum(p.numel() for p in self.network.parameters())
            threads = head_threads(settings.cpu_threads, parameters, torch.get_num_threads())
        with torch_threads(threads), runtime_cuda_check(train.features is not None):
            trainer.fit(module, train_loader, val_loader)
        keeper.restore(module)
        self.network = module.head.cpu().eval()
        self.best_epoch = keeper.best_epoch
        return history_frame(history.rows)

    @torch.no_grad()
    def predict_proba(self, features: np.ndarray) -> np.ndarray:
        """Class probabilities from the network's logits."""
        self.network.eval()
        logits = self.network(torch.as_tensor(features, dtype=torch.float32))
        if self.single_logit:
            positive = torch.sigmoid(logits.squeeze(-1))
            probs = torch.stack([1 - positive, positive], dim=-1)
        else:
            probs = torch.softmax(logits, dim=-1)
        return probs.numpy().astype(np.float64)

    def class_scores(self) -> nn.Module | None:
        """The network; one binary logit l becomes the two scores (-l, l)."""
        return _TwoScores(self.network) if self.single_logit else self.network

    def save(self, folder: Path) -> dict[str, Any]:
        """The network's weights as a state dict (tensors only) and its arguments."""
        folder.mkdir(parents=True, exist_ok=True)
        torch.save(self.network.state_dict(), folder / WEIGHTS)
        return {"kind": self.kind, "weights": WEIGHTS, "network": self.network_config,
                "in_features": self.context.in_features, "num_classes": self.context.num_classes,
                "single_logit": self.single_logit}

    @classmethod
    def load(cls, folder: Path, spec: dict[str, Any]) -> TorchHead:
        """Rebuild the network from its arguments and load its weights (`weights_only`: tensors, no code)."""
        context = HeadContext(int(spec["in_features"]), int(spec["num_classes"]), bool(spec["single_logit"]))
        config = dict(spec["network"])
        network = cls.network_type(context.in_features, context.num_outputs, **config)
        try:
            state = torch.load(folder / spec["weights"], map_location="cpu", weights_only=True)
            network.load_state_dict(state)
        except Exception as error:  # a missing, corrupt or mismatched file
            raise LeukexpError(f"{folder / spec['weights']}: not the weights of this head ({type(error).__name__})"
                               ) from error
        return cls(network.eval(), context, config)


@contextmanager
def runtime_cuda_check(active: bool = True) -> Iterator[None]:
    """While the block runs (when `active`), torch counts GPUs with the CUDA runtime (counted once) instead of NVML.

    Lightning's import sets `PYTORCH_NVML_BASED_CUDA_CHECK=1` so that forked DataLoader workers can still use
    CUDA; torch then opens NVML again on every Adam step (0.8 s of a 4,375-step head on this project's CPU).
    Training on in-memory features forks no workers, so the plain check is used while it runs.
    """
    previous = os.environ.pop(NVML_CUDA_CHECK, None) if active else None
    try:
        yield
    finally:
        if previous is not None:
            os.environ[NVML_CUDA_CHECK] = previous


class _TwoScores(nn.Module):
    """(-l, l) from a network giving one logit l: class 0 and class 1 scores for a binary head."""

    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        self.network = network

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        logit = self.network(features)
        return torch.cat([-logit, logit], dim=-1)


def mlp(context: HeadContext, hidden: Sequence[int] = (128,), dropout: float = 0.0,
        activation: str = "torch.nn.ReLU") -> TorchHead:
    """The study's MLP heads (`head=mlp1`, `mlp3`, `mlp3_dropout`): features -> hidden layers -> logits."""
    if isinstance(hidden, int | str) or not all(isinstance(h, int) and not isinstance(h, bool) and h >= 1
                                                for h in hidden):
        raise LeukexpError(f"head.hidden={hidden!r}: expected a list of layer widths >= 1, e.g. head.hidden=[128]")
    if isinstance(dropout, bool) or not isinstance(dropout, int | float) or not 0 <= dropout < 1:
        raise LeukexpError(f"head.dropout={dropout!r}: expected a rate from 0 up to (not including) 1")
    widths = [int(h) for h in hidden]
    layers = [context.in_features, *widths, context.num_outputs]
    check_trainable_size(sum((a + 1) * b for a, b in itertools.pairwise(layers)), "head.hidden", hidden)
    network = MLPHead(context.in_features, context.num_outputs, widths, float(dropout), str(activation))
    return TorchHead(network, context, {"hidden": widths, "dropout": float(dropout), "activation": str(activation)})
