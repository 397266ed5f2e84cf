"""The differential head (`head=differential`): a bag described by its instances' cell types, as a hematologist counts.

A cell-type classifier scores every instance of a bag; the bag becomes its differential, one number per type:
`features: soft` (the mean of its instances' type probabilities) or `counted` (the share of its instances whose
most likely type it is), and with `topk: K` also the mean of its K surest instances of each type (so two rare cells
still count). A bag classifier (`bag`: any per-image head option, `logreg` by default) is trained on the bags'
labels over those numbers. Every part that is fitted (the cell classifier, the bag classifier and its
standardization) sees the training bags of the fold only.

The cell classifier (`cells: own`) is trained inside each fold on the training bags' instances that carry their own
label in `instances.csv`: any names (`lymphoblast`, `neutrophil`, ...), the cell types; never on a test bag.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from leukexp.errors import LeukexpError
from leukexp.heads.base import Head, HeadContext, Split, accuracy, history_frame

FEATURES = ("soft", "counted")


def type_shares(probs: np.ndarray, bags: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per bag and type: the mean probability (soft) and the share of instances most likely that type (counted)."""
    winners = np.eye(probs.shape[1])[probs.argmax(1)] if len(probs) else np.zeros_like(probs)
    soft = np.array([probs[a:b].mean(0) for a, b in itertools.pairwise(bags)])
    counted = np.array([winners[a:b].mean(0) for a, b in itertools.pairwise(bags)])
    return soft, counted


def surest(probs: np.ndarray, bags: np.ndarray, k: int) -> np.ndarray:
    """Per bag and type: the mean probability of its k instances surest of that type (all of a smaller bag)."""
    return np.array([-np.sort(-probs[a:b], axis=0)[:k].mean(0) for a, b in itertools.pairwise(bags)])


