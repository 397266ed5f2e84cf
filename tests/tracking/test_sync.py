"""A run kept locally when its store went away is uploaded later by `leukexp-sync`."""

from pathlib import Path

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from leukexp.commands.sync import main
from leukexp.tracking.cv import FoldRun
from leukexp.tracking.store import RunLogger
from leukexp.tracking.sync import PENDING_FILE, save_pending, upload
from leukexp.vocabulary import KIND_TAG, NAME_TAG, TEST_ACC, VAL_ACC

TAGS = {"model": "m", "head": "h", "task": "t", "cv_group": "head=h", "data_hash": "abc", "n_splits": "1",
        "fold": "f0", KIND_TAG: "fold", NAME_TAG: "h"}


def kept_run(tmp_path: Path, uri: str) -> tuple[Path, FoldRun]:
    """A run folder with results and a pending upload, as a failed upload leaves it."""
    fold_run = FoldRun(RunLogger(uri, "sync", str(tmp_path / "artifacts")), TAGS, tmp_path / "locks")
    fold_run.open(resume=False, params={"head.C": "1.0"})
    out = tmp_path / "run"
    out.mkdir()
    manifest = pd.DataFrame({"file": ["a/1.png", "b/2.png"], "label": ["a", "b"], "split": ["train", "test"]})
    manifest.to_csv(out / "manifest.csv", index=False)
    fold_run.log_dataset(manifest, "demo · t", str(tmp_path / "images"), "abc")
    pd.DataFrame({"epoch": [0.0, 1.0], VAL_ACC: [0.5, 0.75]}).to_csv(out / "history.csv", index=False)
    (out / "notes.txt").write_text("kept")
    save_pending(out, fold_run, {TEST_ACC: 0.8}, [out / "notes.txt"])
    return out, fold_run


def test_upload_finishes_the_same_run(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path}/store.db"
    out, fold_run = kept_run(tmp_path, uri)
    assert upload(out) == fold_run.logger.run_id
    client = MlflowClient(uri)
    run = client.get_run(fold_run.logger.run_id)
    assert run.info.status == "FINISHED" and run.data.metrics[TEST_ACC] == 0.8
    assert [m.value for m in client.get_metric_history(run.info.run_id, VAL_ACC)] == [0.5, 0.75]
    assert "notes.txt" in {a.path for a in client.list_artifacts(run.info.run_id)}
    assert not (out / PENDING_FILE).exists()


def test_upload_to_another_store_makes_a_new_run(tmp_path: Path) -> None:
    out, _ = kept_run(tmp_path, f"sqlite:///{tmp_path}/first.db")
    other = f"sqlite:///{tmp_path}/second.db"
    run_id = upload(out, other)
    run = MlflowClient(other).get_run(run_id)
    assert run.data.params["head.C"] == "1.0" and run.data.tags["fold"] == "f0"
    (dataset,) = run.inputs.dataset_inputs  # the new run says what data it saw, as the first one did
    assert (dataset.dataset.name, dataset.dataset.digest) == ("demo · t", "abc")


def test_nothing_to_upload_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([str(tmp_path)])
    assert exit_info.value.code == 2 and "nothing to upload" in capsys.readouterr().err


def test_a_damaged_pending_file_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out, _ = kept_run(tmp_path, f"sqlite:///{tmp_path}/store.db")
    (out / PENDING_FILE).write_text('{"tracking_uri": "sqlite:///x", "tags": ')
    with pytest.raises(SystemExit) as exit_info:
        main([str(out)])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and len(err.strip().splitlines()) == 1
    assert f"{out / PENDING_FILE}: damaged (JSONDecodeError" in err and "Traceback" not in err


def test_a_folder_and_its_copy_are_uploaded_once(tmp_path: Path) -> None:
    import shutil

    uri = f"sqlite:///{tmp_path}/store.db"
    out, fold_run = kept_run(tmp_path, uri)
    copy = tmp_path / "copy-of-run"
    shutil.copytree(out, copy)
    assert upload(out) == fold_run.logger.run_id
    assert upload(copy).endswith("(already uploaded)")
    client = MlflowClient(uri)
    folds = client.search_runs([fold_run.logger.experiment_id], "tags.`leukexp.kind` = 'fold'")
    assert len(folds) == 1 and folds[0].info.status == "FINISHED"
    assert not (copy / PENDING_FILE).exists()


def test_credentials_are_never_saved_and_come_back_from_the_environment(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    from leukexp.errors import LeukexpError
    from leukexp.tracking.sync import store_uri

    out, fold_run = kept_run(tmp_path, f"sqlite:///{tmp_path}/store.db")
    fold_run.logger.tracking_uri = "http://alice:hunter2@host:5000"
    save_pending(out, fold_run, {TEST_ACC: 0.8}, [])
    text = (out / PENDING_FILE).read_text()
    assert "hunter2" not in text and "http://***@host:5000" in text
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://alice:hunter2@host:5000")
    assert store_uri("http://***@host:5000", None) == "http://alice:hunter2@host:5000"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://alice:hunter2@other:5000")
    with pytest.raises(LeukexpError, match=r"needs credentials, which are never saved"):
        store_uri("http://***@host:5000", None)
