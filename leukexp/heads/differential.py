"""The differential head (`head=differential`): a bag described by its instances' cell types, as a hematologist counts.

A cell-type classifier scores every instance of a bag; the bag becomes its differential, one number per type:
`features: soft` (the mean of its instances' type probabilities) or `counted` (the share of its instances whose
most likely type it is), and with `topk: K` also the mean of its K surest instances of each type (so two rare cells
still count). A bag classifier (`bag`: any per-image head option, `logreg` by default) is trained on the bags'
labels over those numbers. Every part that is fitted (the cell classifier, the bag classifier and its
standardization) sees the training bags of the fold only.

The cell classifier comes from `cells`: `own` trains it inside each fold on the training bags' instances that carry
their own label in `instances.csv` (any names: `lymphoblast`, `neutrophil`, ...; never a test bag's); anything else
names a finished study of labeled cells (a model folder, `runs:/`, `models:/`), which the run layer loads and checks
(`inference.cell_study`) and hands over with `use_cells` before `fit`.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from leukexp.errors import LeukexpError
from leukexp.heads.base import Aggregator, Head, HeadContext, Split, accuracy, history_frame

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


def check_training_bags(sizes: np.ndarray, types: list[str], topk: int, own_cells: bool, where: str) -> None:
    """What the differential asks of the training bags (`sizes`: instances per bag; `types`: the distinct cell types
    their instances carry, with `head.cells=own`): two types to learn and a `head.topk` no larger than every bag;
    `where` names the labels' file in the message."""
    if own_cells and len(types) < 2:
        raise LeukexpError(f"head.cells=own: the training bags' instances carry {len(types)} cell type(s) in {where}"
                           f" ({', '.join(types) or 'none'}); the cell classifier needs at least two: label the cells"
                           " (file,instance_label) or name a cell study (head.cells=models:/NAME@ALIAS)")
    largest = int(sizes.max()) if len(sizes) else 0
    if topk > largest:
        raise LeukexpError(f"head.topk={topk}: larger than every training bag (the largest holds {largest} instances);"
                           f" use head.topk={min(3, largest)} or head.topk=0")


