"""Calibration of class probabilities: expected calibration error, Brier score, reliability bins, and temperature
scaling fitted on validation predictions (Guo et al., 2017)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import minimize_scalar

ECE_BINS = 15
_TINY = 1e-12


@dataclass(frozen=True)
class ReliabilityBins:
    """Top-label confidence against accuracy in equal-width bins over (0, 1] (empty bins have count 0)."""

    edges: np.ndarray
    confidence: np.ndarray
    accuracy: np.ndarray
    count: np.ndarray


def reliability_bins(labels: np.ndarray, probs: np.ndarray, bins: int = ECE_BINS) -> ReliabilityBins:
    """Mean confidence and accuracy of the predicted class per confidence bin."""
    confidence = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == labels).astype(float)
    edges = np.linspace(0.0, 1.0, bins + 1)
    index = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, bins - 1)
    count = np.bincount(index, minlength=bins).astype(float)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_confidence = np.bincount(index, confidence, bins) / count
        accuracy = np.bincount(index, correct, bins) / count
    return ReliabilityBins(edges, np.nan_to_num(mean_confidence), np.nan_to_num(accuracy), count)


def expected_calibration_error(labels: np.ndarray, probs: np.ndarray, bins: int = ECE_BINS) -> float:
    """Top-label ECE: the count-weighted mean gap between confidence and accuracy over equal-width bins."""
    if not len(labels):
        return float("nan")
    table = reliability_bins(labels, probs, bins)
    return float(np.sum(table.count * np.abs(table.accuracy - table.confidence)) / len(labels))


def brier_score(labels: np.ndarray, probs: np.ndarray) -> float:
    """Multi-class Brier score: the mean over samples of the squared distance to the one-hot label (0 is perfect)."""
    if not len(labels):
        return float("nan")
    onehot = np.zeros_like(probs, dtype=float)
    onehot[np.arange(len(labels)), labels] = 1.0
    return float(np.mean(np.sum((probs - onehot) ** 2, axis=1)))


def apply_temperature(probs: np.ndarray, temperature: float) -> np.ndarray:
    """Probabilities softened (T > 1) or sharpened (T < 1): softmax(log p / T); T = 1 returns them unchanged."""
    if temperature == 1.0 or not len(probs):
        return probs
    logits = np.log(np.clip(probs, _TINY, 1.0)) / temperature
    logits -= logits.max(axis=1, keepdims=True)
    scaled = np.exp(logits)
    return scaled / scaled.sum(axis=1, keepdims=True)


def fit_temperature(labels: np.ndarray, probs: np.ndarray) -> float:
    """The temperature in [0.05, 20] that minimizes the negative log-likelihood of `labels` (validation data)."""
    if not len(labels):
        return 1.0

    def nll(log_temperature: float) -> float:
        scaled = apply_temperature(probs, float(np.exp(log_temperature)))
        return float(-np.mean(np.log(np.clip(scaled[np.arange(len(labels)), labels], _TINY, 1.0))))

    found = minimize_scalar(nll, bounds=(np.log(0.05), np.log(20.0)), method="bounded", options={"xatol": 1e-4})
    return float(np.exp(found.x))
