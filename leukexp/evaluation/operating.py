"""Operating points of a screening decision: a threshold on the positive class's probability chosen on validation
for a target sensitivity, and sensitivity, specificity, PPV and NPV at it on test (Wilson intervals)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from leukexp.evaluation.stats import wilson_interval
from leukexp.vocabulary import CI_HIGH, CI_LOW, OPERATING_MEASURES, metric_name


@dataclass(frozen=True)
class OperatingPoint:
    """Call a sample `positive` when its probability of that class is at least `threshold` (else `not <class>`;
    in a binary task, the other class).

    Attributes:
        positive: the class screened for (the task's `positive_class`).
        threshold: the probability of `positive` at and above which a sample is called positive.
        target_sensitivity: the validation sensitivity the threshold was chosen for.
        negative: the name of the other decision (the other class of a binary task, else `not <positive>`).
    """

    positive: str
    threshold: float
    target_sensitivity: float
    negative: str

    def decide(self, positive_probs: np.ndarray) -> list[str]:
        """The decision for each sample from its probability of the positive class."""
        return [self.positive if p >= self.threshold else self.negative for p in positive_probs]

    def to_dict(self) -> dict[str, Any]:
        """As saved with a model (`classifier.json`)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> OperatingPoint:
        """Read back `to_dict`; a value of the wrong kind raises `ValueError`."""
        point = cls(str(data["positive"]), float(data["threshold"]), float(data["target_sensitivity"]),
                    str(data["negative"]))
        if not 0.0 <= point.threshold <= 1.0 or math.isnan(point.threshold):
            raise ValueError(f"threshold {point.threshold} is not a probability")
        return point


def threshold_for_sensitivity(is_positive: np.ndarray, scores: np.ndarray, target: float) -> float:
    """The highest threshold whose sensitivity on these samples is at least `target` (0.5 without positives)."""
    positives = np.sort(scores[is_positive])[::-1]
    if not len(positives):
        return 0.5
    needed = min(len(positives), max(1, math.ceil(target * len(positives) - 1e-9)))
    return float(positives[needed - 1])


def choose(classes: list[str], positive: str | None, val_labels: np.ndarray, val_probs: np.ndarray,
           target: float) -> OperatingPoint | None:
    """The operating point for `positive` chosen on validation (None when the task names no positive class)."""
    if positive is None or positive not in classes:
        return None
    index = classes.index(positive)
    negative = next(c for c in classes if c != positive) if len(classes) == 2 else f"not {positive}"
    threshold = threshold_for_sensitivity(val_labels == index, val_probs[:, index], target)
    return OperatingPoint(positive, threshold, target, negative)


def operating_metrics(point: OperatingPoint, classes: list[str], labels: np.ndarray, probs: np.ndarray,
                      prefix: str) -> dict[str, float]:
    """`<prefix>/<measure>` and its Wilson `_ci95_low`/`_ci95_high` for sensitivity, specificity, PPV and NPV at
    the point's threshold."""
    index = classes.index(point.positive)
    actual = labels == index
    called = probs[:, index] >= point.threshold
    counts = {"sensitivity": (int((called & actual).sum()), int(actual.sum())),
              "specificity": (int((~called & ~actual).sum()), int((~actual).sum())),
              "ppv": (int((called & actual).sum()), int(called.sum())),
              "npv": (int((~called & ~actual).sum()), int((~called).sum()))}
    metrics: dict[str, float] = {}
    for measure in OPERATING_MEASURES:
        interval, key = wilson_interval(*counts[measure]), metric_name(prefix, measure)
        metrics |= {key: interval.mean, key + CI_LOW: interval.low, key + CI_HIGH: interval.high}
    return metrics