class DifferentialHead(Aggregator, kind="differential"):
    """A cell-type classifier, each bag's differential over its instances, and a bag classifier on the differentials.

    Args:
        context: the problem's shape (the bag classes).
        bag: builds the bag classifier (a per-image head) for a `HeadContext` of the differential's width.
        cell: builds the cell classifier (a per-image head) for a `HeadContext` of the types' count.
        features: `soft` or `counted`.
        topk: also the mean of the k surest instances of each type (0: not).
        bag_config: the bag classifier's per-image head option, saved with the head.
        cell_config: the cell classifier's per-image head option, saved with the head.
        cells: `own` (typed from the bag study's own labelled cells) or where a finished cell study is.
    """

    best_epoch = None

    def __init__(self, context: HeadContext, bag: Any, cell: Any, features: str = "soft", topk: int = 0,
                 bag_config: str = "logreg", cell_config: str = "logreg", cells: str = "own") -> None:
        self.context = context
        self.source = str(cells)  # own, or the cell study the run layer loads
        self.make_bag, self.make_cell = bag, cell
        self.features, self.topk = features, int(topk)
        self.bag_config, self.cell_config = bag_config, cell_config
        self.types: list[str] = []
        self._parts: dict[str, Head] = {}  # the cell and the bag classifier, once trained or loaded
        self.mean = np.zeros(0)
        self.scale = np.ones(0)
        self.given_cells = False
        self._typed: tuple[np.ndarray, np.ndarray] | None = None

    @property
    def cells(self) -> Head:
        """The cell classifier (trained by `fit`, given by `use_cells` or loaded)."""
        return self._part("cells")

    @cells.setter
    def cells(self, head: Head) -> None:
        self._parts["cells"] = head

    @property
    def bag(self) -> Head:
        """The bag classifier on the differentials (trained by `fit` or loaded)."""
        return self._part("bag")

    @bag.setter
    def bag(self, head: Head) -> None:
        self._parts["bag"] = head

    def _part(self, name: str) -> Head:
        if name not in self._parts:
            raise ValueError(f"the differential's {name} classifier is used before it is trained")
        return self._parts[name]

    def use_cells(self, cells: Head, types: list[str]) -> None:
        """A trained cell classifier (from a cell study) and the types it scores, used as they are by `fit`."""
        self.cells, self.types, self.given_cells, self._typed = cells, list(types), True, None

    # the differential

    def type_proba(self, features: np.ndarray) -> np.ndarray:
        """Each instance's cell-type probabilities (instances, types); the last array's are kept, so describing,
        weighing and counting one bag types its cells once."""
        if self._typed is not None and self._typed[0] is features:
            return self._typed[1]
        probs = self.cells.predict_proba(features)
        self._typed = (features, probs)
        return probs

    def describe(self, features: np.ndarray, bags: np.ndarray | None = None) -> np.ndarray:
        """Each bag's differential, the bag classifier's input (bags, types x (1 + with topk))."""
        bags = np.array([0, len(features)]) if bags is None else bags
        probs = self.type_proba(features)
        soft, counted = type_shares(probs, bags)
        parts = [soft if self.features == "soft" else counted]
        if self.topk:
            parts.append(surest(probs, bags, self.topk))
        return np.concatenate(parts, axis=1)

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

    def odds_ratios(self, features: np.ndarray, bags: np.ndarray, labels: np.ndarray, positive: int,
                    rounds: int = 200, seed: int = 0) -> pd.DataFrame | None:
        """Which cell types drive the diagnosis: per type, the bag classifier's odds ratio of class `positive` per
        +1 % of that type's share (the other inputs held), with a 95 % bootstrap interval from refitting it on bags
        drawn with replacement from `features`/`bags`/`labels` (the training bags). None where the bag classifier is
        not linear (scikit-learn with `coef_`) or the task has more than two classes."""
        from sklearn.base import clone

        pipeline = getattr(self.bag, "pipeline", None)
        point = _slopes(pipeline, positive, len(self.types)) if self.context.num_classes == 2 else None
        if point is None:
            return None
        described = self.describe(features, bags)
        rng = np.random.default_rng(seed)
        drawn = []
        for _ in range(rounds):
            pick = rng.integers(0, len(labels), len(labels))
            if len(np.unique(labels[pick])) == 2:
                drawn.append(_slopes(clone(pipeline).fit(described[pick], labels[pick]), positive, len(self.types)))
        low, high = np.percentile(np.array(drawn), [2.5, 97.5], axis=0) if drawn else (point * np.nan,) * 2
        per_percent = 0.01  # shares are fractions: +1 % is +0.01
        return pd.DataFrame({"type": self.types, "odds_ratio": np.exp(point * per_percent),
                             "ci_low": np.exp(low * per_percent), "ci_high": np.exp(high * per_percent),
                             "rounds": len(drawn)})

    # training and scoring

    def _train_cells(self, train: Split, val: Split, own: np.ndarray) -> None:
        """The cell classifier on the training bags' instances that carry their own label (`own`; `cells: own`)."""
        features, val_features = train.in_memory(), val.in_memory()
        labelled = own != "" if len(own) else np.zeros(len(features), dtype=bool)
        self.types = sorted({str(t) for t in own[labelled]})
        index = {t: i for i, t in enumerate(self.types)}
        targets = np.array([index[str(t)] for t in own[labelled]])
        val_own = np.asarray(val.instance_types if val.instance_types is not None else [], dtype=object)
        val_mask = np.isin(val_own, self.types) if len(val_own) else np.zeros(len(val_features), dtype=bool)
        self.cells = self.make_cell(HeadContext(self.context.in_features, len(self.types), seed=self.context.seed))
        val_split = (Split(np.array([index[str(t)] for t in val_own[val_mask]]), val_features[val_mask])
                     if val_mask.any() else Split(targets, features[labelled]))
        self.cells.fit(Split(targets, features[labelled]), val_split)

    def fit(self, train: Split, val: Split) -> pd.DataFrame:
        """Cell classifier, the training bags' differentials, then the bag classifier; the history's validation
        value is the bags'."""
        if train.bags is None or val.bags is None or train.features is None or val.features is None:
            raise ValueError("an aggregator trains on bags of features")
        own = np.asarray(train.instance_types if train.instance_types is not None else [], dtype=object)
        check_training_bags(np.diff(train.bags), sorted({str(t) for t in own if t != ""}), self.topk,
                            not self.given_cells and self.source == "own", "instances.csv")
        self._typed = None
        if not self.given_cells:
            if self.source != "own":
                raise LeukexpError(f"head.cells={self.source}: the cell study was not loaded; train through"
                                   " leukexp-train, which loads and checks it")
            self._train_cells(train, val, own)
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

    def unusual_types(self, features: np.ndarray, bags: np.ndarray | None = None) -> np.ndarray:
        """Per bag, the index of its most unusual type: the one whose share lies furthest above the training bags'
        mean, in their spreads (the type that moved its decision most)."""
        bags = np.array([0, len(features)]) if bags is None else bags
        described = self.describe(features, bags)[:, :len(self.types)]
        return ((described - self.mean[:len(self.types)]) / self.scale[:len(self.types)]).argmax(1)

    def attention(self, features: np.ndarray, bags: np.ndarray | None = None) -> np.ndarray:
        """Each instance's weight: its probability of its bag's most unusual type (the furthest above the training
        bags' mean, in their spreads), as a share of its bag's; a bag's weights sum to 1."""
        bags = np.array([0, len(features)]) if bags is None else bags
        probs = self.type_proba(features)
        unusual = self.unusual_types(features, bags)
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
                "cells_source": self.source,
                "in_features": self.context.in_features, "num_classes": self.context.num_classes}

    @classmethod
    def load(cls, folder: Path, spec: dict[str, Any]) -> DifferentialHead:
        """Both classifiers by their own kinds, then the differential around them."""
        parts = {}
        for name in ("cells", "bag"):
            part = dict(spec[name])
            parts[name] = Head.of_kind(part.get("kind"), str(folder)).load(folder / name, part)
        head = cls(HeadContext(int(spec["in_features"]), int(spec["num_classes"])), None, None, spec["features"],
                   spec["topk"], spec["bag_config"], spec["cell_config"], spec.get("cells_source", "own"))
        head.cells, head.bag, head.types = parts["cells"], parts["bag"], [str(t) for t in spec["types"]]
        head.mean, head.scale = np.asarray(spec["mean"], float), np.asarray(spec["scale"], float)
        return head


