"""A tracking server a lab can share: MLflow's server on PostgreSQL, with proxied artifacts and, with `auth`, MLflow's
`basic-auth` app (accounts, READ / EDIT / MANAGE per experiment and registered model), started and stopped as one unit.

Everything lives under one folder: `postgres/` (the cluster, unless an existing database is given), `socket/` (the
cluster listens on a Unix socket there and on no TCP port), `artifacts/` (what clients upload through the server),
`logs/` and `server.json` (what is running). The MLflow server and every process it starts (uvicorn, its job runner,
huey consumers) run in a session of their own, so stopping it stops them all. PostgreSQL refuses to run as root: as
root its programs run as the `postgres` user, which must be able to reach the folder.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from leukexp.errors import LeukexpError
from leukexp.tracking.reach import ACCOUNT_ENV

DATABASE, AUTH_DATABASE = "mlflow", "mlflow_auth"
STATE_FILE = "server.json"
AUTH_CACHE_S = 60  # seconds a checked password is remembered (see `auth_config`)
WORKER_HEALTHCHECK_S = 60  # seconds a server worker may take to answer uvicorn's health check
USERNAME_ENV, PASSWORD_ENV = ACCOUNT_ENV


@dataclass(frozen=True)
class ServerFolder:
    """Where one team server keeps its cluster, socket, artifacts, logs and state."""

    root: Path

    @property
    def cluster(self) -> Path:
        """The PostgreSQL cluster's data folder."""
        return self.root / "postgres"

    @property
    def socket(self) -> Path:
        """The folder of the cluster's Unix socket."""
        return self.root / "socket"

    @property
    def artifacts(self) -> Path:
        """Where the server keeps uploaded artifacts."""
        return self.root / "artifacts"

    @property
    def logs(self) -> Path:
        """The cluster's and the server's logs."""
        return self.root / "logs"

    @property
    def state(self) -> Path:
        """`server.json`: what runs."""
        return self.root / STATE_FILE

    def database_uri(self, name: str = DATABASE) -> str:
        """The SQLAlchemy URI of a database of this folder's cluster (over its Unix socket; no password in it)."""
        return f"postgresql+psycopg://postgres@/{name}?host={self.socket}"