class DifferentialHead(Head, kind="differential"):
    """A cell-type classifier, each bag's differential over its instances, and a bag classifier on the differentials.

    Args:
        context: the problem's shape (the bag classes).
        bag: builds the bag classifier (a per-image head) for a `HeadContext` of the differential's width.
        cell: builds the cell classifier (a per-image head) for a `HeadContext` of the types' count.
        features: `soft` or `counted`.
        topk: also the mean of the k surest instances of each type (0: not).
        bag_config, cell_config: the per-image head options, saved with the head.
    """

    aggregates = True
    best_epoch = None

    def __init__(self, context: HeadContext, bag: Any, cell: Any, features: str = "soft", topk: int = 0,
                 bag_config: str = "logreg", cell_config: str = "logreg") -> None:
        self.context = context
        self.make_bag, self.make_cell = bag, cell
        self.features, self.topk = features, int(topk)
        self.bag_config, self.cell_config = bag_config, cell_config
        self.types: list[str] = []
        self.cells: Head | None = None
        self.bag: Head | None = None
        self.mean = np.zeros(0)
        self.scale = np.ones(0)

    # the differential

    def type_proba(self, features: np.ndarray) -> np.ndarray:
        """Each instance's cell-type probabilities (instances, types)."""
        return self.cells.predict_proba(features)

    def describe(self, features: np.ndarray, bags: np.ndarray | None = None) -> np.ndarray:
        """Each bag's differential, the bag classifier's input (bags, types x (1 + with topk))."""
        bags = np.array([0, len(features)]) if bags is None else bags
        probs = self.type_proba(features)
        soft, counted = type_shares(probs, bags)
        parts = [soft if self.features == "soft" else counted]
        if self.topk:
            parts.append(surest(probs, bags, self.topk))
        return np.concatenate(parts, axis=1)

    def feature_names(self) -> list[str]:
        """The names of `describe`'s columns."""
        names = [f"{self.features}:{t}" for t in self.types]
        return names + ([f"top{self.topk}:{t}" for t in self.types] if self.topk else [])

    def differential(self, features: np.ndarray, bags: np.ndarray | None = None) -> pd.DataFrame:
        """One row per bag and type: the instances most likely that type (`count`), their share in % and the
        mean probability of the type in % (`soft_percent`)."""
        bags = np.array([0, len(features)]) if bags is None else bags
        probs = self.type_proba(features)
        soft, counted = type_shares(probs, bags)
        sizes = np.diff(bags)
        rows = [{"bag_index": i, "type": t, "count": int(np.rint(counted[i, j] * sizes[i])),
                 "percent": 100 * counted[i, j], "soft_percent": 100 * soft[i, j]}
                for i in range(len(sizes)) for j, t in enumerate(self.types)]
        return pd.DataFrame(rows)

    # training and scoring

    def _train_cells(self, train: Split, val: Split) -> None:
        """The cell classifier on the training bags' instances that carry their own label (`cells: own`)."""
        own = np.asarray(train.instance_types if train.instance_types is not None else [], dtype=object)
        labelled = own != "" if len(own) else np.zeros(len(train.features), bool)
        self.types = sorted({str(t) for t in own[labelled]})
        if len(self.types) < 2:
            raise LeukexpError(f"head=differential head.cells=own: the training bags' instances carry"
                               f" {len(self.types)} cell type(s) in instances.csv ({', '.join(self.types) or 'none'});"
                               " the cell classifier needs at least two: label the cells (file,instance_label)")
        index = {t: i for i, t in enumerate(self.types)}
        targets = np.array([index[str(t)] for t in own[labelled]])
        val_own = np.asarray(val.instance_types if val.instance_types is not None else [], dtype=object)
        val_mask = np.isin(val_own, self.types) if len(val_own) else np.zeros(len(val.features), bool)
        self.cells = self.make_cell(HeadContext(self.context.in_features, len(self.types), seed=self.context.seed))
        val_split = (Split(np.array([index[str(t)] for t in val_own[val_mask]]), val.features[val_mask])
                     if val_mask.any() else Split(targets, train.features[labelled]))
        self.cells.fit(Split(targets, train.features[labelled]), val_split)

    def fit(self, train: Split, val: Split) -> pd.DataFrame:
        """Cell classifier, the training bags' differentials, then the bag classifier; the history's validation
        value is the bags'."""
        if train.bags is None or val.bags is None or train.features is None or val.features is None:
            raise ValueError("an aggregator trains on bags of features")
        largest = int(np.diff(train.bags).max())
        if self.topk > largest:
            raise LeukexpError(f"head.topk={self.topk}: larger than every training bag (the largest holds {largest}"
                               f" instances); use head.topk={min(3, largest)} or head.topk=0")
        self._train_cells(train, val)
        described = self.describe(train.features, train.bags)
        self.mean, self.scale = described.mean(0), np.where(described.std(0) > 1e-9, described.std(0), 1.0)
        width = described.shape[1]
        self.bag = self.make_bag(HeadContext(width, self.context.num_classes, seed=self.context.seed))
        self.bag.fit(Split(train.labels, described), Split(val.labels, self.describe(val.features, val.bags)))
        probs = self.predict_proba(val.features, val.bags)
        from leukexp.vocabulary import VAL_ACC

        return history_frame([{"epoch": 0, VAL_ACC: accuracy(probs, val.labels)}])

    def predict_proba(self, features: np.ndarray, bags: np.ndarray | None = None) -> np.ndarray:
        """The bags' probabilities from their differentials (all rows one bag when `bags` is None)."""
        return self.bag.predict_proba(self.describe(features, bags))

    def attention(self, features: np.ndarray, bags: np.ndarray | None = None) -> np.ndarray:
        """Each instance's weight: its probability of its bag's most unusual type (the furthest above the training
        bags' mean, in their spreads), as a share of its bag's; a bag's weights sum to 1."""
        bags = np.array([0, len(features)]) if bags is None else bags
        probs = self.type_proba(features)
        described = self.describe(features, bags)[:, :len(self.types)]
        unusual = ((described - self.mean[:len(self.types)]) / self.scale[:len(self.types)]).argmax(1)
        weights = np.zeros(len(features))
        for i, (start, stop) in enumerate(itertools.pairwise(bags)):
            share = probs[start:stop, unusual[i]]
            weights[start:stop] = share / share.sum() if share.sum() > 0 else 1.0 / max(stop - start, 1)
        return weights

    # saving

    def save(self, folder: Path) -> dict[str, Any]:
        """The cell classifier in `cells/`, the bag classifier in `bag/`, the types and how bags are described."""
        return {"kind": self.kind, "cells": self.cells.save(folder / "cells"), "bag": self.bag.save(folder / "bag"),
                "types": self.types, "features": self.features, "topk": self.topk, "mean": self.mean.tolist(),
                "scale": self.scale.tolist(), "bag_config": self.bag_config, "cell_config": self.cell_config,
                "in_features": self.context.in_features, "num_classes": self.context.num_classes}

    @classmethod
    def load(cls, folder: Path, spec: dict[str, Any]) -> DifferentialHead:
        """Both classifiers by their own kinds, then the differential around them."""
        parts = {}
        for name in ("cells", "bag"):
            part = dict(spec[name])
            parts[name] = Head.of_kind(part.get("kind"), str(folder)).load(folder / name, part)
        head = cls(HeadContext(int(spec["in_features"]), int(spec["num_classes"])), None, None, spec["features"],
                   spec["topk"], spec["bag_config"], spec["cell_config"])
        head.cells, head.bag, head.types = parts["cells"], parts["bag"], [str(t) for t in spec["types"]]
        head.mean, head.scale = np.asarray(spec["mean"], float), np.asarray(spec["scale"], float)
        return head


def _per_image_head(option: str, key: str) -> Any:
    """The factory of a per-image head option (an aggregator is one line naming `key`)."""
    from leukexp.config.compose import build, load_option

    factory = build(load_option("head", str(option), key=key), key)
    probe = factory(HeadContext(in_features=4, num_classes=2))
    if getattr(probe, "aggregates", False):
        raise LeukexpError(f"{key}={option}: an aggregator; name a per-image head such as logreg or mlp1")
    return factory


def differential(context: HeadContext, cells: str = "own", bag: str = "logreg", features: str = "soft",
                 topk: int = 0, cell: str = "logreg") -> DifferentialHead:
    """`head=differential`: the cell classifier (`cells: own`, a per-image head `cell`) types every instance, a
    per-image head `bag` classifies the bags' differentials (`features`: soft or counted; `topk`)."""
    if cells != "own":
        raise LeukexpError(f"head.cells={cells!r}: only own (a cell classifier trained in each fold on instances.csv)"
                           " is available yet")
    if features not in FEATURES:
        raise LeukexpError(f"head.features={features!r}: expected soft (mean type probabilities) or counted (share of"
                           " cells most likely each type); head.topk=K adds the K surest cells of each type")
    if isinstance(topk, bool) or not isinstance(topk, int) or topk < 0:
        raise LeukexpError(f"head.topk={topk!r}: expected a whole number >= 0 (0: no surest-cells features)")
    return DifferentialHead(context, _per_image_head(bag, "head.bag"), _per_image_head(cell, "head.cell"), features,
                            topk, str(bag), str(cell))
