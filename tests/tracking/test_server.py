"""The team tracking server (`leukexp-server`, MLflow on a real PostgreSQL cluster): restarted without loss, stopped
without orphans, its accounts and permissions enforced, and a lab's day on it: parallel writers and a parallel search
at once, the server killed mid-sweep and the sweep finished on a rerun, a READ account that reports, opens the saved
view and predicts, commands without credentials refused in one line. One server for the module."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from engines import free_port
from mlflow.tracking import MlflowClient
from mlflow_ui import read_view

from leukexp.errors import LeukexpError
from leukexp.tracking.server import (
    PASSWORD_ENV,
    USERNAME_ENV,
    ServerFolder,
    _alive,
    auth_config,
    sibling_database,
    start,
    status,
    stop,
)
from leukexp.vocabulary import KIND_TAG, PARENT_TAG, STUDY_TAG

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("team_server")]


def postgres_missing() -> str | None:
    """Why a real cluster cannot run here (None: it can)."""
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return "psycopg is not installed (pip install -e '.[server]')"
    if not (shutil.which("pg_ctl") or list(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"))):
        return "PostgreSQL is not installed (make engines installs it where root and apt are)"
    if os.geteuid() == 0 and not shutil.which("runuser"):
        return "root without runuser: PostgreSQL cannot run as the postgres user here"
    return None



TINY = ["model=timm", "model.name=test_efficientnet", "model.pretrained=false", "model.input_size=64",
        "data.counts={ALL:8,HLT:8}", "data.image_size=64", "task=binary", "augmentation=none",
        "trainer.max_epochs=2", "fold.n_splits=2", "evaluation.cam_panel=false"]
ADMIN = ("admin", "admin-pass-7")
# symptoms of writers fighting over a store: none may show in any output
CONTENTION = ("database is locked", "UniqueViolation", "duplicate key", "deadlock", "Traceback")


@dataclass
class TeamServer:
    folder: Path
    port: int

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def ensure_running(self) -> None:
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv(USERNAME_ENV, ADMIN[0])
            patch.setenv(PASSWORD_ENV, ADMIN[1])
            start(self.folder, port=self.port, auth=True)  # a running server is found and kept

    def env(self, user: tuple[str, str] | None = ADMIN, **extra: str) -> dict[str, str]:
        """A command's environment as `user` (None: no credentials at all)."""
        env = {k: v for k, v in os.environ.items() if k not in (USERNAME_ENV, PASSWORD_ENV)}
        env.update(CI="true", PYTHONUNBUFFERED="1", MLFLOW_TRACKING_URI=self.uri, **extra)
        if user is not None:
            env.update({USERNAME_ENV: user[0], PASSWORD_ENV: user[1]})
        return env

    def client(self, user: tuple[str, str], patch: pytest.MonkeyPatch) -> MlflowClient:
        patch.setenv(USERNAME_ENV, user[0])
        patch.setenv(PASSWORD_ENV, user[1])
        return MlflowClient(self.uri)


@pytest.fixture(scope="module")
def team() -> Iterator[TeamServer]:
    if (reason := postgres_missing()) is not None:
        pytest.skip(reason)
    base = Path(tempfile.mkdtemp(prefix="leukexp-team-", dir="/tmp"))
    base.chmod(0o755)  # the postgres user enters it
    server = TeamServer(base / "lab", free_port())
    server.ensure_running()
    yield server
    stop(server.folder)
    shutil.rmtree(base, ignore_errors=True)


def train(root: Path, env: dict[str, str], *overrides: str) -> subprocess.Popen:
    root.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen([sys.executable, "-m", "leukexp.commands.train", "-m", *TINY, *overrides], cwd=root,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                            start_new_session=True)


def runs_of(client: MlflowClient, experiment: str) -> dict[str, list]:
    found = client.get_experiment_by_name(experiment)
    assert found is not None, f"{experiment}: not on the server"
    runs = client.search_runs([found.experiment_id], max_results=1000)
    return {kind: [r for r in runs if r.data.tags.get(KIND_TAG) == kind] for kind in ("fold", "cv", "search")}


