"""What a CV parent writes (its fold table, mean confusion matrix, every fold's ROC, its description) and reading
its fold runs' predictions back."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from leukexp.csv_files import read_csv, write_csv
from leukexp.evaluation.metrics import confusion
from leukexp.evaluation.plots import plot_confusion, plot_roc
from leukexp.vocabulary import (
    BEST,
    CV,
    TEST_ACC,
    TEST_AUC_MACRO,
    TEST_F1_MACRO,
    TEST_LOSS,
    VAL_ACC,
    Predictions,
    cv_metric,
)


def read_predictions(path: Path) -> Predictions:
    """A fold run's `predictions.csv`."""
    return Predictions.from_frame(read_csv(path))


def write_cv_artifacts(out: Path, table: pd.DataFrame, predictions: dict[str, Predictions],
                       metrics: dict[str, float]) -> list[Path]:
    """The parent's `cv_folds.csv` (per-fold table with mean and std), mean confusion matrix and all folds' ROC."""
    summary = pd.concat([table, table.mean().to_frame("mean").T, table.std(ddof=1).to_frame("std").T])
    summary.index.name = "fold"
    write_csv(summary, out / "cv_folds.csv", index=True)
    paths = [out / "cv_folds.csv"]
    if not predictions:
        return paths
    classes = next(iter(predictions.values())).classes
    matrices = [confusion(p.labels, p.probs, classes).astype(float) for p in predictions.values()]
    mean_matrix = sum(matrices) / len(matrices)
    write_csv(mean_matrix, out / "cv_confusion_matrix.csv", index=True)
    accuracy = metrics.get(cv_metric(TEST_ACC, "mean"), float("nan"))
    return [
        *paths, out / "cv_confusion_matrix.csv",
        plot_confusion(mean_matrix.round(1), out / "cv_confusion_matrix.png",
                       f"mean of {len(matrices)} folds: acc {accuracy:.3f}"),
        plot_roc([(fold, p.labels, p.probs) for fold, p in sorted(predictions.items())], classes,
                 out / "cv_roc.png", "ROC of every fold (one-vs-rest)"),
    ]


DESCRIPTION_COLUMNS = {TEST_ACC: "test acc", TEST_F1_MACRO: "macro F1", TEST_AUC_MACRO: "macro AUC",
                       TEST_LOSS: "test loss", BEST + VAL_ACC: "best val acc"}


def result_summary(metrics: dict[str, float], finished: int, n_splits: int) -> str:
    """One line for a tag column: mean accuracy, its spread and how many folds it covers."""
    mean, std = metrics.get(cv_metric(TEST_ACC, "mean")), metrics.get(cv_metric(TEST_ACC, "std"))
    if mean is None:
        return f"{finished}/{n_splits} folds"
    return f"acc {mean:.3f} ± {std or 0.0:.3f} ({finished}/{n_splits} folds)"


def parent_description(name: str, cv_group: str, table: pd.DataFrame, metrics: dict[str, float], n_splits: int,
                       run_ids: dict[str, str]) -> str:
    """The CV parent's markdown description: what the configuration is, its folds and their aggregates."""
    columns = [c for c in DESCRIPTION_COLUMNS if c in table.columns]
    status = "complete" if len(table) >= n_splits else f"incomplete: {len(table)} of {n_splits} folds finished"
    lines = [f"### {name}", "", f"{len(table)}/{n_splits} folds ({status}). " + result_summary(
        metrics, len(table), n_splits), "",
             "| fold | " + " | ".join(DESCRIPTION_COLUMNS[c] for c in columns) + " | run |",
             "|---|" + "---|" * (len(columns) + 1)]
    for fold, row in table.iterrows():
        cells = [f"{row[c]:.4f}" if pd.notna(row[c]) else "-" for c in columns]
        lines.append(f"| {fold} | " + " | ".join(cells) + f" | `{run_ids.get(str(fold), '')[:8]}` |")
    means = [metrics.get(f"{CV}{c}_mean") for c in columns]
    stds = [metrics.get(f"{CV}{c}_std") for c in columns]
    lines.append("| **mean ± std** | " + " | ".join(
        f"**{m:.4f}** ± {s:.4f}" if m is not None else "-" for m, s in zip(means, stds, strict=True)) + " | |")
    lines.append("| 95% CI (t, folds) | " + " | ".join(
        f"[{metrics[f'{CV}{c}_ci95_low']:.4f}, {metrics[f'{CV}{c}_ci95_high']:.4f}]"
        if f"{CV}{c}_ci95_low" in metrics else "-" for c in columns) + " | |")
    lines += ["", "Configuration: " + " ".join(f"`{token}`" for token in cv_group.split()), ""]
    return "\n".join(lines)
