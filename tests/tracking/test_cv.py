"""CV parents in MLflow: one parent per configuration, aggregates once every fold finished, stale runs closed."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from leukexp.tracking.cv import (
    FoldRun,
    aggregate,
    close_stale_runs,
    fold_runs,
    fold_table,
    get_or_create_parent,
    owner_alive,
    this_process,
)
from leukexp.tracking.store import RunLogger
from leukexp.vocabulary import (
    BEST,
    FOLDS_FINISHED_METRIC,
    KIND_TAG,
    NAME_TAG,
    OWNER_TAG,
    STUDY_TAG,
    TEST_ACC,
    TEST_LOSS,
    VAL_ACC,
    Predictions,
    cv_metric,
)

TAGS = {"model": "m", "head": "h", "task": "t", "cv_group": "head=h model=m", "data_hash": "abc", "n_splits": "2",
        "fold": "f0", KIND_TAG: "fold"}


def store(tmp_path: Path) -> RunLogger:
    return RunLogger(f"sqlite:///{tmp_path}/mlflow.db", "cv", str(tmp_path / "artifacts"))


def child(logger: RunLogger, parent: str, fold: str, accuracy: float, tmp_path: Path, status: str = "FINISHED") -> str:
    run_id = logger.start(fold, TAGS | {"fold": fold}, parent_run_id=parent)
    logger.log_steps([(0, {TEST_ACC: accuracy, TEST_LOSS: 1 - accuracy, BEST + VAL_ACC: 0.5})])
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
    assert logger.client.get_run(first).data.tags[KIND_TAG] == "cv"


def test_a_partial_study_shows_what_is_known_then_completes(tmp_path: Path) -> None:
    logger = store(tmp_path)
    client: MlflowClient = logger.client
    parent = get_or_create_parent(client, logger.experiment_id, TAGS)
    child(logger, parent, "f0", 0.5, tmp_path)
    child(logger, parent, "f1", 0.9, tmp_path, status="FAILED")
    assert not aggregate(client, logger.experiment_id, parent, 2)
    partial = client.get_run(parent)
    assert partial.data.metrics[cv_metric(TEST_ACC, "mean")] == 0.5 and partial.data.metrics[FOLDS_FINISHED_METRIC] == 1
    assert partial.data.tags[STUDY_TAG] == "incomplete (1/2 folds)"
    assert partial.info.status == "FINISHED", "nothing runs: the parent is not left RUNNING"
    assert {a.path for a in client.list_artifacts(parent)} == {"cv_folds.csv"}, "one fold's figures are its own"
    running = child(logger, parent, "f1", 1.0, tmp_path, status="RUNNING")
    assert not aggregate(client, logger.experiment_id, parent, 2)
    assert client.get_run(parent).info.status == "RUNNING", "a fold still runs"
    client.set_terminated(running, status="FINISHED")
    assert aggregate(client, logger.experiment_id, parent, 2)
    run = client.get_run(parent)
    assert run.info.status == "FINISHED" and run.data.tags["folds_finished"] == "2"
    assert run.data.tags[STUDY_TAG] == "complete"
    assert run.data.metrics[cv_metric(TEST_ACC, "mean")] == pytest.approx(0.75)
    assert run.data.metrics[cv_metric(TEST_ACC, "std")] == pytest.approx(np.std([0.5, 1.0], ddof=1))
    assert {a.path for a in client.list_artifacts(parent)} == {"cv_folds.csv", "cv_confusion_matrix.csv",
                                                               "cv_confusion_matrix.png", "cv_roc.png"}


def test_fold_table_and_stale_runs(tmp_path: Path) -> None:
    logger = store(tmp_path)
    parent = get_or_create_parent(logger.client, logger.experiment_id, TAGS)
    child(logger, parent, "f1", 0.6, tmp_path)
    child(logger, parent, "f0", 0.7, tmp_path)
    stale = child(logger, parent, "f0", 0.1, tmp_path, status="RUNNING")
    live = child(logger, parent, "f0", 0.1, tmp_path, status="RUNNING")
    logger.client.set_tag(stale, OWNER_TAG, this_process().rsplit(":", 1)[0] + ":999999999")
    logger.client.set_tag(live, OWNER_TAG, this_process())
    table = fold_table(fold_runs(logger.client, logger.experiment_id, parent))
    assert list(table.index) == ["f0", "f1"] and list(table[TEST_ACC]) == [0.7, 0.6]
    assert close_stale_runs(logger.client, logger.experiment_id, parent, "f0") == 1
    assert logger.client.get_run(stale).info.status == "KILLED"
    assert logger.client.get_run(live).info.status == "RUNNING", "a live process keeps its claim"


def test_owner_liveness() -> None:
    assert owner_alive(this_process())
    assert not owner_alive(this_process().rsplit(":", 1)[0] + ":999999999")
    assert owner_alive("another-host:1"), "a run on another machine cannot be checked: it counts as alive"


def test_a_second_claim_of_a_running_fold_is_refused_and_a_finished_fold_is_reused(tmp_path: Path) -> None:
    first = FoldRun(store(tmp_path), TAGS, tmp_path / "locks")
    assert first.open(resume=True, params={"a": "1"}) is None
    second = FoldRun(store(tmp_path), TAGS, tmp_path / "locks")
    assert second.open(resume=True, params={"a": "1"}) == this_process(), "the fold runs in this process"
    first.logger.log_steps([(0, {TEST_ACC: 0.5})])
    first.logger.end("FINISHED")
    third = FoldRun(store(tmp_path), TAGS, tmp_path / "locks")
    done = third.open(resume=True, params={"a": "1"})
    assert done.info.run_id == first.logger.run_id


def test_names_stay_unique_within_an_experiment(tmp_path: Path) -> None:
    from leukexp.tracking.cv import unique_name

    logger = store(tmp_path)
    first = get_or_create_parent(logger.client, logger.experiment_id, TAGS | {NAME_TAG: "svm"})
    other = get_or_create_parent(logger.client, logger.experiment_id,
                                 TAGS | {NAME_TAG: "svm", "cv_group": "head=svm model=x"})
    names = [logger.client.get_run(r).info.run_name for r in (first, other)]
    assert names[0] == "svm" and names[1].startswith("svm #") and len(set(names)) == 2
    assert unique_name(logger.client, logger.experiment_id, "svm", TAGS["cv_group"]) == "svm"


def test_the_lock_lives_beside_a_local_store_whatever_the_root(tmp_path: Path) -> None:
    from leukexp.tracking.cv import lock_file

    uri = f"sqlite:///{tmp_path}/shared/mlflow.db"
    first, second = lock_file(uri, "1", tmp_path / "root-a" / "locks"), lock_file(uri, "1", tmp_path / "root-b")
    assert first == second == tmp_path / "shared" / ".leukexp-cv-1.lock"
    server = lock_file("http://host:5000", "1", tmp_path / "root-a")
    assert server.parent == tmp_path / "root-a"


def test_a_claim_written_after_an_earlier_one_steps_back(tmp_path: Path) -> None:
    from leukexp.tracking.cv import earlier_claim

    logger = store(tmp_path)
    parent = get_or_create_parent(logger.client, logger.experiment_id, TAGS | {NAME_TAG: "n"})
    first = logger.start("f0", TAGS | {OWNER_TAG: this_process()}, parent_run_id=parent)
    second = logger.start("f0", TAGS | {OWNER_TAG: this_process()}, parent_run_id=parent)
    assert earlier_claim(logger.client, logger.experiment_id, parent, "f0", second) == this_process()
    assert earlier_claim(logger.client, logger.experiment_id, parent, "f0", first) is None, "the oldest claim wins"
    logger.client.set_terminated(first, "FAILED")
    assert earlier_claim(logger.client, logger.experiment_id, parent, "f0", second) is None, "a failed run is no claim"


def test_a_stop_signal_ends_the_run_and_its_idle_parent_killed(tmp_path: Path) -> None:
    fold_run = FoldRun(store(tmp_path), TAGS, tmp_path / "locks")
    assert fold_run.open(resume=True, params={}) is None
    fold_run.kill()
    client = fold_run.logger.client
    assert client.get_run(fold_run.logger.run_id).info.status == "KILLED"
    assert client.get_run(fold_run.parent_id).info.status == "KILLED"


def test_a_rerun_without_resume_closes_a_killed_fold_and_its_parent_follows(tmp_path: Path) -> None:
    # a process killed with SIGKILL leaves its fold run, and so its parent, RUNNING; the same command run again
    # (no sweep, so no resume) closes the dead run, and the parent ends FINISHED once the new run finishes
    dead = FoldRun(store(tmp_path), TAGS | {"n_splits": "1"}, tmp_path / "locks")
    assert dead.open(resume=False, params={"a": "1"}) is None
    dead.logger.client.set_tag(dead.logger.run_id, OWNER_TAG, this_process().rsplit(":", 1)[0] + ":999999999")
    again = FoldRun(store(tmp_path), TAGS | {"n_splits": "1"}, tmp_path / "locks")
    assert again.open(resume=False, params={"a": "1"}) is None
    client = again.logger.client
    assert client.get_run(dead.logger.run_id).info.status == "KILLED"
    assert again.finish(pd.DataFrame(), {TEST_ACC: 0.5}, [])
    assert client.get_run(again.parent_id).info.status == "FINISHED"
