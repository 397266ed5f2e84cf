"""CV parents in MLflow: one parent per configuration, aggregates once every fold finished, stale runs closed."""

from pathlib import Path

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from leukexp.cv import aggregate_if_complete, close_stale_runs, fold_runs, fold_table, get_or_create_parent
from leukexp.tracking import RunLogger
from leukexp.vocabulary import Predictions

TAGS = {"model": "m", "head": "h", "task": "t", "cv_group": "head=h model=m", "data_hash": "abc", "n_splits": "2",
        "fold": "f0", "leukexp.kind": "fold"}


def store(tmp_path: Path) -> RunLogger:
    return RunLogger(f"sqlite:///{tmp_path}/mlflow.db", "cv", str(tmp_path / "artifacts"))


def child(logger: RunLogger, parent: str, fold: str, accuracy: float, tmp_path: Path, status: str = "FINISHED") -> str:
    run_id = logger.start(fold, TAGS | {"fold": fold}, parent_run_id=parent)
    logger.log_metrics({"test/acc": accuracy, "test/loss": 1 - accuracy, "best/val/acc": 0.5})
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]])
    Predictions(np.array(["a", "b", "c"]), np.zeros(3, int), np.array([0, 1, 1]), probs,
                ["ALL", "HLT"]).to_frame().to_csv(tmp_path / "predictions.csv", index=False)
    logger.log_artifacts([tmp_path / "predictions.csv"])
    if status != "RUNNING":
        logger.end(status)
    return run_id


def test_one_parent_per_configuration(tmp_path: Path) -> None:
    logger = store(tmp_path)
    first = get_or_create_parent(logger.client, logger.experiment_id, TAGS)
    assert get_or_create_parent(logger.client, logger.experiment_id, TAGS | {"fold": "f1"}) == first
    other = get_or_create_parent(logger.client, logger.experiment_id, TAGS | {"cv_group": "head=x model=m"})
    assert other != first
    assert logger.client.get_run(first).data.tags["leukexp.kind"] == "cv"


def test_aggregates_only_when_every_fold_finished(tmp_path: Path) -> None:
    logger = store(tmp_path)
    client: MlflowClient = logger.client
    parent = get_or_create_parent(client, logger.experiment_id, TAGS)
    child(logger, parent, "f0", 0.5, tmp_path)
    child(logger, parent, "f1", 0.9, tmp_path, status="FAILED")
    assert not aggregate_if_complete(client, logger.experiment_id, parent, 2)
    assert "cv/test/acc_mean" not in client.get_run(parent).data.metrics
    child(logger, parent, "f1", 1.0, tmp_path)
    assert aggregate_if_complete(client, logger.experiment_id, parent, 2)
    run = client.get_run(parent)
    assert run.info.status == "FINISHED" and run.data.tags["folds_finished"] == "2"
    assert run.data.metrics["cv/test/acc_mean"] == pytest.approx(0.75)
    assert run.data.metrics["cv/test/acc_std"] == pytest.approx(np.std([0.5, 1.0], ddof=1))
    assert {a.path for a in client.list_artifacts(parent)} == {"cv_folds.csv", "cv_confusion_matrix.csv",
                                                               "cv_confusion_matrix.png", "cv_roc.png"}


def test_fold_table_and_stale_runs(tmp_path: Path) -> None:
    logger = store(tmp_path)
    parent = get_or_create_parent(logger.client, logger.experiment_id, TAGS)
    child(logger, parent, "f1", 0.6, tmp_path)
    child(logger, parent, "f0", 0.7, tmp_path)
    stale = child(logger, parent, "f0", 0.1, tmp_path, status="RUNNING")
    table = fold_table(fold_runs(logger.client, logger.experiment_id, parent))
    assert list(table.index) == ["f0", "f1"] and list(table["test/acc"]) == [0.7, 0.6]
    assert close_stale_runs(logger.client, logger.experiment_id, parent, "f0") == 1
    assert logger.client.get_run(stale).info.status == "KILLED"
