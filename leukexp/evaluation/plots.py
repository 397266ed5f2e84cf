"""Figures: confusion matrix, ROC curves, training curves and augmentation contact sheets (PNG)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from sklearn.metrics import auc, roc_curve

from leukexp.vocabulary import ACC, EPOCH, LOSS, metric_name


def _save(fig: plt.Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_confusion(matrix: pd.DataFrame, path: Path, title: str = "Confusion matrix") -> Path:
    """Counts with row percentages in each cell."""
    counts = matrix.to_numpy().astype(float)
    rows = counts.sum(axis=1, keepdims=True)
    percent = np.divide(counts, rows, out=np.zeros_like(counts), where=rows > 0) * 100
    size = 1.2 + 0.9 * len(matrix)
    fig, ax = plt.subplots(figsize=(size + 1, size))
    image = ax.imshow(percent, cmap="Blues", vmin=0, vmax=100)
    fig.colorbar(image, ax=ax, label="% of true class")
    for i in range(counts.shape[0]):
        for j in range(counts.shape[1]):
            colour = "white" if percent[i, j] > 60 else "black"
            count = f"{counts[i, j]:.0f}" if float(counts[i, j]).is_integer() else f"{counts[i, j]:.1f}"
            ax.text(j, i, f"{count}\n{percent[i, j]:.0f}%", ha="center", va="center",
                    color=colour, fontsize=9)
    ax.set_xticks(range(len(matrix.columns)), matrix.columns, rotation=45, ha="right")
    ax.set_yticks(range(len(matrix.index)), matrix.index)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    return _save(fig, path)


def plot_roc(curves: Sequence[tuple[str, np.ndarray, np.ndarray]], classes: list[str], path: Path,
             title: str = "ROC (one-vs-rest)") -> Path:
    """One-vs-rest ROC curves per class; `curves` holds (label, true labels, probabilities) sets, e.g. folds."""
    fig, ax = plt.subplots(figsize=(6, 5))
    colours = plt.get_cmap("tab10")
    for style, (name, labels, probs) in zip(["-", "--", ":", "-.", (0, (1, 3))] * 4, curves, strict=False):
        for i, cls in enumerate(classes):
            positives = labels == i
            if not 0 < positives.sum() < len(labels):
                continue
            fpr, tpr, _ = roc_curve(positives, probs[:, i])
            area = auc(fpr, tpr)
            label = f"{cls} AUC {area:.3f}" if len(curves) == 1 else f"{cls} ({name}) {area:.3f}"
            ax.plot(fpr, tpr, linestyle=style, color=colours(i % 10), label=label, linewidth=1.4)
    ax.plot([0, 1], [0, 1], color="grey", linewidth=0.8, linestyle=":")
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title(title)
    ax.legend(fontsize=7, loc="lower right", ncol=1 if len(curves) == 1 else 2)
    return _save(fig, path)


def plot_reliability(labels: np.ndarray, probs: np.ndarray, path: Path, title: str = "Reliability") -> Path:
    """Accuracy against confidence of the predicted class per bin (the diagonal is perfect calibration), with the
    share of samples per bin below."""
    from leukexp.evaluation.calibration import expected_calibration_error, reliability_bins

    table = reliability_bins(labels, probs)
    centres = (table.edges[:-1] + table.edges[1:]) / 2
    width = table.edges[1] - table.edges[0]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(5, 6), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    used = table.count > 0
    top.bar(centres[used], table.accuracy[used], width=width * 0.9, color="tab:blue", label="accuracy")
    top.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1, label="perfect")
    top.set_ylabel("accuracy")
    top.set_title(f"{title}: ECE {expected_calibration_error(labels, probs):.3f}")
    top.legend(loc="upper left")
    bottom.bar(centres, table.count / max(1, len(labels)), width=width * 0.9, color="grey")
    bottom.set_xlabel("confidence of the predicted class")
    bottom.set_ylabel("share")
    bottom.set_xlim(0, 1)
    return _save(fig, path)


def plot_curves(history: pd.DataFrame, path: Path, best_epoch: int | None = None) -> Path:
    """Accuracy and loss per epoch for train and validation."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, metric in zip(axes, (ACC, LOSS), strict=True):
        for stage in ("train", "val"):
            key = metric_name(stage, metric)
            if key in history:
                ax.plot(history[EPOCH] + 1, history[key], marker="o", markersize=3, label=stage)
        if best_epoch is not None and best_epoch >= 0:
            ax.axvline(best_epoch + 1, color="grey", linestyle="--", linewidth=0.8, label="best val acc")
        ax.set_xlabel("epoch")
        ax.set_ylabel(metric)
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
    return _save(fig, path)


