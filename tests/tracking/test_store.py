"""MLflow tracking helpers, and a real tracking server on localhost in place of the SQLite file."""

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from forkserver import CommandServer
from mlflow.tracking import MlflowClient

from conftest import TINY_DATA, TINY_MODEL, free_port, start_server, stop
from leukexp.errors import LeukexpError
from leukexp.tracking.reach import configure_http
from leukexp.tracking.store import RunLogger, flatten, prepare_store
from leukexp.tracking.sync import PENDING_FILE
from leukexp.vocabulary import FOLDS_FINISHED_METRIC, TEST_ACC, VAL_ACC

# no views and no activation-map panel: what these runs check is the store (maps: tests/inference/test_cam.py)
PLAIN = ["augmentation=none", "evaluation.cam_panel=false"]

def test_flatten_nested_config() -> None:
    assert flatten({"a": {"b": 1, "c": {"d": [1, 2]}}, "e": {}}) == {"a.b": "1", "a.c.d": "[1, 2]", "e": "{}"}


def test_experiment_creation_is_idempotent_and_artifacts_stay_in_the_store(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path}/mlruns/mlflow.db"
    first = RunLogger(uri, "study", str(tmp_path / "mlruns" / "artifacts"), project_root=tmp_path)
    second = RunLogger(uri, "study", str(tmp_path / "mlruns" / "artifacts"), project_root=tmp_path)
    assert first.experiment_id == second.experiment_id
    first.start("r", {"fold": "f0"})
    (tmp_path / "note.txt").write_text("hello")
    first.log_artifacts([tmp_path / "note.txt"])
    first.end()
    stored = list((tmp_path / "mlruns" / "artifacts").rglob("note.txt"))
    assert len(stored) == 1 and stored[0].read_text() == "hello"
    assert MlflowClient(uri).get_run(first.run_id).info.status == "FINISHED"


