"""Real job engines for the tests: a one-node Slurm cluster (munge, MariaDB, slurmdbd, slurmctld, slurmd) started
from Debian's packages under a temporary folder, as root, and a local Ray cluster (`ray start --head`). `make test`
installs the packages where it can (`make engines`, and Ray with `leukexp[ray]`); where they cannot be installed or
started, the tests that need them skip saying why."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PACKAGES = "apt-get install slurm-wlm slurmdbd munge mariadb-server (as root)"
MUNGE_SOCKET = Path("/run/munge/munge.socket.2")  # the client tools (sacct, sacctmgr) always use the default one


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(check, seconds: float, what: str) -> None:
    """Poll `check()` until it is true, or fail naming `what`."""
    deadline = time.time() + seconds
    while time.time() < deadline:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            if check():
                return
        time.sleep(0.3)
    raise RuntimeError(f"{what} did not come up within {seconds:.0f} s")


def fold_runs(uri: str, experiment: str) -> list:
    """The fold runs of an experiment in the tracking store at `uri` (none when it does not exist yet)."""
    from mlflow.tracking import MlflowClient

    from leukexp.vocabulary import KIND_TAG

    client = MlflowClient(uri)
    found = client.get_experiment_by_name(experiment)
    runs = client.search_runs([found.experiment_id], max_results=200) if found else []
    return [run for run in runs if run.data.tags.get(KIND_TAG) == "fold"]


class SlurmCluster:
    """A one-node Slurm cluster with accounting (`sacct` works), its files under `root`.

    `why_not()` says why one cannot be started here ('' when it can); `start()` brings every daemon up and waits for
    the node to be idle; `env` is the environment its commands need (`SLURM_CONF`); `stop()` cancels every job and
    stops every daemon it started.
    """

    DAEMONS = ("munged", "mariadbd", "mariadb-install-db", "slurmdbd", "slurmctld", "slurmd", "sbatch", "sacct")

    def __init__(self, root: Path) -> None:
        self.root = root
        self.conf = root / "slurm.conf"
        self.env = {**os.environ, "SLURM_CONF": str(self.conf)}
        self.processes: list[Path] = []  # pid files of the daemons started here
        self.host = socket.gethostname().split(".")[0]

    @classmethod
    def not_installable(cls) -> str:
        """Why no cluster can be started here at all ('' when the packages are there and this runs as root)."""
        missing = [name for name in cls.DAEMONS if shutil.which(name) is None]
        if missing:
            return f"Slurm not installed ({', '.join(missing)} missing): {PACKAGES}"
        if os.geteuid() != 0:
            return "a one-node Slurm cluster is started as root (slurmd runs jobs as their user)"
        return ""

    @classmethod
    def why_not(cls) -> str:
        """Why a cluster cannot be started now ('' when it can)."""
        if reason := cls.not_installable():
            return reason
        if subprocess.run(["pgrep", "-x", "slurmctld"], capture_output=True).returncode == 0:
            return "a slurmctld is already running on this machine"
        return ""

    def run(self, *command: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
        return subprocess.run(command, env=self.env, capture_output=True, text=True, check=check, timeout=timeout)

    def start(self) -> SlurmCluster:
        for folder in ("state", "spool", "log", "db", "munge"):
            (self.root / folder).mkdir(parents=True, exist_ok=True)
        self._munge()
        self._database()
        self._write_configs()
        self._daemon("slurmdbd", [])
        wait_for(lambda: self.run("sacctmgr", "-n", "list", "cluster", check=False).returncode == 0, 60, "slurmdbd")
        self.run("sacctmgr", "-i", "add", "cluster", "leukexp-test", check=False)
        self._daemon("slurmctld", ["-c"])
        self._daemon("slurmd", [])
        wait_for(lambda: self.run("sinfo", "-h", "-o", "%T").stdout.strip() == "idle", 120, "the Slurm node")
        return self

    def _munge(self) -> None:
        if MUNGE_SOCKET.exists() and subprocess.run("munge -n | unmunge", shell=True, capture_output=True
                                                    ).returncode == 0:
            return  # the machine's own munged
        key = self.root / "munge" / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o400)
        MUNGE_SOCKET.parent.mkdir(parents=True, exist_ok=True)
        pid = self.root / "munge" / "munged.pid"
        logs, seed = self.root / "log" / "munged.log", self.root / "munge" / "seed"
        subprocess.run(["munged", "--force", f"--key-file={key}", f"--pid-file={pid}", f"--log-file={logs}",
                        f"--seed-file={seed}"], check=True, capture_output=True)
        self.processes.append(pid)
        wait_for(lambda: subprocess.run("munge -n | unmunge", shell=True, capture_output=True).returncode == 0, 20,
                 "munged")

    def _database(self) -> None:
        self.db_port = free_port()
        subprocess.run(["mariadb-install-db", "--user=root", f"--datadir={self.root / 'db'}", "--skip-test-db",
                        "--auth-root-authentication-method=normal"], check=True, capture_output=True, timeout=120)
        pid = self.root / "mariadb.pid"
        subprocess.Popen(["mariadbd", "--user=root", f"--datadir={self.root / 'db'}",
                          f"--socket={self.root / 'db.sock'}", f"--port={self.db_port}", "--bind-address=127.0.0.1",
                          "--skip-grant-tables", f"--pid-file={pid}", f"--log-error={self.root / 'log' / 'db.err'}"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        self.processes.append(pid)
        wait_for(lambda: socket.create_connection(("127.0.0.1", self.db_port), timeout=1).close() is None, 60,
                 "MariaDB")

    def _write_configs(self) -> None:
        ports = [free_port() for _ in range(3)]
        self.dbd_port = ports[2]
        memory = int(int(subprocess.run(["free", "-m"], capture_output=True, text=True).stdout.split()[7]) * 0.8)
        root = self.root
        (root / "slurmdbd.conf").write_text(
            f"AuthType=auth/munge\nDbdHost=localhost\nDbdPort={self.dbd_port}\nSlurmUser=root\n"
            f"LogFile={root / 'log' / 'slurmdbd.log'}\nPidFile={root / 'slurmdbd.pid'}\n"
            f"StorageType=accounting_storage/mysql\nStorageHost=127.0.0.1\nStoragePort={self.db_port}\n"
            "StorageUser=root\nStorageLoc=slurm_acct\n")
        (root / "slurmdbd.conf").chmod(0o600)
        self.conf.write_text("\n".join([
            "ClusterName=leukexp-test", f"SlurmctldHost={self.host}", "SlurmUser=root", "SlurmdUser=root",
            f"SlurmctldPort={ports[0]}", f"SlurmdPort={ports[1]}", "AuthType=auth/munge", "CredType=cred/munge",
            f"StateSaveLocation={root / 'state'}", f"SlurmdSpoolDir={root / 'spool'}",
            f"SlurmctldPidFile={root / 'slurmctld.pid'}", f"SlurmdPidFile={root / 'slurmd.pid'}",
            f"SlurmctldLogFile={root / 'log' / 'slurmctld.log'}", f"SlurmdLogFile={root / 'log' / 'slurmd.log'}",
            "ProctrackType=proctrack/linuxproc", "TaskPlugin=task/none", "JobAcctGatherType=jobacct_gather/linux",
            "AccountingStorageType=accounting_storage/slurmdbd", "AccountingStorageHost=localhost",
            f"AccountingStoragePort={self.dbd_port}", "SchedulerType=sched/backfill", "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_Core_Memory", "DefMemPerCPU=1024", "ReturnToService=2", "MinJobAge=600",
            "KillWait=10", "MpiDefault=none",
            f"NodeName={self.host} CPUs={os.cpu_count()} RealMemory={memory} State=UNKNOWN",
            "PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP", ""]))

    def _daemon(self, name: str, arguments: list[str]) -> None:
        subprocess.run([name, *arguments], env=self.env, check=True, capture_output=True, timeout=60)
        self.processes.append(self.root / f"{name}.pid")

    def states(self, *job_ids: str) -> dict[str, str]:
        """`sacct`'s state of each job (array tasks as `<id>_<task>`), from the accounting database."""
        done = self.run("sacct", "-X", "-n", "-P", "-o", "JobID,State", *[f"-j{job}" for job in job_ids])
        return dict(line.split("|", 1) for line in done.stdout.splitlines() if line)

    def stop(self) -> None:
        with contextlib.suppress(OSError, subprocess.SubprocessError, RuntimeError):
            self.run("scancel", "--user=root", check=False, timeout=20)
            wait_for(lambda: not self.run("squeue", "-h", check=False).stdout.strip(), 30, "the jobs' end")
        pids = []
        for pid_file in reversed(self.processes):
            with contextlib.suppress(OSError, ValueError):
                pids.append(int(pid_file.read_text().split()[0]))
                os.kill(pids[-1], signal.SIGTERM)
        deadline = time.time() + 5  # all of them at once, then whatever is left is killed
        while pids and time.time() < deadline:
            pids = [pid for pid in pids if _alive(pid)]
            time.sleep(0.1)
        for pid in pids:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    return True


