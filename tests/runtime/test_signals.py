"""SIGTERM and SIGINT raise `Interrupted` in the main thread; a process's children are reaped."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from leukexp.runtime.signals import Interrupted, descendants, install_stop_handlers, reap
from leukexp.vocabulary import KIND_TAG


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_stop_signal_raises_interrupted(signum: int) -> None:
    previous = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        assert install_stop_handlers()
        with pytest.raises(Interrupted) as stop:
            os.kill(os.getpid(), signum)
            time.sleep(1)
        assert stop.value.exit_code == 128 + signum
        assert signal.getsignal(signal.SIGTERM) == signal.SIG_IGN, "a second signal cannot interrupt the clean-up"
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def test_children_and_grandchildren_are_reaped() -> None:
    # a child that starts a grandchild, both sleeping (as a worker pool would) and ignoring SIGTERM
    code = ("import signal, subprocess, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN);"
            "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); time.sleep(60)")
    child = subprocess.Popen([sys.executable, "-c", code])
    deadline = time.time() + 60
    while not descendants(child.pid) and time.time() < deadline:  # the grandchild: the child ignores SIGTERM now
        time.sleep(0.1)
    family = [child.pid, *descendants(child.pid)]
    assert len(family) == 2 and set(family) <= set(descendants()), "both are below this process"
    assert reap(family, grace=0.5) == 2
    child.wait(10)
    assert child.returncode == -signal.SIGKILL, "ignored SIGTERM, so it was killed"
    deadline = time.time() + 10  # SIGKILL is delivered at once, but a process under load takes a moment to exit
    while time.time() < deadline and not all(not os.path.exists(f"/proc/{pid}") or _zombie(pid) for pid in family):
        time.sleep(0.1)
    assert all(not os.path.exists(f"/proc/{pid}") or _zombie(pid) for pid in family)


def _zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


TINY = ["model=timm", "model.name=test_efficientnet", "model.pretrained=false", "model.input_size=64",
        "data.counts={ALL:8,HLT:8}", "data.image_size=64", "task=binary", "augmentation=none", "fold.n_splits=2",
        "head=mlp3", "trainer.max_epochs=10000"]  # a run that trains for minutes unless stopped


def start(root: Path, *args: str) -> subprocess.Popen:
    # hydra.verbose: the run's phase starts are debug lines in its log file (`phase head`: the head is training)
    return subprocess.Popen([sys.executable, "-m", "leukexp.commands.train", *args, *TINY,
                             "hydra.verbose=leukexp.phase"], cwd=root,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, "CI": "true"})


def fold_runs(root: Path) -> list:
    from mlflow.tracking import MlflowClient

    from leukexp.files import file_lock

    database = root / "mlruns" / "mlflow.db"
    if not database.is_file():
        return []
    with file_lock(database.with_name(f".{database.name}.lock")):  # held by leukexp while it creates the schema
        client = MlflowClient(f"sqlite:///{database}")
        experiment = client.get_experiment_by_name("leukexp")
        return client.search_runs([experiment.experiment_id], max_results=100) if experiment else []


def training(root: Path) -> bool:
    """Whether a job of this root has started its head (its log file's `phase head` line)."""
    return any("phase head" in log.read_text(errors="replace") for log in (root / "logs").rglob("*.log"))


def stop_while_training(process: subprocess.Popen, root: Path) -> tuple[str, list]:
    """SIGTERM once a fold run is RUNNING and its head is training; return stderr and every run of the store."""
    deadline = time.time() + 240
    while time.time() < deadline and process.poll() is None and not training(root):
        time.sleep(0.2)
    assert any(r.info.status == "RUNNING" and r.data.tags.get(KIND_TAG) == "fold" for r in fold_runs(root))
    assert process.poll() is None, "the run ended before it could be stopped"
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=120)
    return err, fold_runs(root)


@pytest.mark.slow
@pytest.mark.parametrize("sweep", [False, True], ids=["single run", "sweep"])
def test_sigterm_ends_the_run_and_its_parent_killed_and_exits_143(tmp_path: Path, sweep: bool) -> None:
    process = start(tmp_path, *(["-m", "fold=f0,f1"] if sweep else []))
    err, runs = stop_while_training(process, tmp_path)
    assert process.returncode == 128 + signal.SIGTERM, err[-3000:]
    assert "stopped by signal 15" in err and "Traceback" not in err
    folds = [r for r in runs if r.data.tags.get(KIND_TAG) == "fold"]
    parents = [r for r in runs if r.data.tags.get(KIND_TAG) == "cv"]
    assert [r.info.status for r in folds] == ["KILLED"], "the current run is KILLED and no next job started"
    assert [r.info.status for r in parents] == ["KILLED"]