def test_http_budget_is_short_unless_the_environment_says_otherwise(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("MLFLOW_HTTP_REQUEST_TIMEOUT", "MLFLOW_HTTP_REQUEST_MAX_RETRIES"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "5")
    configure_http(timeout=7, max_retries=1)
    assert os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "7"
    assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "5", "the user's own setting wins"


def test_a_file_that_is_not_a_database_is_refused(tmp_path: Path) -> None:
    notes = tmp_path / "notes.db"
    notes.write_text("my notes")
    with pytest.raises(LeukexpError, match="is not a SQLite database"):
        prepare_store(f"sqlite:///{notes}")
    assert notes.read_text() == "my notes", "nothing already written is lost"
    with pytest.raises(LeukexpError, match=r"bogus://foo: (cannot open the store|the store does not answer)"):
        prepare_store("bogus://foo")


@pytest.mark.slow
def test_a_server_that_dies_mid_run_loses_nothing_and_one_command_uploads_later(command_server: CommandServer,
                                                                                tmp_path: Path) -> None:
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    server = start_server(tmp_path, port)
    command = [sys.executable, "-m", "leukexp.commands.train", *TINY_MODEL, *TINY_DATA, *PLAIN,
               "trainer.max_epochs=300", f"mlflow.tracking_uri={uri}", "mlflow.experiment_name=fault"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_HTTP")} | {"CI": "true"}
    job = subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    client = MlflowClient(uri)
    try:
        deadline, seen = time.time() + 120, -1
        while time.time() < deadline and job.poll() is None:
            experiment = client.get_experiment_by_name("fault")
            runs = client.search_runs([experiment.experiment_id], "tags.`leukexp.kind` = 'fold'") if experiment else []
            count = len(runs[0].data.params) if runs else 0
            if count and count == seen:  # set up: params are logged last (in batches), then the run trains
                break
            seen = count
            time.sleep(1.0)
        assert job.poll() is None, "the run ended before the server could be stopped"
        stop(server)
        started = time.time()
        out, err = job.communicate(timeout=240)
    finally:
        job.kill()
        stop(server)
    assert job.returncode == 2 and "Traceback" not in err, err[-2000:]
    (line,) = [x for x in err.splitlines() if x.startswith("leukexp-train: error:")]
    assert "the store stopped answering" in line and "leukexp-sync" in line
    assert time.time() - started < 60, "the failure is reported quickly"
    assert TEST_ACC in out, "the metrics are printed before the upload is tried"
    (pending,) = list((tmp_path / "logs").rglob(PENDING_FILE))
    run_dir = pending.parent
    assert (run_dir / "predictions.csv").is_file() and (run_dir / "model" / "MLmodel").is_file()
    expected = json.loads(pending.read_text())["metrics"][TEST_ACC]

    server = start_server(tmp_path, port)
    try:
        sync = command_server.run(["leukexp.commands.sync", str(run_dir)], cwd=tmp_path, env=env, timeout=120)
        assert sync.returncode == 0, sync.stderr[-2000:]
        experiment = client.get_experiment_by_name("fault").experiment_id
        (run,) = client.search_runs([experiment], "tags.`leukexp.kind` = 'fold'")
        assert run.info.status == "FINISHED" and run.data.metrics[TEST_ACC] == pytest.approx(expected)
        assert "predictions.csv" in {a.path for a in client.list_artifacts(run.info.run_id)}
        assert len(client.get_metric_history(run.info.run_id, VAL_ACC)) > 1, "the per-epoch history too"
        (parent,) = client.search_runs([experiment], "tags.`leukexp.kind` = 'cv'")
        assert parent.data.metrics[FOLDS_FINISHED_METRIC] == 1
        assert not pending.exists()
    finally:
        stop(server)


def black_hole() -> tuple[socket.socket, int, list[socket.socket]]:
    """A server that accepts connections and never answers (a hung proxy, a stopped process's listening socket);
    the connections it accepted are listed as they come."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    accepted: list[socket.socket] = []

    def accept() -> None:
        with contextlib.suppress(OSError):  # the listener closed: the test is over
            while True:
                accepted.append(listener.accept()[0])

    threading.Thread(target=accept, daemon=True).start()
    return listener, listener.getsockname()[1], accepted


def test_a_server_that_never_answers_is_one_line_within_the_deadline(monkeypatch: pytest.MonkeyPatch) -> None:
    from leukexp.report.runs import open_client

    listener, port, accepted = black_hole()
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    try:
        for check in (lambda: prepare_store(f"http://127.0.0.1:{port}"), lambda: open_client(f"http://127.0.0.1:{port}")):
            accepted.clear()
            with pytest.raises(LeukexpError, match=r"the server does not answer within 2 s"):
                check()
            assert len(accepted) == 1, "one request, one deadline, no retries"
    finally:
        listener.close()
        for connection in accepted:
            connection.close()


def test_a_sqlite_store_outside_the_project_needs_its_folder(tmp_path: Path) -> None:
    project, elsewhere = tmp_path / "project", tmp_path / "elsewhere" / "mlrun"
    project.mkdir()
    with pytest.raises(LeukexpError, match=r"the folder .*elsewhere/mlrun does not exist;.*create_store_folder=true"):
        prepare_store(f"sqlite:///{elsewhere}/mlflow.db", project_root=project)
    assert not elsewhere.parent.exists(), "no folder was created"
    prepare_store(f"sqlite:///{project}/mlruns/mlflow.db", project_root=project)  # inside the project: created
    prepare_store(f"sqlite:///{elsewhere}/mlflow.db", create_folder=True, project_root=project)  # asked for
    assert (project / "mlruns" / "mlflow.db").is_file() and (elsewhere / "mlflow.db").is_file()


def test_params_carry_no_credentials_and_keys_mlflow_accepts() -> None:
    flat = flatten({"mlflow": {"tracking_uri": "http://u:pw@host:5000"}, "task": {"mapping": {"Band (BNE)+": ["x"]}}})
    assert flat == {"mlflow.tracking_uri": "http://***@host:5000", "task.mapping.Band _BNE__": "['x']"}


@pytest.mark.slow
def test_credentials_in_the_tracking_uri_are_found_nowhere(command_server: CommandServer, tmp_path: Path) -> None:
    port = free_port()
    server = start_server(tmp_path, port)
    secret = "hunter2-do-not-log"
    uri = f"http://alice:{secret}@127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"} | {"CI": "true"}
    try:
        # a sweep, with the URI on the command line: Hydra's copies of it (overrides.yaml, multirun.yaml) are scrubbed;
        # the jobs with 20 folds fail (10 images a class): their files, the failure list and summary are scrubbed too
        job = command_server.run(["leukexp.commands.train", "-m", "fold=f0,f1", f"mlflow.tracking_uri={uri}",
                                  "fold.n_splits=2,20", *TINY_MODEL, *TINY_DATA, *PLAIN,
                                  "trainer.max_epochs=1", "task=binary", "data.counts={ALL: 10, HLT: 10}",
                                  "mlflow.experiment_name=secret"], cwd=tmp_path, env=env, timeout=300)
        assert job.returncode == 1 and "2 job(s) failed" in job.stdout, job.stdout[-2000:] + job.stderr[-2000:]
        assert "http://***@127.0.0.1" in job.stdout, "the failed jobs are listed, redacted"
        assert "fewer than fold.n_splits=20" in job.stdout, "listed with their reason"
        assert secret not in job.stdout + job.stderr
        client = MlflowClient(f"http://127.0.0.1:{port}")
        experiment = client.get_experiment_by_name("secret").experiment_id
        runs = client.search_runs([experiment], "tags.`leukexp.kind` = 'fold'")
        assert len(runs) == 2 and runs[0].data.params["mlflow.tracking_uri"].startswith("http://***@127.0.0.1")
        assert {r.info.status for r in runs} == {"FINISHED"}, "the failing jobs did not stop the others"

        # an interrupted job: SIGTERM while its head trains (its files and the printed stop line are scrubbed too)
        interrupted = subprocess.Popen(
            [sys.executable, "-m", "leukexp.commands.train", f"mlflow.tracking_uri={uri}", "head=mlp3",
             "trainer.max_epochs=10000", "hydra.verbose=leukexp.phase", *TINY_MODEL, *TINY_DATA, *PLAIN,
             "task=binary", "data.counts={ALL: 10, HLT: 10}", "fold.n_splits=2", "mlflow.experiment_name=secret",
             "hydra.run.dir=logs/interrupted"], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True, env=env)
        deadline = time.time() + 240
        while time.time() < deadline and interrupted.poll() is None and not any(
                "phase head" in log.read_text(errors="replace") for log in (tmp_path / "logs" / "interrupted").glob(
                    "*.log")):
            time.sleep(0.2)
        interrupted.send_signal(signal.SIGTERM)
        out, err = interrupted.communicate(timeout=120)
        assert interrupted.returncode == 128 + signal.SIGTERM, err[-2000:]
        assert secret not in out + err
        killed = client.search_runs([experiment], "tags.`leukexp.kind` = 'fold' and attributes.status = 'KILLED'")
        assert len(killed) == 1, "the interrupted job's fold run is KILLED"
    finally:
        stop(server)
    leaks = [path for path in tmp_path.rglob("*") if path.is_file() and secret.encode() in path.read_bytes()]
    assert leaks == [], f"the password is in {leaks}"
    assert list((tmp_path / "logs").rglob("config.yaml")) and list((tmp_path / "server-artifacts").rglob("config.yaml"))
