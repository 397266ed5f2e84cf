"""Stratified (grouped) k-fold test splits and a stratified validation split, at source-image level."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold, train_test_split

from leukexp.errors import LeukexpError

TRAIN, VAL, TEST = "train", "val", "test"


@dataclass
class FoldSpec:
    """Which fold of a k-fold split is held out for testing.

    Args:
        index: 0-based fold number (`fold=f0` .. `fold=f4`).
        n_splits: number of folds.
        val_fraction: share of the fold's training images held out for validation.
        seed: seed of the shuffles; the same seed gives the same split for every model and head.
    """

    index: int = 0
    n_splits: int = 5
    val_fraction: float = 0.2
    seed: int = 42
    name: str | None = None

    def __post_init__(self) -> None:
        if self.n_splits < 2:
            raise LeukexpError(f"fold.n_splits={self.n_splits}: needs at least 2 folds")
        if not 0 <= self.index < self.n_splits:
            raise LeukexpError(
                f"fold.index={self.index}: out of range for fold.n_splits={self.n_splits} (use 0..{self.n_splits - 1})"
            )
        if not 0.0 < self.val_fraction < 1.0:
            raise LeukexpError(f"fold.val_fraction={self.val_fraction}: must be between 0 and 1")


def assign_splits(frame: pd.DataFrame, fold: FoldSpec, unit: str = "image") -> pd.Series:
    """Return `train`/`val`/`test` per row of a catalog frame (columns `label`, `group`); `unit` is what a row is,
    in the messages (`image`, or `bag` in a bag study)."""
    labels = frame["label"].to_numpy()
    groups = frame["group"].to_numpy()
    counts = frame["label"].value_counts()
    if (counts < fold.n_splits).any():
        label = counts.idxmin()
        raise LeukexpError(
            f"class {label} has {counts[label]} {unit}(s), fewer than fold.n_splits={fold.n_splits};"
            f" add {unit}s to it or lower fold.n_splits"
        )
    grouped = frame["group"].duplicated().any()
    least = minimum_per_class(fold.n_splits)
    if not grouped and (counts < least).any():
        label = counts.idxmin()
        raise LeukexpError(
            f"class {label} has {counts[label]} {unit}(s): with fold.n_splits={fold.n_splits} a fold's training part"
            f" keeps {counts[label] - -(-counts[label] // fold.n_splits)} of them, too few to stratify a validation"
            f" split (2 needed); a class needs at least {least} {unit}s: add {unit}s to it or lower fold.n_splits"
        )
    if grouped and frame["group"].nunique() < fold.n_splits:
        raise LeukexpError(
            f"data.groups_csv: {frame['group'].nunique()} groups (patients), fewer than fold.n_splits={fold.n_splits};"
            " lower fold.n_splits or add groups"
        )
    splitter = (StratifiedGroupKFold if grouped else StratifiedKFold)(
        n_splits=fold.n_splits, shuffle=True, random_state=fold.seed
    )
    folds = list(splitter.split(np.zeros(len(frame)), labels, groups if grouped else None))
    train_idx, test_idx = folds[fold.index]
    val_idx = _validation_subset(labels[train_idx], groups[train_idx], fold, grouped, unit)
    split = np.full(len(frame), TRAIN, dtype=object)
    split[test_idx] = TEST
    split[train_idx[val_idx]] = VAL
    return pd.Series(split, index=frame.index, name="split")


def minimum_per_class(n_splits: int) -> int:
    """The fewest images a class may have: every fold's training part keeps at least 2 (a stratified validation
    split takes one and leaves one)."""
    count = n_splits
    while count - -(-count // n_splits) < 2:
        count += 1
    return count


def _validation_subset(labels: np.ndarray, groups: np.ndarray, fold: FoldSpec, grouped: bool, unit: str = "image"
                       ) -> np.ndarray:
    positions = np.arange(len(labels))
    n_classes = len(np.unique(labels))
    if int(np.ceil(fold.val_fraction * len(labels))) < n_classes:
        raise LeukexpError(
            f"fold.val_fraction={fold.val_fraction} leaves fewer validation {unit}s than the {n_classes} classes"
            f" ({len(labels)} training {unit}s in this fold); raise fold.val_fraction or add {unit}s"
        )
    if not grouped:
        _, val = train_test_split(positions, test_size=fold.val_fraction, stratify=labels, random_state=fold.seed)
        return np.sort(val)
    n_val_splits = max(2, round(1.0 / fold.val_fraction))
    splitter = StratifiedGroupKFold(n_splits=n_val_splits, shuffle=True, random_state=fold.seed)
    _, val = next(splitter.split(positions, labels, groups))
    return val


def manifest(frame: pd.DataFrame, split: pd.Series) -> pd.DataFrame:
    """The split manifest logged with every run: file, label, group, split and content hash."""
    table = frame[["file", "label", "group", "sha1"]].copy()
    table.insert(3, "split", split.to_numpy())
    return table


def split_summary(frame: pd.DataFrame, split: pd.Series, classes: list[str]) -> pd.DataFrame:
    """Images per class (rows) and split (columns), with totals."""
    table = pd.crosstab(frame["label"], split).reindex(index=classes, columns=[TRAIN, VAL, TEST], fill_value=0)
    table["total"] = table.sum(axis=1)
    table.loc["total"] = table.sum(axis=0)
    return table
