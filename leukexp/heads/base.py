"""The `Head` interface every classifier on frozen features implements, and what a head is built from."""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import pandas as pd

from leukexp.registry import Registered
from leukexp.vocabulary import EPOCH, HISTORY_METRICS

if TYPE_CHECKING:
    import lightning as L
    import torch
    from torch.utils.data import Dataset

    from leukexp.backbones.base import Backbone


@dataclass
class Split:
    """The labelled samples of one split: their features, or (online views) a dataset of images.

    For bags, `labels` are the bags' and `features` the instances' in bag order; `bags` holds the offsets of each
    bag's rows (bag i is rows `bags[i]:bags[i+1]`), `instance_labels` each instance's own class index (-1 where
    it has none) and `instance_types` each instance's own label as written (`instances.csv`: a class or a cell type
    such as `lymphoblast`; "" where it has none).
    """

    labels: np.ndarray
    features: np.ndarray | None = None
    images: Dataset | None = None
    bags: np.ndarray | None = None
    instance_labels: np.ndarray | None = None
    instance_types: np.ndarray | None = None

    def bagged(self) -> tuple[np.ndarray, np.ndarray]:
        """The instances' features and the bags' offsets (an aggregator's input; a split without them is a bug)."""
        if self.features is None or self.bags is None:
            raise ValueError("an aggregator trains on bags of features")
        return self.features, self.bags

    def in_memory(self) -> np.ndarray:
        """The features (a split of images has none: a head on features was handed online views, a bug)."""
        if self.features is None:
            raise ValueError("this head trains on features in memory")
        return self.features


@dataclass
class TrainSettings:
    """How neural heads are trained (the `training`, `optimizer` and `trainer` config, typed).

    Args:
        batch_size: samples per optimizer step.
        seed: seed of shuffling and initialization.
        optimizer: builds the optimizer from the head's parameters (Adam in the study).
        trainer: builds the Lightning Trainer, given `callbacks` and `enable_progress_bar`.
        early_stopping_patience: epochs without a better val/acc before stopping (None: all epochs).
        num_workers: DataLoader workers for online views.
        cpu_threads: torch and BLAS threads while a head trains on the CPU on in-memory features: a number,
            `auto` (see `head_threads`) or None (as is).
    """

    batch_size: int = 32
    seed: int = 0
    optimizer: Callable[..., torch.optim.Optimizer] | None = None
    trainer: Callable[..., L.Trainer] | None = None
    early_stopping_patience: int | None = None
    num_workers: int = 0
    cpu_threads: int | str | None = None


@dataclass
class HeadContext:
    """What every head factory is called with: the problem's shape and, for neural heads, how to train."""

    in_features: int
    num_classes: int
    single_logit: bool = False
    class_weights: list[float] | None = None
    seed: int = 0
    training: TrainSettings = field(default_factory=TrainSettings)
    backbone: Backbone | None = None
    positive: int | None = None  # the index of the task's positive class (`task.positive_class`), where it names one

    @property
    def num_outputs(self) -> int:
        """Logits a neural head produces: 1 for a binary task with one logit, else one per class."""
        return 1 if self.single_logit else self.num_classes


