"""What a CV parent writes: its fold table, mean confusion matrix, every fold's ROC and its description."""

from pathlib import Path

import numpy as np
import pandas as pd

from leukexp.tracking.cv_summary import read_predictions, write_cv_artifacts
from leukexp.vocabulary import TEST_ACC, Predictions, cv_metric


def test_cv_artifacts_from_fold_predictions(tmp_path: Path) -> None:
    predictions = {
        "f0": Predictions(np.array(["a", "b"]), np.zeros(2, int), np.array([0, 1]), np.array([[0.9, 0.1], [0.3, 0.7]]),
                          ["ALL", "HLT"]),
        "f1": Predictions(np.array(["c", "d"]), np.zeros(2, int), np.array([0, 1]), np.array([[0.4, 0.6], [0.3, 0.7]]),
                          ["ALL", "HLT"]),
    }
    predictions["f0"].to_frame().to_csv(tmp_path / "p.csv", index=False)
    assert np.allclose(read_predictions(tmp_path / "p.csv").probs, predictions["f0"].probs)
    table = pd.DataFrame({TEST_ACC: [1.0, 0.5]}, index=["f0", "f1"])
    paths = write_cv_artifacts(tmp_path, table, predictions, {cv_metric(TEST_ACC, "mean"): 0.75})
    assert [p.name for p in paths] == ["cv_folds.csv", "cv_confusion_matrix.csv", "cv_confusion_matrix.png",
                                       "cv_roc.png"]
    folds = pd.read_csv(tmp_path / "cv_folds.csv", index_col="fold")
    assert list(folds.index) == ["f0", "f1", "mean", "std"] and folds.loc["mean", TEST_ACC] == 0.75
    matrix = pd.read_csv(tmp_path / "cv_confusion_matrix.csv", index_col=0)
    assert matrix.loc["ALL", "ALL"] == 0.5 and matrix.loc["ALL", "HLT"] == 0.5 and matrix.loc["HLT", "HLT"] == 1.0


def test_without_predictions_only_the_table(tmp_path: Path) -> None:
    paths = write_cv_artifacts(tmp_path, pd.DataFrame({TEST_ACC: [0.5]}, index=["f0"]), {}, {})
    assert [p.name for p in paths] == ["cv_folds.csv"]


def test_parent_description_holds_the_fold_table_and_the_aggregates() -> None:
    from leukexp.evaluation.stats import aggregate_metrics
    from leukexp.tracking.cv_summary import parent_description, result_summary

    table = pd.DataFrame({TEST_ACC: [0.8, 0.9, 1.0], "test/f1_macro": [0.7, 0.8, 0.9]}, index=["f0", "f1", "f2"])
    metrics = aggregate_metrics(table)
    text = parent_description("svm", "head=svm model=m", table, metrics, 5, {"f0": "abcdef123456"})
    rows = [line for line in text.splitlines() if line.startswith("| f") and not line.startswith("| fold")]
    assert [r.split("|")[1].strip() for r in rows] == ["f0", "f1", "f2"]
    assert "| f0 | 0.8000 | 0.7000 | `abcdef12` |" in text
    assert "**0.9000** ± 0.1000" in text and "**0.8000** ± 0.1000" in text
    assert "3/5 folds (incomplete: 3 of 5 folds finished)" in text
    assert "`head=svm` `model=m`" in text
    assert result_summary(metrics, 3, 5) == "acc 0.900 ± 0.100 (3/5 folds)"
