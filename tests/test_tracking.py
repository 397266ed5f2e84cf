"""MLflow tracking helpers, and a real tracking server on localhost in place of the SQLite file."""

import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from conftest import TINY_DATA, TINY_MODEL
from leukexp.pipeline import train
from leukexp.report import load_runs
from leukexp.tracking import RunLogger, flatten


def test_flatten_nested_config() -> None:
    assert flatten({"a": {"b": 1, "c": {"d": [1, 2]}}, "e": {}}) == {"a.b": "1", "a.c.d": "[1, 2]", "e": "{}"}


def test_experiment_creation_is_idempotent_and_artifacts_stay_in_the_store(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path}/mlruns/mlflow.db"
    first = RunLogger(uri, "study", str(tmp_path / "mlruns" / "artifacts"))
    second = RunLogger(uri, "study", str(tmp_path / "mlruns" / "artifacts"))
    assert first.experiment_id == second.experiment_id
    first.start("r", {"fold": "f0"})
    (tmp_path / "note.txt").write_text("hello")
    first.log_artifacts([tmp_path / "note.txt"])
    first.end()
    stored = list((tmp_path / "mlruns" / "artifacts").rglob("note.txt"))
    assert len(stored) == 1 and stored[0].read_text() == "hello"
    assert MlflowClient(uri).get_run(first.run_id).info.status == "FINISHED"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
def test_training_and_report_against_a_tracking_server(compose_cfg, tmp_path: Path) -> None:
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{tmp_path}/server.db", "--artifacts-destination",
         str(tmp_path / "server-artifacts")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 90
        while time.time() < deadline:
            try:
                urllib.request.urlopen(f"{uri}/health", timeout=2)
                break
            except OSError:
                time.sleep(0.5)
        metrics = train(compose_cfg(*TINY_MODEL, *TINY_DATA, "augmentation=none", "trainer.max_epochs=1",
                                    f"mlflow.tracking_uri={uri}", "mlflow.experiment_name=remote"))
        client = MlflowClient(uri)
        runs = load_runs(client, "remote")
        assert len(runs.folds) == 1
        assert runs.folds.loc[0, "test/acc"] == pytest.approx(metrics["test/acc"])
        run_id = runs.folds.loc[0, "run_id"]
        assert "confusion_matrix.png" in {a.path for a in client.list_artifacts(run_id)}
        assert list((tmp_path / "server-artifacts").rglob("confusion_matrix.png"))
    finally:
        server.terminate()
        server.wait(30)