class Head(Registered, ABC):
    """A trainable classifier on frozen backbone features.

    Implementations are adapters (one for torch networks trained by Lightning, one for scikit-learn
    estimators); a new kind of head is one adapter naming its kind (`class TorchHead(Head, kind="torch")`): a
    saved head is read back by the adapter of its kind (`leukexp.heads.kinds`).
    """

    # the selected epoch of a head trained in epochs; None for one fitted at once (scikit-learn estimators: no
    # `best/epoch` metric, no epoch aggregates on its parent)
    best_epoch: int | None = 0
    # an aggregator scores bags (`predict_proba(features, bags)`, `attention(features, bags)`); others score rows
    aggregates: ClassVar[bool] = False

    @abstractmethod
    def fit(self, train: Split, val: Split) -> pd.DataFrame:
        """Train on `train`, select on `val` (setting `best_epoch`); return the per-epoch history as
        `history_frame` makes it: `epoch`, then any of `vocabulary.HISTORY_METRICS` (`train/loss`, `val/acc`...),
        one row per epoch. Reports, curves, `best/*` metrics and the search read these columns."""

    @abstractmethod
    def predict_proba(self, features: np.ndarray) -> np.ndarray:
        """Class probabilities (N, classes), columns in class-index order."""

    @abstractmethod
    def save(self, folder: Path) -> dict[str, Any]:
        """Write the trained head into `folder`; return its spec (JSON) for `load`."""

    @classmethod
    @abstractmethod
    def load(cls, folder: Path, spec: dict[str, Any]) -> Head:
        """Rebuild a head saved by `save`, without running code from the folder."""

    def class_scores(self) -> Any | None:
        """A torch module from features (N, F) to one score per class (N, C) whose gradient follows the
        prediction, for activation maps; None for heads without one (e.g. kNN)."""
        return None



class Aggregator(Head):
    """A head that scores bags: its instances' features and each bag's offsets in, one row per bag out, and each
    instance's weight in its bag's decision (`attention`)."""

    aggregates: ClassVar[bool] = True

    @abstractmethod
    def predict_proba(self, features: np.ndarray, bags: np.ndarray | None = None) -> np.ndarray:
        """Class probabilities per bag (all rows one bag when `bags` is None)."""

    @abstractmethod
    def attention(self, features: np.ndarray, bags: np.ndarray | None = None) -> np.ndarray:
        """Each instance's weight in its bag's decision (a bag's weights sum to 1), in instance order."""

def history_frame(rows: list[dict[str, float]]) -> pd.DataFrame:
    """A head's per-epoch history in the schema its readers expect: `epoch`, then the history metrics it has (in
    `vocabulary.HISTORY_METRICS` order); a column outside the schema is a bug in the head (ValueError)."""
    unknown = sorted({key for row in rows for key in row} - {EPOCH, *HISTORY_METRICS})
    if unknown:
        raise ValueError(f"history columns outside the schema (vocabulary.HISTORY_METRICS): {unknown}")
    present = [name for name in HISTORY_METRICS if any(name in row for row in rows)]
    return pd.DataFrame(rows, columns=[EPOCH, *present])


def accuracy(probs: np.ndarray, labels: np.ndarray) -> float:
    """Share of samples whose most probable class is the true one."""
    return float((probs.argmax(1) == labels).mean()) if len(labels) else float("nan")


# `training.head_threads: auto`: heads with at least this many parameters train on every thread of the job
# (mlp3's 1.9 M: 19-26 s instead of 31-33 s on 2 cores), smaller ones and scikit-learn heads on one (mlp1: no
# faster on two, and threads that wait on each other stall under a competing load)
PARALLEL_HEAD_PARAMETERS = 1_000_000


def available_memory() -> int:
    """Bytes of memory this process can still use: the kernel's MemAvailable, else the physical total."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))


# a trained float32 parameter costs its value, gradient and Adam's two moments
TRAINING_BYTES_PER_PARAMETER = 16


def check_trainable_size(parameters: int, key: str, value: object) -> None:
    """Refuse a head whose training would not fit in memory (one line naming the key), before anything is allocated."""
    from leukexp.errors import LeukexpError

    need, have = parameters * TRAINING_BYTES_PER_PARAMETER, available_memory()
    if need > have:
        raise LeukexpError(f"{key}={value!r}: a head of {parameters:,} parameters needs about {need / 2**30:,.1f} GiB"
                           f" to train, more than this machine has free ({have / 2**30:.1f} GiB); use smaller widths")


def head_threads(setting: int | str | None, parameters: int, job_threads: int) -> int | None:
    """Threads a head trains with on the CPU: `setting` when a number, None when None (as is), and for `auto`
    every thread of the job for heads of `PARALLEL_HEAD_PARAMETERS`+ parameters, else one."""
    if setting != "auto":
        return int(setting) if setting else None
    return max(1, job_threads) if parameters >= PARALLEL_HEAD_PARAMETERS else 1
