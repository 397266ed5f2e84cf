"""Aggregator heads (`head=abmil`, `head=meanpool`, `head=vote`): one prediction per bag of instance embeddings.

A bag split holds the instances' features in bag order and `bags`, the offsets of each bag's rows (bag i is rows
`bags[i]:bags[i+1]`). Every aggregator also gives each instance a weight (`attention`): what the pictures, the
attention table and the instance metrics read.

- `abmil`: gated attention MIL (Ilse et al. 2018): instances are standardized (training mean and spread), embedded
  (`hidden`), weighted by a gated attention branch (`attention` wide: tanh(Vh) * sigmoid(Uh) -> w), and the
  weighted mean is classified. Trained by Lightning like the MLP heads (best validation epoch kept).
- `meanpool`: the same network with mean (or `pool: max`) pooling instead of attention: the baseline a rare witness
  is diluted in.
- `vote`: an instance classifier (`instance`: any per-image head, e.g. `logreg`) trained on the instances, with
  their own labels where the data gives them (`labels: own`, read from `instances.csv`) or their bag's; a bag's
  probabilities are the mean (`reduce: mean`) or the top-k mean (`reduce: topk`, `k` instances) of its instances'.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from leukexp.errors import LeukexpError
from leukexp.heads.base import Aggregator, Head, HeadContext, Split, check_trainable_size
from leukexp.heads.torch_head import TorchHead

POOLS = ("attention", "mean", "max")


def pad_bags(features: np.ndarray, bags: np.ndarray | None) -> torch.Tensor:
    """(instances, D) features and bag offsets -> (bags, longest, D), padded with NaN (None: one bag)."""
    if bags is None:
        bags = np.array([0, len(features)])
    sizes = np.diff(bags)
    padded = torch.full((len(sizes), int(sizes.max()) if len(sizes) else 0, features.shape[1]), float("nan"))
    source = torch.as_tensor(features, dtype=torch.float32)
    for i, (start, size) in enumerate(zip(bags[:-1], sizes, strict=True)):
        padded[i, :size] = source[start:start + size]
    return padded


class BagNetwork(nn.Module):
    """(bags, instances, D) features, padded with NaN -> (bags, outputs) logits, through a pooled bag embedding.

    Args:
        in_features: instance feature width.
        num_outputs: logits.
        hidden: instance embedding width.
        attention: width of the gated attention branch.
        dropout: dropout on the instance embeddings while training.
        pool: `attention` (gated), `mean` or `max`.
    """

    def __init__(self, in_features: int, num_outputs: int, hidden: int = 128, attention: int = 64,
                 dropout: float = 0.25, pool: str = "attention") -> None:
        super().__init__()
        self.pool = pool
        self.mean: torch.Tensor
        self.scale: torch.Tensor
        self.register_buffer("mean", torch.zeros(in_features))
        self.register_buffer("scale", torch.ones(in_features))
        self.embed = nn.Sequential(nn.Linear(in_features, hidden), nn.ReLU(), nn.Dropout(dropout))
        self.attend_v = nn.Linear(hidden, attention)
        self.attend_u = nn.Linear(hidden, attention)
        self.attend_w = nn.Linear(attention, 1)
        self.classify = nn.Linear(hidden, num_outputs)

    def standardize_to(self, features: np.ndarray) -> None:
        """Take the training instances' mean and spread (frozen features differ in scale by dimension)."""
        values = torch.as_tensor(features, dtype=torch.float32)
        self.mean.copy_(values.mean(0))
        self.scale.copy_(values.std(0).clamp_min(1e-6))

    def weights(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Instance embeddings (B, N, H) and their pooling weights (B, N), zero on padding."""
        mask = ~torch.isnan(features[..., 0])
        x = torch.nan_to_num((features - self.mean) / self.scale)
        h = self.embed(x)
        if self.pool == "attention":
            scores = self.attend_w(torch.tanh(self.attend_v(h)) * torch.sigmoid(self.attend_u(h))).squeeze(-1)
            weights = torch.softmax(scores.masked_fill(~mask, float("-inf")), dim=1)
        elif self.pool == "mean":
            weights = mask.float() / mask.sum(1, keepdim=True).clamp_min(1)
        else:  # max: each embedding dimension's largest instance; weight = the share of dimensions it wins
            winners = h.masked_fill(~mask[..., None], float("-inf")).argmax(1)
            weights = torch.zeros(mask.shape, device=h.device).scatter_add_(
                1, winners, torch.ones(winners.shape, device=h.device)) / h.shape[-1]
        return h, torch.nan_to_num(weights)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Bag logits."""
        h, weights = self.weights(features)
        if self.pool == "max":
            mask = ~torch.isnan(features[..., 0])
            pooled = h.masked_fill(~mask[..., None], float("-inf")).amax(1)
        else:
            pooled = (weights[..., None] * h).sum(1)
        return self.classify(pooled)


class BagHead(TorchHead, Aggregator, kind="bag"):
    """A `BagNetwork` trained with Lightning on padded bags (one sample per bag), the best validation epoch kept."""

    network_type = BagNetwork
    network: BagNetwork

    def fit(self, train: Split, val: Split) -> pd.DataFrame:
        """Standardize to the training instances, pad every bag, train as the MLP heads train."""
        (features, bags), (val_features, val_bags) = train.bagged(), val.bagged()
        self.network.standardize_to(features)
        return super().fit(Split(train.labels, pad_bags(features, bags).numpy()),
                           Split(val.labels, pad_bags(val_features, val_bags).numpy()))

    @torch.no_grad()
    def predict_proba(self, features: np.ndarray, bags: np.ndarray | None = None) -> np.ndarray:
        """Class probabilities per bag (all rows one bag when `bags` is None)."""
        return super().predict_proba(pad_bags(features, bags).numpy())

    @torch.no_grad()
    def attention(self, features: np.ndarray, bags: np.ndarray | None = None) -> np.ndarray:
        """Each instance's pooling weight (a bag's weights sum to 1), in instance order."""
        self.network.eval()
        padded = pad_bags(features, bags)
        _, weights = self.network.weights(padded)
        mask = ~torch.isnan(padded[..., 0])
        return weights[mask].numpy().astype(np.float64)

    def class_scores(self) -> None:
        """No activation maps through a bag (the attention shows what decided)."""
        return None

    def save(self, folder: Path) -> dict[str, Any]:
        """The network's weights and arguments."""
        return super().save(folder) | {"kind": self.kind}


def _check_width(key: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise LeukexpError(f"head.{key}={value!r}: expected a whole number >= 1, e.g. head.{key}=128")
    return int(value)


def bag_network(context: HeadContext, hidden: int = 128, attention: int = 64, dropout: float = 0.25,
                pool: str = "attention") -> BagHead:
    """`head=abmil` (`pool: attention`) and `head=meanpool` (`pool: mean` or `max`)."""
    if pool not in POOLS:
        raise LeukexpError(f"head.pool={pool!r}: expected one of {', '.join(POOLS)}")
    if isinstance(dropout, bool) or not isinstance(dropout, int | float) or not 0 <= dropout < 1:
        raise LeukexpError(f"head.dropout={dropout!r}: expected a rate from 0 up to (not including) 1")
    hidden, attention = _check_width("hidden", hidden), _check_width("attention", attention)
    width = context.in_features
    check_trainable_size((width + 1) * hidden + 2 * (hidden + 1) * attention + (hidden + 1) * context.num_outputs,
                         "head.hidden", hidden)
    network = BagNetwork(width, context.num_outputs, hidden, attention, float(dropout), str(pool))
    return BagHead(network, context, {"hidden": hidden, "attention": attention, "dropout": float(dropout),
                                      "pool": str(pool)})


class VoteHead(Aggregator, kind="vote"):
    """An instance classifier whose instances vote: a bag's probabilities are the mean (or top-k mean) of its
    instances'.

    Args:
        instance: the per-image head that scores instances.
        context: the problem's shape.
        labels: `bag` (each instance takes its bag's label), `own` (an instance's own label where the data gives
            one, as a class name in `instances.csv`; its bag's elsewhere) or `self` (mi-SVM-style self-training for
            two classes: every cell of a negative bag is negative; in each positive bag its `share` surest cells are
            positive, the rest negative, re-chosen for `rounds` rounds).
        reduce: `mean` or `topk` (the mean of the `k` instances most sure of each class).
        k: instances of `topk`.
        instance_config: the instance head's option, saved with the head.
        share, rounds: `labels=self`'s share of a positive bag taken as positive, and its rounds.
    """


    def __init__(self, instance: Head, context: HeadContext, labels: str = "bag", reduce: str = "mean", k: int = 5,
                 instance_config: str = "logreg", share: float = 0.1, rounds: int = 3) -> None:
        self.instance = instance
        self.context = context
        self.labels, self.reduce, self.k = labels, reduce, int(k)
        self.instance_config = instance_config
        self.share, self.rounds = float(share), int(rounds)
        self.positive = context.positive if context.positive is not None else 0
        self.prior = np.full(context.num_classes, 1.0 / context.num_classes)  # training instances' mean vote

    def _targets(self, split: Split) -> np.ndarray:
        per_instance = np.repeat(split.labels, np.diff(split.bagged()[1]))
        if self.labels == "own" and split.instance_labels is not None:
            own = np.asarray(split.instance_labels)
            per_instance = np.where(own >= 0, own, per_instance)
        return per_instance

    def _self_targets(self, split: Split, targets: np.ndarray) -> np.ndarray:
        """`labels=self`: each positive bag's `share` surest instances (at least one) positive, the rest negative."""
        negative = 1 - self.positive
        features, bags = split.bagged()
        scores = self.instance_proba(features)[:, self.positive]
        chosen = np.full(len(targets), negative)
        for label, (start, stop) in zip(split.labels, itertools.pairwise(bags), strict=True):
            if label == self.positive:
                top = np.argsort(-scores[start:stop], kind="stable")[:max(1, round(self.share * (stop - start)))]
                chosen[start + top] = self.positive
        return chosen

    def _self_train(self, train: Split, val: Split) -> pd.DataFrame:
        """mi-SVM-style rounds: fit on the current instance labels, re-choose each positive bag's positives; stop
        when nothing changes."""
        targets = self._targets(train)  # round 0: a positive bag's instances all positive
        val_targets = self._targets(val)
        history = self.instance.fit(Split(targets, train.features), Split(val_targets, val.features))
        for _ in range(self.rounds):
            chosen = self._self_targets(train, targets)
            if np.array_equal(chosen, targets):
                break
            targets = chosen
            val_targets = self._self_targets(val, val_targets)
            history = self.instance.fit(Split(targets, train.features), Split(val_targets, val.features))
        return history

    def fit(self, train: Split, val: Split) -> pd.DataFrame:
        """Train the instance head on instances; the history's validation values are the bags'."""
        from leukexp.heads.base import accuracy, history_frame

        (features, _), (val_features, val_bags) = train.bagged(), val.bagged()
        if self.labels == "self":
            check_self_training(self.context.num_classes)
            history = self._self_train(train, val)
        else:
            history = self.instance.fit(Split(self._targets(train), features),
                                        Split(self._targets(val), val_features))
        self.prior = self.instance_proba(features).mean(0)
        self.best_epoch = self.instance.best_epoch
        row = history.iloc[[self.best_epoch or 0]].to_dict("records")[0] if len(history) else {}
        probs = self.predict_proba(val_features, val_bags)
        from leukexp.vocabulary import VAL_ACC

        return history_frame([{**row, "epoch": 0, VAL_ACC: accuracy(probs, val.labels)}])

    def instance_proba(self, features: np.ndarray) -> np.ndarray:
        """Each instance's class probabilities."""
        return self.instance.predict_proba(features)

    def predict_proba(self, features: np.ndarray, bags: np.ndarray | None = None) -> np.ndarray:
        """The bags' probabilities from their instances' (all rows one bag when `bags` is None)."""
        bags = np.array([0, len(features)]) if bags is None else bags
        probs = self.instance_proba(features)
        rows = []
        for start, stop in itertools.pairwise(bags):
            part = probs[start:stop]
            if self.reduce == "topk":
                k = min(self.k, len(part))
                top = -np.sort(-part, axis=0)[:k].mean(0)
                rows.append(top / top.sum())
            else:
                rows.append(part.mean(0))
        return np.array(rows)

    def attention(self, features: np.ndarray, bags: np.ndarray | None = None) -> np.ndarray:
        """Each instance's weight: its share of its bag's vote for the class the bag is scored most unusually for
        (its probability over the training instances' mean: the blasts of a leukemic bag, whose vote is rare)."""
        bags = np.array([0, len(features)]) if bags is None else bags
        probs, bag_probs = self.instance_proba(features), self.predict_proba(features, bags)
        weights = np.zeros(len(features))
        for i, (start, stop) in enumerate(itertools.pairwise(bags)):
            share = probs[start:stop, int((bag_probs[i] / np.maximum(self.prior, 1e-12)).argmax())]
            weights[start:stop] = share / max(share.sum(), 1e-12)
        return weights

    def save(self, folder: Path) -> dict[str, Any]:
        """The instance head in `instance/`, and how instances vote."""
        spec = self.instance.save(folder / "instance")
        return {"kind": self.kind, "instance": spec, "labels": self.labels, "reduce": self.reduce, "k": self.k,
                "instance_config": self.instance_config, "share": self.share, "rounds": self.rounds,
                "positive": self.positive, "in_features": self.context.in_features,
                "num_classes": self.context.num_classes, "prior": [float(p) for p in self.prior]}

    @classmethod
    def load(cls, folder: Path, spec: dict[str, Any]) -> VoteHead:
        """The instance head by its own kind, then the vote around it."""
        instance_spec = dict(spec["instance"])
        instance = Head.of_kind(instance_spec.get("kind"), str(folder)).load(folder / "instance", instance_spec)
        context = HeadContext(int(spec["in_features"]), int(spec["num_classes"]), positive=spec.get("positive"))
        head = cls(instance, context, spec["labels"], spec["reduce"], spec["k"], spec["instance_config"],
                   spec.get("share", 0.1), spec.get("rounds", 3))
        head.prior = np.asarray(spec.get("prior", head.prior), float)
        return head


def check_self_training(classes: int) -> None:
    """`head.labels=self` needs two bag classes: a positive one (whose bags hold a few witnesses) and a negative."""
    if classes != 2:
        raise LeukexpError(f"head.labels=self: self-training needs two bag classes (a positive and a negative); this"
                           f" task has {classes}: use head.labels=bag, or a binary task")


def vote(context: HeadContext, instance: str = "logreg", labels: str = "bag", reduce: str = "mean",
         k: int = 5, share: float = 0.1, rounds: int = 3) -> VoteHead:
    """`head=vote`: the per-image head option `instance` scores instances; a bag is their vote (`labels=self`:
    self-trained from bag labels, `share` and `rounds`)."""
    from leukexp.config.compose import build, load_option

    if labels not in ("bag", "own", "self"):
        raise LeukexpError(f"head.labels={labels!r}: expected bag (instances take their bag's label), own (their own"
                           " labels in instances.csv) or self (self-training from the bag labels)")
    if isinstance(share, bool) or not isinstance(share, int | float) or not 0 < share <= 1:
        raise LeukexpError(f"head.share={share!r}: expected the share of a positive bag's cells taken as positive,"
                           " in (0, 1]")
    _check_width("rounds", rounds)
    if reduce not in ("mean", "topk"):
        raise LeukexpError(f"head.reduce={reduce!r}: expected mean or topk")
    _check_width("k", k)
    config = load_option("head", str(instance), key="head.instance")
    factory = build(config, "head.instance")
    head = factory(context)
    if getattr(head, "aggregates", False):
        raise LeukexpError(f"head.instance={instance}: an aggregator; name a per-image head such as logreg or mlp1")
    return VoteHead(head, context, labels, reduce, k, str(instance), float(share), int(rounds))