def postgres_program(name: str) -> str:
    """The path of a PostgreSQL program (`initdb`, `pg_ctl`, `psql`): on PATH or in Debian's versioned folder."""
    found = shutil.which(name) or next(iter(sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"), reverse=True)),
                                       None)
    if found is None:
        raise LeukexpError(f"{name}: PostgreSQL is not installed here; install it (Debian: apt install postgresql) or"
                           " give an existing database with --database-uri")
    return str(found)


def _as_postgres(command: list[str]) -> list[str]:
    """`command` as the `postgres` user when this process is root (PostgreSQL refuses to run as root)."""
    return ["runuser", "-u", "postgres", "--", *command] if os.geteuid() == 0 else command


def _run(command: list[str], what: str, log: Path | None = None) -> str:
    """Run a PostgreSQL program; its failure is one line naming what failed and where its output is."""
    done = subprocess.run(_as_postgres(command), capture_output=True, text=True, timeout=300)
    if done.returncode != 0:
        detail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
        where = f"; see {log}" if log is not None else ""
        raise LeukexpError(f"{what} failed ({detail[0][:300]}){where}")
    return done.stdout


def _check_reachable(folder: ServerFolder) -> None:
    """As root, the `postgres` user must be able to enter the folder (PostgreSQL refuses to run as root)."""
    if os.geteuid() != 0:
        return
    done = subprocess.run(["runuser", "-u", "postgres", "--", "test", "-x", str(folder.root)], capture_output=True)
    if done.returncode != 0:
        raise LeukexpError(f"{folder.root}: the postgres user cannot enter it, and PostgreSQL refuses to run as root;"
                           " use a folder every user can traverse (e.g. /srv/leukexp-server)")


def start_database(folder: ServerFolder, auth: bool) -> None:
    """The folder's cluster created once (`initdb`), started on its Unix socket, its databases created once."""
    for path in (folder.root, folder.socket, folder.logs):
        path.mkdir(parents=True, exist_ok=True)
    _check_reachable(folder)
    if os.geteuid() == 0:
        shutil.chown(folder.socket, "postgres")
        shutil.chown(folder.logs, "postgres")
    if not (folder.cluster / "PG_VERSION").is_file():
        folder.cluster.mkdir(exist_ok=True)
        if os.geteuid() == 0:
            shutil.chown(folder.cluster, "postgres")
        # local connections over the socket only (no TCP port): its folder's permissions are the access control
        _run([postgres_program("initdb"), "-D", str(folder.cluster), "-U", "postgres", "-A", "trust",
              "--no-instructions"], f"initdb {folder.cluster}")
    log = folder.logs / "postgres.log"
    running = subprocess.run(_as_postgres([postgres_program("pg_ctl"), "-D", str(folder.cluster), "status"]),
                             capture_output=True).returncode == 0
    if not running:
        _run([postgres_program("pg_ctl"), "-D", str(folder.cluster), "-l", str(log), "-w", "-t", "60", "-o",
              f"-k {folder.socket} -c listen_addresses=''", "start"], f"PostgreSQL in {folder.cluster}", log)
    for name in (DATABASE, *([AUTH_DATABASE] if auth else [])):
        psql = [postgres_program("psql"), "-h", str(folder.socket), "-U", "postgres", "-d", "postgres", "-tAc"]
        if _run([*psql, f"SELECT 1 FROM pg_database WHERE datname = '{name}'"], "psql").strip() != "1":
            _run([*psql, f'CREATE DATABASE "{name}"'], f"creating database {name}")


def stop_database(folder: ServerFolder) -> None:
    """Stop the folder's cluster if it runs (fast shutdown: open transactions are rolled back)."""
    if (folder.cluster / "postmaster.pid").exists():
        _run([postgres_program("pg_ctl"), "-D", str(folder.cluster), "-m", "fast", "-w", "stop"],
             f"stopping PostgreSQL in {folder.cluster}")


def sibling_database(uri: str, name: str) -> str:
    """The URI of database `name` on the server `uri` names (the same host, user and options)."""
    from sqlalchemy.engine import make_url

    return make_url(uri).set(database=name).render_as_string(hide_password=False)


def secret_key(folder: ServerFolder) -> str:
    """The key the auth app signs its CSRF tokens with: made once per folder, kept readable by its owner only (the
    same on every restart, so a browser's session survives one)."""
    import secrets

    path = folder.root / "secret_key"
    if not path.is_file():
        path.touch(mode=0o600)
        path.write_text(secrets.token_hex(32))
    return path.read_text().strip()


def admin_account() -> tuple[str, str]:
    """The first administrator's name and password, from the environment (never from the command line)."""
    username, password = os.environ.get(USERNAME_ENV), os.environ.get(PASSWORD_ENV)
    if not username or not password:
        raise LeukexpError(f"--auth: set {USERNAME_ENV} and {PASSWORD_ENV} to the first administrator's account"
                           " (read from the environment, never from the command line)")
    return username, password


def auth_config(folder: ServerFolder, database_uri: str) -> Path:
    """MLflow's basic-auth config (its users and permissions in `database_uri`); the first admin from the
    environment (`MLFLOW_TRACKING_USERNAME` / `MLFLOW_TRACKING_PASSWORD`), the file readable by its owner only.

    A checked password is remembered for `AUTH_CACHE_S` seconds: without it every request pays a deliberately slow
    password hash (0.75 s a request instead of 0.06 s on a 2-core machine, 20 s of a fold's logging); a password
    changed or a user deleted through another server worker is honoured by this one within that window."""
    username, password = admin_account()
    path = folder.root / "basic_auth.ini"
    path.touch(mode=0o600, exist_ok=True)
    path.chmod(0o600)
    path.write_text("[mlflow]\ndefault_permission = NO_PERMISSIONS\n"
                    f"database_uri = {database_uri}\nadmin_username = {username}\nadmin_password = {password}\n"
                    "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
                    f"auth_cache_ttl_seconds = {AUTH_CACHE_S}\n")
    return path


def start(root: Path, host: str = "127.0.0.1", port: int = 5000, auth: bool = False,
          database_uri: str | None = None, wait_s: float = 120.0) -> dict[str, object]:
    """Start (or find running) the team server of `root`; returns its state (the tracking URI under `uri`)."""
    folder = ServerFolder(root.expanduser().resolve())
    earlier = status(folder.root)
    if earlier.get("running"):
        return earlier
    if auth:
        admin_account()  # before anything is created or started
    if database_uri is None:
        start_database(folder, auth)
    folder.artifacts.mkdir(parents=True, exist_ok=True)
    folder.logs.mkdir(parents=True, exist_ok=True)
    backend = database_uri or folder.database_uri()
    env = {k: v for k, v in os.environ.items() if k not in (USERNAME_ENV, PASSWORD_ENV)}
    command = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", backend, "--artifacts-destination",
               str(folder.artifacts), "--host", host, "--port", str(port), "--workers", "2",
               # uvicorn kills a worker that misses a 5 s health check: on a busy machine (training beside the
               # server) that cut requests mid-way ("RemoteDisconnected"); a slow worker is not a dead one
               "--uvicorn-opts", f"--timeout-worker-healthcheck {WORKER_HEALTHCHECK_S}"]
    if auth:
        users = sibling_database(database_uri, AUTH_DATABASE) if database_uri else folder.database_uri(AUTH_DATABASE)
        env["MLFLOW_AUTH_CONFIG_PATH"] = str(auth_config(folder, users))
        env["MLFLOW_FLASK_SERVER_SECRET_KEY"] = secret_key(folder)
        command += ["--app-name", "basic-auth"]
    log = folder.logs / "mlflow.log"
    with log.open("ab") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    uri = f"http://{host}:{port}"
    state = {"pid": process.pid, "uri": uri, "auth": auth, "own_database": database_uri is None,
             "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    folder.state.write_text(json.dumps(state, indent=2))
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            stop(folder.root)
            raise LeukexpError(f"mlflow server stopped at start (exit {process.returncode}: {_last_error(log)});"
                               f" see {log}")
        if _healthy(uri):
            return {**state, "running": True}
        time.sleep(0.5)
    stop(folder.root)
    raise LeukexpError(f"mlflow server did not answer on {uri} within {wait_s:.0f} s; see {log}")


def _last_error(log: Path) -> str:
    """The last line of a log that names an error (or its last line)."""
    lines = [line.strip() for line in log.read_text(errors="replace").splitlines()[-200:] if line.strip()]
    errors = [line for line in lines if "Error" in line or "error" in line]
    return ((errors or lines or ["no output"])[-1])[:300]


def _healthy(uri: str) -> bool:
    """Whether the server answers its health check."""
    try:
        with urllib.request.urlopen(f"{uri}/health", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def _alive(group: int) -> bool:
    """Whether any process of the session (process group) `group` is left."""
    try:
        os.killpg(group, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _saved_state(folder: ServerFolder) -> dict[str, Any]:
    """What `server.json` says (empty where there is none or it is unreadable)."""
    try:
        state = json.loads(folder.state.read_text())
    except (OSError, ValueError):
        return {}
    return state if isinstance(state, dict) and "pid" in state and "uri" in state else {}


def status(root: Path) -> dict[str, object]:
    """What `server.json` says, and whether the server's processes run and it answers."""
    state = _saved_state(ServerFolder(root.expanduser().resolve()))
    if not state:
        return {"running": False}
    return {**state, "running": _alive(int(state["pid"])) and _healthy(str(state["uri"]))}


def stop(root: Path, wait_s: float = 30.0) -> bool:
    """Stop every process the server started (its whole session: SIGTERM, then SIGKILL) and the folder's cluster;
    returns whether anything was running."""
    folder = ServerFolder(root.expanduser().resolve())
    state = _saved_state(folder)
    group = int(state["pid"]) if state else 0
    was_running = bool(group) and _alive(group)
    if was_running:
        os.killpg(group, signal.SIGTERM)
        deadline = time.monotonic() + wait_s
        while _alive(group) and time.monotonic() < deadline:
            time.sleep(0.2)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(group, os.WNOHANG)  # reap the server if this process started it
        if _alive(group):
            os.killpg(group, signal.SIGKILL)
    if state.get("own_database", True) and folder.cluster.exists():
        stop_database(folder)
    folder.state.unlink(missing_ok=True)
    return was_running