class RayCluster:
    """A one-node Ray cluster (`ray start --head`) with `cpus` CPUs: `env` points commands at it (`RAY_ADDRESS`),
    `workers()` lists the pids of the worker processes running a task of that name, `stop()` ends it."""

    def __init__(self, cpus: int = 2) -> None:
        self.cpus = cpus
        self.ray = str(Path(sys.executable).parent / "ray")
        # Ray's sockets live under its temp folder: a short path (a socket's path is at most 107 bytes)
        self.root = Path(tempfile.mkdtemp(prefix="ray-", dir="/tmp"))
        self.port = free_port()
        # a loopback cluster without token authentication, whatever ~/.ray holds: Ray turns tokens on when it finds
        # one there (left by any earlier `ray.init()` that started a Ray), and a driver of this environment joins it
        self.env = {**os.environ, "RAY_ADDRESS": f"127.0.0.1:{self.port}", "RAY_AUTH_MODE": "disabled"}

    @staticmethod
    def why_not() -> str:
        """Why no cluster can be started here ('' when it can)."""
        try:
            import ray  # noqa: F401
        except ImportError:
            return "Ray not installed: pip install 'leukexp[ray]' (make test installs it)"
        if subprocess.run(["pgrep", "-f", "gcs_server"], capture_output=True).returncode == 0:
            return "a Ray cluster is already running on this machine"
        return ""

    def start(self) -> RayCluster:
        subprocess.run([self.ray, "start", "--head", f"--port={self.port}", f"--num-cpus={self.cpus}",
                        "--num-gpus=0", "--include-dashboard=false", "--disable-usage-stats",
                        f"--temp-dir={self.root}"], env=self.env, check=True, capture_output=True, timeout=120)
        return self

    def workers(self, task: str) -> list[int]:
        """Pids of the Ray workers running a task of this name now (a worker's title is `ray::<task>`)."""
        found = subprocess.run(["pgrep", "-f", f"^ray::{task}"], capture_output=True, text=True)
        return [int(pid) for pid in found.stdout.split()]

    def stop(self) -> None:
        """`ray stop --force`, then its folder removed, in the background: the stop takes ~8 s (its CLI's imports and
        process scan) that the next test need not wait for (no other test starts a Ray cluster)."""
        subprocess.Popen(f"'{self.ray}' stop --force; rm -rf '{self.root}'", shell=True, env=self.env,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