def _slopes(model: Any, positive: int, width: int) -> np.ndarray | None:
    """A fitted binary linear scikit-learn model's change in the log-odds of class `positive` per unit of each of its
    first `width` inputs (a leading StandardScaler undone); None for a model without `coef_`."""
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    steps = [step for _, step in model.steps] if isinstance(model, Pipeline) else [model]
    estimator = steps[-1]
    if not hasattr(estimator, "coef_") or np.asarray(estimator.coef_).shape[0] != 1:
        return None
    slopes = np.asarray(estimator.coef_, float)[0]  # log-odds of classes_[1] per unit (of the scaled input)
    if isinstance(steps[0], StandardScaler):
        slopes = slopes / np.where(steps[0].scale_ == 0, 1.0, steps[0].scale_)
    sign = 1.0 if int(np.asarray(estimator.classes_)[1]) == positive else -1.0
    return sign * slopes[:width]


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
    per-image head `bag` classifies the bags' differentials (`features`: soft or counted; `topk`); `cells`: own or
    a finished cell study (a model folder, runs:/<id>/model, models:/NAME/VERSION or models:/NAME@ALIAS)."""
    if not isinstance(cells, str) or not cells.strip():
        raise LeukexpError(f"head.cells={cells!r}: expected own (cell types learnt in each fold from instances.csv) or"
                           " a finished cell study: a model folder, runs:/<id>/model or models:/NAME@ALIAS")
    if features not in FEATURES:
        raise LeukexpError(f"head.features={features!r}: expected soft (mean type probabilities) or counted (share of"
                           " cells most likely each type); head.topk=K adds the K surest cells of each type")
    if isinstance(topk, bool) or not isinstance(topk, int) or topk < 0:
        raise LeukexpError(f"head.topk={topk!r}: expected a whole number >= 0 (0: no surest-cells features)")
    return DifferentialHead(context, _per_image_head(bag, "head.bag"), _per_image_head(cell, "head.cell"), features,
                            topk, str(bag), str(cell), cells.strip())