def assert_each_fold_once(runs: dict[str, list], n_configs: int) -> None:
    finished = [r for r in runs["fold"] if r.info.status == "FINISHED"]
    keys = [(r.data.tags["cv_group"], r.data.tags["fold"]) for r in finished]
    assert len(keys) == len(set(keys)) == 2 * n_configs, f"every fold FINISHED once: {sorted(keys)}"
    assert [r for kind in runs.values() for r in kind if r.info.status == "RUNNING"] == [], "nothing left RUNNING"
    assert len(runs["cv"]) == n_configs
    for parent in runs["cv"]:
        children = [r for r in finished if r.data.tags[PARENT_TAG] == parent.info.run_id]
        assert sorted(r.data.tags["fold"] for r in children) == ["f0", "f1"]
        assert parent.info.status == "FINISHED" and parent.data.tags[STUDY_TAG] == "complete"


def test_a_restart_keeps_runs_a_stop_leaves_no_process_and_accounts_hold(team: TeamServer,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    team.ensure_running()
    client = team.client(ADMIN, monkeypatch)
    experiment = client.create_experiment("kept")
    run = client.create_run(experiment)
    client.log_metric(run.info.run_id, "test/acc", 0.9)
    client.log_text(run.info.run_id, "kept", "notes/a.txt")
    client.set_terminated(run.info.run_id)
    assert list(ServerFolder(team.folder.resolve()).artifacts.rglob("a.txt")), "artifacts proxied into the folder"
    group = int(status(team.folder)["pid"])
    assert _alive(group) and status(team.folder)["running"] is True

    from leukexp.commands.server import main

    assert main(["stop", str(team.folder)]) == 0
    assert not _alive(group), "no process the server started is left (uvicorn, job runner, huey consumers)"
    assert not (team.folder / "postgres" / "postmaster.pid").exists(), "the cluster is stopped"
    assert main(["status", str(team.folder)]) == 1
    team.ensure_running()  # the same folder: the same data and accounts
    assert int(status(team.folder)["pid"]) != group
    assert client.get_run(run.info.run_id).data.metrics["test/acc"] == 0.9
    assert Path(client.download_artifacts(run.info.run_id, "notes/a.txt", str(team.folder.parent))).read_text() \
        == "kept"

    from mlflow.exceptions import MlflowException
    from mlflow.server.auth.client import AuthServiceClient

    users = AuthServiceClient(team.uri)
    for name, permission in (("viewer", "READ"), ("editor", "EDIT")):
        users.create_user(name, f"{name}-pass-1")
        users.grant_user_permission(name, "experiment", experiment, permission)
    monkeypatch.delenv(USERNAME_ENV)
    monkeypatch.delenv(PASSWORD_ENV)
    with pytest.raises(MlflowException, match=r"401|nauthorized|credentials"):
        client.get_run(run.info.run_id)
    client = team.client(("viewer", "viewer-pass-1"), monkeypatch)
    assert client.get_run(run.info.run_id).data.metrics["test/acc"] == 0.9, "READ reads"
    with pytest.raises(MlflowException, match=r"403|ermission"):
        client.log_metric(run.info.run_id, "test/acc", 0.1)
    with pytest.raises(MlflowException, match=r"403|ermission"):
        client.delete_experiment(experiment)
    client = team.client(("editor", "editor-pass-1"), monkeypatch)
    client.log_metric(run.info.run_id, "val/acc", 0.8)  # EDIT logs
    assert client.get_run(run.info.run_id).data.metrics["val/acc"] == 0.8
    for written in [*team.folder.rglob("*.log"), team.folder / "server.json"]:
        assert ADMIN[1] not in written.read_text(errors="replace"), f"{written}: holds the password"


@pytest.fixture(scope="module")
def lab_study(team: TeamServer, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Writers at once: a sweep with two joblib workers and a search whose folds run on two (each its own project
    root, as two users). Its root (the sweep's) for the tests that read what it wrote."""
    team.ensure_running()
    root = tmp_path_factory.mktemp("lab")
    env = team.env()
    writers = [train(root / "sweep", env, "head=svm", "fold=f0,f1", "hydra/launcher=local2",
                     "mlflow.experiment_name=lab"),
               train(root / "search", env, "experiment=search_linear", "hydra/launcher=local2",
                     "hydra.sweeper.n_trials=2", "mlflow.experiment_name=lab_search")]
    outputs = [writer.communicate(timeout=900)[0] for writer in writers]
    for writer, output in zip(writers, outputs, strict=True):
        assert writer.returncode == 0, output[-3000:]
        for symptom in CONTENTION:
            assert symptom not in output, output[-3000:]
    return root


def test_parallel_writers_and_a_parallel_search_finish_every_fold_once(team: TeamServer, lab_study: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    client = team.client(ADMIN, monkeypatch)
    assert_each_fold_once(runs_of(client, "lab"), n_configs=1)
    search = runs_of(client, "lab_search")
    assert_each_fold_once({"fold": search["fold"], "cv": search["cv"], "search": []}, n_configs=2)
    (search_run,) = search["search"]
    assert search_run.info.status == "FINISHED" and search_run.data.metrics["search/trials_complete"] == 2
    assert {p.data.tags[PARENT_TAG] for p in search["cv"]} == {search_run.info.run_id}


def test_a_reader_reports_opens_the_saved_view_and_predicts_but_cannot_write(
        team: TeamServer, lab_study: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        command_server) -> None:
    team.ensure_running()
    root = lab_study / "sweep"
    registered = command_server.run(["leukexp.commands.report", "--experiment", "lab", "--out",
                                     str(tmp_path / "admin-report"), "--register", "lab_model"], cwd=root,
                                    env=team.env(), timeout=300)
    assert registered.returncode == 0, registered.stderr[-3000:]
    from mlflow.server.auth.client import AuthServiceClient

    admin = team.client(ADMIN, monkeypatch)
    experiment = admin.get_experiment_by_name("lab").experiment_id
    reader = ("reader", "reader-pass-3")
    AuthServiceClient(team.uri).create_user(*reader)
    AuthServiceClient(team.uri).grant_user_permission(reader[0], "experiment", experiment, "READ")
    AuthServiceClient(team.uri).grant_user_permission(reader[0], "registered_model", "lab_model", "READ")

    as_reader = team.env(reader)
    report = command_server.run(["leukexp.commands.report", "--experiment", "lab", "--out",
                                 str(tmp_path / "report")], cwd=root, env=as_reader, timeout=300)
    assert report.returncode == 0, report.stderr[-3000:]
    assert "## Summary of every configuration" in (tmp_path / "report" / "report.md").read_text()
    view = read_view(team.client(reader, monkeypatch).get_experiment(experiment).tags)
    assert view is not None and "cv/test/acc_mean" in json.dumps(view[1]), "the reader opens the saved ranking view"
    images = sorted(p for p in (root / "cache").rglob("*.png"))[:3] or sorted((root / "cache").rglob("*.jp*g"))[:3]
    assert images, f"the sweep's synthetic images are under {root / 'cache'}"
    predicted = command_server.run(["leukexp.commands.predict", "models:/lab_model@champion", *map(str, images),
                                    "--out", str(tmp_path / "p.csv")], cwd=root, env=as_reader, timeout=300)
    assert predicted.returncode == 0, predicted.stderr[-3000:]
    assert len((tmp_path / "p.csv").read_text().splitlines()) == len(images) + 1

    refused = command_server.run(["leukexp.commands.train", *TINY, "head=logreg", "fold=f0",
                                  "mlflow.experiment_name=lab"], cwd=root, env=as_reader, timeout=300)
    assert refused.returncode == 2, refused.stdout[-2000:] + refused.stderr[-2000:]
    (line,) = [x for x in refused.stderr.splitlines() if x.startswith("leukexp-train: error:")]
    assert "reader" in line and "EDIT" in line and "Traceback" not in refused.stderr
    assert len(runs_of(admin, "lab")["fold"]) == 2, "the refused run logged nothing"


@pytest.mark.parametrize("command", [["leukexp.commands.report", "--experiment", "lab"],
                                     ["leukexp.commands.train", *TINY, "head=logreg", "fold=f0",
                                      "mlflow.experiment_name=lab"]], ids=["report", "train"])
def test_a_command_without_credentials_is_one_line(team: TeamServer, tmp_path: Path, command_server,
                                                   command: list[str]) -> None:
    team.ensure_running()
    result = command_server.run(command, cwd=tmp_path, env=team.env(None), timeout=300)
    assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-2000:]
    (line,) = [x for x in result.stderr.splitlines() if ": error:" in x]
    assert USERNAME_ENV in line and PASSWORD_ENV in line and team.uri in line, line
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "cache").exists() and not list(tmp_path.rglob("manifest.csv")), "no work started"


def test_the_server_killed_mid_sweep_loses_nothing_after_a_rerun(team: TeamServer, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch,
                                                                 command_server) -> None:
    team.ensure_running()
    # quick to give up (MLflow's client retries for minutes by default), long folds to kill the server in one
    env = team.env(MLFLOW_HTTP_REQUEST_MAX_RETRIES="1", MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR="1",
                   MLFLOW_HTTP_REQUEST_TIMEOUT="20")
    overrides = ["head=mlp1", "fold=f0,f1", "trainer.max_epochs=40", "mlflow.experiment_name=lab_kill"]
    sweep = train(tmp_path, env, *overrides)
    seen = ""
    deadline = time.time() + 400
    while time.time() < deadline and sweep.poll() is None and "open the UI" not in seen:
        seen += sweep.stdout.readline()
    assert sweep.poll() is None, f"the sweep ended before the server could be killed:\n{seen[-3000:]}"
    os.killpg(int(status(team.folder)["pid"]), signal.SIGKILL)
    output = seen + sweep.communicate(timeout=600)[0]
    assert sweep.returncode not in (0, None), output[-3000:]
    (failed,) = [x for x in output.splitlines() if "job failed:" in x]  # the sweep's own line for a failed job
    assert "the server does not answer" in failed and team.uri in failed, failed
    assert "1 job(s) failed" in output and "Traceback" not in output, output[-3000:]

    team.ensure_running()
    rerun = command_server.run(["leukexp.commands.train", "-m", *TINY, *overrides], cwd=tmp_path,
                               env=team.env(MLFLOW_HTTP_REQUEST_TIMEOUT="60"), timeout=600)  # the usual budget
    assert rerun.returncode == 0, rerun.stdout[-2000:] + rerun.stderr[-2000:]
    assert "already FINISHED" in rerun.stdout, "the fold finished before the kill was kept"
    runs = runs_of(team.client(ADMIN, monkeypatch), "lab_kill")
    assert_each_fold_once(runs, n_configs=1)


def test_auth_needs_the_first_administrators_account_from_the_environment(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    lab_folder = tmp_path / "lab"
    monkeypatch.delenv(USERNAME_ENV, raising=False)
    monkeypatch.delenv(PASSWORD_ENV, raising=False)
    with pytest.raises(LeukexpError, match=r"^--auth: set MLFLOW_TRACKING_USERNAME"):
        start(lab_folder, auth=True)
    assert not lab_folder.exists(), "refused before anything was created or started"
    lab_folder.mkdir(parents=True)
    with pytest.raises(LeukexpError, match=r"^--auth: set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD"):
        auth_config(ServerFolder(lab_folder), "postgresql+psycopg://postgres@/mlflow_auth")
    monkeypatch.setenv(USERNAME_ENV, "admin")
    monkeypatch.setenv(PASSWORD_ENV, "s3cret-pass")
    path = auth_config(ServerFolder(lab_folder), "postgresql+psycopg://postgres@/mlflow_auth")
    assert oct(path.stat().st_mode & 0o777) == "0o600" and "admin_password = s3cret-pass" in path.read_text()
    assert sibling_database("postgresql+psycopg://lab@db.example:5432/mlflow?sslmode=require", "mlflow_auth") == \
        "postgresql+psycopg://lab@db.example:5432/mlflow_auth?sslmode=require"
