"""The team tracking server: MLflow on a real PostgreSQL cluster, restarted without loss, stopped without orphans,
its accounts and permissions enforced."""

import os
import shutil
import socket
import tempfile
from pathlib import Path

import pytest

from leukexp.errors import LeukexpError
from leukexp.tracking.server import (
    PASSWORD_ENV,
    USERNAME_ENV,
    ServerFolder,
    _alive,
    sibling_database,
    start,
    status,
    stop,
)

pytestmark = pytest.mark.slow


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


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def lab_folder():
    """A folder the postgres user can enter (pytest's own temporary folders are its owner's only)."""
    base = Path(tempfile.mkdtemp(prefix="leukexp-server-", dir="/tmp"))
    base.chmod(0o755)
    yield base / "lab"
    stop(base / "lab")
    shutil.rmtree(base, ignore_errors=True)


def test_a_team_server_keeps_runs_across_a_restart_and_its_accounts_hold(lab_folder: Path, capsys,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    if (reason := postgres_missing()) is not None:
        pytest.skip(reason)
    from mlflow.tracking import MlflowClient

    from leukexp.commands.server import main

    port = free_port()
    assert main(["start", str(lab_folder), "--port", str(port)]) == 0
    uri = f"http://127.0.0.1:{port}"
    assert f"export MLFLOW_TRACKING_URI={uri}" in capsys.readouterr().out
    client = MlflowClient(uri)
    experiment = client.create_experiment("lab")
    run = client.create_run(experiment)
    client.log_metric(run.info.run_id, "test/acc", 0.9)
    client.log_text(run.info.run_id, "kept", "notes/a.txt")
    client.set_terminated(run.info.run_id)
    assert list(ServerFolder(lab_folder.resolve()).artifacts.rglob("a.txt")), "artifacts proxied into the folder"
    group = int(status(lab_folder)["pid"])
    assert _alive(group) and status(lab_folder)["running"] is True
    assert main(["stop", str(lab_folder)]) == 0
    assert not _alive(group), "no process the server started is left (uvicorn, job runner, huey consumers)"
    assert not (lab_folder / "postgres" / "postmaster.pid").exists(), "the cluster is stopped"
    assert main(["status", str(lab_folder)]) == 1
    monkeypatch.setenv(USERNAME_ENV, "admin")
    monkeypatch.setenv(PASSWORD_ENV, "first-admin-pass")
    again = start(lab_folder, port=port, auth=True)  # the same folder: the same data, now with accounts
    assert again["running"] is True and int(again["pid"]) != group
    assert client.get_run(run.info.run_id).data.metrics["test/acc"] == 0.9, "the admin reads what was there"
    assert Path(client.download_artifacts(run.info.run_id, "notes/a.txt", str(lab_folder.parent))).read_text() == \
        "kept"
    assert start(lab_folder, port=port)["pid"] == again["pid"], "a second start finds it running"
    from mlflow.exceptions import MlflowException
    from mlflow.server.auth.client import AuthServiceClient

    users = AuthServiceClient(uri)
    for name, permission in (("reader", "READ"), ("editor", "EDIT")):
        users.create_user(name, f"{name}-pass-1")
        users.grant_user_permission(name, "experiment", experiment, permission)
    monkeypatch.delenv(USERNAME_ENV)
    monkeypatch.delenv(PASSWORD_ENV)
    with pytest.raises(MlflowException, match=r"401|nauthorized|credentials"):
        client.get_run(run.info.run_id)
    monkeypatch.setenv(USERNAME_ENV, "reader")
    monkeypatch.setenv(PASSWORD_ENV, "reader-pass-1")
    assert client.get_run(run.info.run_id).data.metrics["test/acc"] == 0.9, "READ reads"
    with pytest.raises(MlflowException, match=r"403|ermission"):
        client.log_metric(run.info.run_id, "test/acc", 0.1)
    with pytest.raises(MlflowException, match=r"403|ermission"):
        client.delete_experiment(experiment)
    monkeypatch.setenv(USERNAME_ENV, "editor")
    monkeypatch.setenv(PASSWORD_ENV, "editor-pass-1")
    client.log_metric(run.info.run_id, "val/acc", 0.8)  # EDIT logs
    assert client.get_run(run.info.run_id).data.metrics["val/acc"] == 0.8
    for written in [*lab_folder.rglob("*.log"), lab_folder / "server.json"]:
        assert "first-admin-pass" not in written.read_text(errors="replace"), f"{written}: holds the password"


def test_auth_needs_the_first_administrators_account_from_the_environment(lab_folder: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    from leukexp.tracking.server import auth_config

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
