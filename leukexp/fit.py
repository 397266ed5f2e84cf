"""Training a head on a study's features (Lightning for neural heads, scikit-learn for the SVM)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import lightning as L
import numpy as np
import pandas as pd
import torch
from hydra.utils import instantiate
from lightning.pytorch.callbacks import EarlyStopping, RichProgressBar
from omegaconf import DictConfig
from torch import nn
from torch.utils.data import DataLoader, Dataset

from leukexp.console import quiet
from leukexp.data.dataset import FeatureDataset, ViewDataset, identity_collate, worker_context
from leukexp.data.study import Study
from leukexp.models.backbones import FrozenBackbone
from leukexp.models.callbacks import BestHeadKeeper, EpochHistory
from leukexp.models.module import LeukemiaClassifier


@dataclass
class Features:
    """Backbone features per split; `train` is None when training runs on images (online views)."""

    train: np.ndarray | None
    val: np.ndarray
    test: np.ndarray


@dataclass
class FitResult:
    """A trained head and its predictions."""

    head: Any
    val_probs: np.ndarray
    test_probs: np.ndarray
    history: pd.DataFrame
    best_epoch: int
    single_logit: bool = False


def fit_head(cfg: DictConfig, study: Study, backbone: FrozenBackbone, head: Any, features: Features) -> FitResult:
    """Train `head` on the fold's training samples and predict validation and test samples."""
    if isinstance(head, nn.Module):
        return _fit_neural(cfg, study, backbone, head, features)
    return _fit_estimator(study, head, features)


def num_outputs(cfg: DictConfig, n_classes: int) -> int:
    """Logits the head must produce: 1 for a binary task with `training.binary_outputs=1`."""
    return 1 if n_classes == 2 and int(cfg.training.binary_outputs) == 1 else n_classes


def _fit_estimator(study: Study, head: Any, features: Features) -> FitResult:
    samples = study.samples
    if features.train is None:
        raise ValueError("an estimator head needs cached training features (not augmentation=online)")
    head.fit(features.train, samples.train["label_index"].to_numpy())
    val_probs = head.predict_proba(features.val)
    val_acc = float((val_probs.argmax(1) == samples.val["label_index"].to_numpy()).mean())
    train_probs = head.predict_proba(features.train)
    train_acc = float((train_probs.argmax(1) == samples.train["label_index"].to_numpy()).mean())
    history = pd.DataFrame([{"epoch": 0.0, "train/acc": train_acc, "val/acc": val_acc}])
    return FitResult(head, val_probs, head.predict_proba(features.test), history, best_epoch=0)


def _fit_neural(cfg: DictConfig, study: Study, backbone: FrozenBackbone, head: nn.Module,
                features: Features) -> FitResult:
    samples = study.samples
    single_logit = num_outputs(cfg, len(study.classes)) == 1
    module = LeukemiaClassifier(
        backbone, head, len(study.classes), instantiate(cfg.optimizer), single_logit=single_logit,
        class_weights=samples.class_weights,
    )
    batch_size = int(cfg.training.batch_size)
    workers = int(cfg.training.num_workers)
    if features.train is None:
        train_set: Dataset = ViewDataset(study.catalog.frame, samples.train, study.augmentation,
                                         backbone.preprocess, random=True)
    else:
        train_set = FeatureDataset(features.train, samples.train["label_index"].to_numpy())
    generator = torch.Generator().manual_seed(int(cfg.seed))
    if features.train is None:
        train_loader = DataLoader(train_set, batch_size=batch_size, shuffle=True, generator=generator,
                                  num_workers=workers, multiprocessing_context=worker_context(workers))
    else:
        train_loader = DataLoader(train_set, batch_size=batch_size, shuffle=True, generator=generator,
                                  collate_fn=identity_collate)
    val_loader = DataLoader(FeatureDataset(features.val, samples.val["label_index"].to_numpy()),
                            batch_size=256, collate_fn=identity_collate)
    keeper, history = BestHeadKeeper("val/acc", "max"), EpochHistory()
    callbacks: list[L.Callback] = [keeper, history]
    if not quiet():
        callbacks.append(RichProgressBar(leave=False))
    if cfg.training.early_stopping_patience:
        callbacks.append(EarlyStopping("val/acc", mode="max", patience=int(cfg.training.early_stopping_patience)))
    trainer: L.Trainer = instantiate(cfg.trainer, callbacks=callbacks, enable_progress_bar=not quiet())
    trainer.fit(module, train_loader, val_loader)
    keeper.restore(module)
    module.eval()
    return FitResult(
        head=head,
        val_probs=_predict(module, features.val),
        test_probs=_predict(module, features.test),
        history=pd.DataFrame(history.rows),
        best_epoch=keeper.best_epoch,
        single_logit=single_logit,
    )


@torch.no_grad()
def _predict(module: LeukemiaClassifier, features: np.ndarray) -> np.ndarray:
    logits = module.head(torch.as_tensor(features, dtype=torch.float32))
    return module.probabilities(logits).numpy().astype(np.float64)
