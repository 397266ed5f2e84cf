"""Protocols: how source images and their views become train/val/test samples, and class balancing."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd
from sklearn.model_selection import train_test_split
from sklearn.utils.class_weight import compute_class_weight

from leukexp.data.splits import TEST, TRAIN, VAL
from leukexp.errors import LeukexpError

Balance = Literal["none", "undersample", "oversample", "class_weights"]
SAMPLE_COLUMNS = ["source", "view", "label_index"]


@dataclass
class Samples:
    """Rows of (source image index, view index, label index) for each split, plus loss class weights."""

    train: pd.DataFrame
    val: pd.DataFrame
    test: pd.DataFrame
    class_weights: list[float] | None = None

    def counts(self, classes: list[str]) -> pd.DataFrame:
        """Samples per class (rows) and split (columns)."""
        table = pd.DataFrame({
            name: part["label_index"].value_counts().reindex(range(len(classes)), fill_value=0).to_numpy()
            for name, part in ((TRAIN, self.train), (VAL, self.val), (TEST, self.test))
        }, index=classes)
        table.loc["total"] = table.sum(axis=0)
        return table


@dataclass
class Protocol:
    """How a fold's split turns into training samples.

    Args:
        name: `strict` (default) or `thesis`.
        val_split: `source` keeps the validation split at source-image level (no view of a validation
            image is trained on); `view` augments train+val first, then splits the views at random
            (the study's protocol, which leaks).
        augment_test: also evaluate on every view of the test images (the study did; it inflates n).
        balance: `none`, `undersample` every class to the smallest, `oversample` to the largest, or
            `class_weights` in the loss.
        val_fraction: validation share when `val_split=view`.
        seed: seed of balancing and the view-level split.
    """

    name: str = "strict"
    val_split: Literal["source", "view"] = "source"
    augment_test: bool = False
    balance: Balance = "none"
    val_fraction: float = 0.2
    seed: int = 42

    def __post_init__(self) -> None:
        if self.val_split not in ("source", "view"):
            raise LeukexpError(f"protocol.val_split={self.val_split!r}: use 'source' or 'view'")
        if self.balance not in ("none", "undersample", "oversample", "class_weights"):
            raise LeukexpError(
                f"protocol.balance={self.balance!r}: use none, undersample, oversample or class_weights"
            )

    def build(self, frame: pd.DataFrame, split: pd.Series, n_views: int, n_classes: int) -> Samples:
        """Expand source images into (source, view) samples per split under this protocol."""
        labels = frame["label_index"].to_numpy()
        rng = np.random.default_rng(self.seed)

        def rows(split_name: str | tuple[str, ...], views: int) -> pd.DataFrame:
            names = (split_name,) if isinstance(split_name, str) else split_name
            sources = np.flatnonzero(split.isin(names).to_numpy())
            return pd.DataFrame({
                "source": np.repeat(sources, views),
                "view": np.tile(np.arange(views), len(sources)),
                "label_index": np.repeat(labels[sources], views),
            })

        test = rows(TEST, n_views if self.augment_test else 1)
        if self.val_split == "source":
            train = _balance(rows(TRAIN, n_views), self.balance, rng)
            val = rows(VAL, 1)
        else:
            pool = _balance(rows((TRAIN, VAL), n_views), self.balance, rng)
            train_pos, val_pos = train_test_split(
                np.arange(len(pool)), test_size=self.val_fraction, stratify=pool["label_index"],
                random_state=self.seed,
            )
            train, val = pool.iloc[np.sort(train_pos)], pool.iloc[np.sort(val_pos)]
        weights = None
        if self.balance == "class_weights":
            present = np.unique(train["label_index"])
            computed = compute_class_weight("balanced", classes=present, y=train["label_index"].to_numpy())
            weights = [1.0] * n_classes
            for cls, weight in zip(present, computed, strict=True):
                weights[int(cls)] = float(weight)
        train, val, test = (part.reset_index(drop=True) for part in (train, val, test))
        return Samples(train, val, test, class_weights=weights)


def _balance(samples: pd.DataFrame, balance: Balance, rng: np.random.Generator) -> pd.DataFrame:
    if balance in ("none", "class_weights"):
        return samples
    counts = samples["label_index"].value_counts()
    target = int(counts.min() if balance == "undersample" else counts.max())
    parts = []
    for label in sorted(counts.index):
        idx = np.flatnonzero(samples["label_index"].to_numpy() == label)
        if balance == "undersample":
            chosen = np.sort(rng.choice(idx, size=target, replace=False))
        else:
            extra = rng.choice(idx, size=target - len(idx), replace=True)
            chosen = np.concatenate([idx, extra])
        parts.append(samples.iloc[chosen])
    return pd.concat(parts).sort_values(["source", "view"], kind="stable").reset_index(drop=True)