def contact_sheet(images: Sequence[np.ndarray], names: Sequence[str], path: Path, columns: int = 11) -> Path:
    """A grid of RGB images with their names (an image and its augmented views)."""
    rows = int(np.ceil(len(images) / columns))
    fig, axes = plt.subplots(rows, columns, figsize=(1.6 * columns, 1.8 * rows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, image, name in zip(axes.ravel(), images, names, strict=False):
        ax.imshow(image)
        ax.set_title(name, fontsize=6)
    return _save(fig, path)


def bar_chart(names: Sequence[str], means: Sequence[float], lows: Sequence[float], highs: Sequence[float],
              path: Path, title: str) -> Path:
    """Horizontal bars with confidence-interval whiskers, one per configuration."""
    labels, centres = list(names), np.asarray(means, float)
    errors = np.abs(np.vstack([centres - np.asarray(lows, float), np.asarray(highs, float) - centres]))
    fig, ax = plt.subplots(figsize=(8, 0.5 * len(labels) + 1.5))
    ax.barh(range(len(labels)), centres, xerr=errors, color="#4c72b0", capsize=4)
    ax.set_yticks(range(len(labels)), labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, 1.05)
    for i, value in enumerate(centres):
        ax.text(0.01, i, f"{value:.3f}", va="center", color="white", fontsize=8)
    ax.set_title(title)
    return _save(fig, path)


def grouped_bars(table: pd.DataFrame, path: Path, title: str) -> Path:
    """Grouped vertical bars: rows are groups on the x axis, columns are series."""
    fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(table) * max(1, len(table.columns)) / 2), 4.5))
    width = 0.8 / max(1, len(table.columns))
    for i, column in enumerate(table.columns):
        ax.bar(np.arange(len(table)) + i * width, table[column].to_numpy(), width, label=str(column))
    ax.set_xticks(np.arange(len(table)) + width * (len(table.columns) - 1) / 2, table.index)
    ax.set_ylim(0, 1.05)
    ax.set_title(title)
    ax.legend(fontsize=7, loc="lower right")
    return _save(fig, path)


def search_progress(trials: Sequence[tuple[int, float | None, str]], maximize: bool, path: Path, title: str) -> Path:
    """A search's objective per trial (complete: dots; pruned, failed: crosses at the bottom), and the best so far."""
    fig, ax = plt.subplots(figsize=(7, 4))
    done = [(n, v) for n, v, state in trials if state == "complete" and v is not None]
    if done:
        numbers, values = zip(*sorted(done), strict=True)
        best = np.maximum.accumulate(values) if maximize else np.minimum.accumulate(values)
        ax.scatter(numbers, values, color="#4c72b0", label="complete", zorder=3)
        ax.step(numbers, best, where="post", color="#dd8452", label="best so far")
    stopped = [n for n, _, state in trials if state != "complete"]
    if stopped:
        floor = min(v for _, v in done) if done else 0.0
        ax.scatter(stopped, [floor] * len(stopped), marker="x", color="grey", label="pruned or failed")
    ax.set_xlabel("trial")
    ax.set_ylabel("objective (fold mean)")
    ax.set_title(title)
    ax.legend(fontsize=8)
    return _save(fig, path)
