"""leukexp on a real one-node Slurm cluster (`tests/engines.py`): a head sweep through hydra-submitit-launcher's
Slurm executor and a `leukexp-extract` job array against a real `mlflow server`; a job cancelled with `scancel`
ends KILLED in MLflow and the resumed sweep finishes it. Skipped, saying why, only where Slurm cannot be
installed or started here (`make engines` installs it as root)."""

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from engines import SlurmCluster, fold_runs
from forkserver import CommandServer

from leukexp.features.cache import FeatureCache

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("slurm")]  # one cluster: one pytest worker

TINY = ["model=timm", "model.name=test_efficientnet", "model.pretrained=false", "model.input_size=64",
        "data.counts={ALL:8,HLT:8}", "data.image_size=64", "task=binary", "augmentation=flips",
        "fold.n_splits=2", "evaluation.cam_panel=false"]
ON_SLURM = ["hydra/launcher=slurm", "hydra.launcher.partition=debug", "hydra.launcher.gpus_per_node=0",
            "hydra.launcher.cpus_per_task=1", "hydra.launcher.mem_gb=2", "hydra.launcher.timeout_min=20"]
MISSES = re.compile(r"feature cache: \d+ hits, (\d+) misses")


@pytest.fixture(scope="module")
def slurm(tmp_path_factory: pytest.TempPathFactory):
    why = SlurmCluster.why_not()
    if why:
        pytest.skip(why)
    cluster = SlurmCluster(tmp_path_factory.mktemp("slurm")).start()
    yield cluster
    cluster.stop()


def leukexp(module: str, *arguments: str, root: Path, cluster: SlurmCluster, uri: str) -> list[str]:
    """`python -m leukexp.commands.<module> ...` (from [2:] on, what the command server takes)."""
    return [sys.executable, "-m", f"leukexp.commands.{module}", *arguments, f"paths.root_dir={root}",
            f"mlflow.tracking_uri={uri}"]


def settled(slurm: SlurmCluster, ids: list[str]) -> None:
    """Wait until the accounting database has every job of `ids` ended."""
    from engines import wait_for

    wait_for(lambda: not {"PENDING", "RUNNING", "COMPLETING"} & set(slurm.states(*ids).values()), 180, "job states")


def job_ids(sweep_dir: Path) -> list[str]:
    """The Slurm job ids submitit used for a sweep (its folder per job)."""
    return sorted({path.name.split("_")[0] for path in sweep_dir.rglob(".submitit/*") if path.is_dir()
                   and path.name[0].isdigit()})


def test_an_extraction_array_then_a_head_sweep_on_slurm(slurm: SlurmCluster, tracking_server: str,
                                                        command_server: CommandServer, tmp_path: Path) -> None:
    env = {**slurm.env, "CI": "true"}
    extract = " ".join(leukexp("extract", "--shard", "$SLURM_ARRAY_TASK_ID/2", *TINY, root=tmp_path, cluster=slurm,
                               uri=tracking_server))
    submitted = slurm.run("sbatch", "--parsable", "--array=0-1", "--wait", "--cpus-per-task=1", "--mem=2G",
                          f"--output={tmp_path}/extract-%A_%a.out", f"--chdir={tmp_path}", "--wrap", extract,
                          timeout=600)
    array = submitted.stdout.strip().split(";")[0]
    states = slurm.states(array)
    assert states == {f"{array}_0": "COMPLETED", f"{array}_1": "COMPLETED"}, states
    logs = [path.read_text() for path in sorted(tmp_path.glob("extract-*.out"))]
    computed = [int(re.search(r"([\d,]+) computed", log).group(1).replace(",", "")) for log in logs]
    (folder,) = [f for f in (tmp_path / "cache" / "features").iterdir() if f.is_dir()]
    entries = FeatureCache(folder.parent, folder.name).entry_count()
    assert len(computed) == 2 and sum(computed) == entries > 16, "the two array tasks split the study, once each"

    sweep = command_server.run(leukexp("train", "-m", *ON_SLURM, *TINY, "head=logreg,knn", "fold=f0",
                                       "mlflow.experiment_name=slurm-sweep", root=tmp_path, cluster=slurm,
                                       uri=tracking_server)[2:], cwd=tmp_path, env=env, timeout=900)
    assert sweep.returncode == 0, sweep.stdout[-2000:] + sweep.stderr[-3000:]
    runs = fold_runs(tracking_server, "slurm-sweep")
    assert sorted((r.data.tags["head"], r.data.tags["fold"], r.info.status) for r in runs) == [
        ("knn", "f0", "FINISHED"), ("logreg", "f0", "FINISHED")], "every fold once, on Slurm"
    job_logs = "".join(p.read_text() for p in (tmp_path / "logs" / "multiruns").rglob("*_log.out"))
    misses = [int(m) for m in MISSES.findall(job_logs)]
    assert len(misses) == 2 and sum(misses) == 0, "the array stored everything the sweep's jobs read"
    ids = job_ids(tmp_path / "logs" / "multiruns")
    settled(slurm, ids)  # a job's end reaches the accounting database a moment after its result file
    states = slurm.states(*ids)
    assert len(states) == 2 and set(states.values()) == {"COMPLETED"}, states


def test_a_job_cancelled_with_scancel_is_killed_in_mlflow_and_the_resumed_sweep_finishes_it(
        slurm: SlurmCluster, tracking_server: str, command_server: CommandServer, tmp_path: Path) -> None:
    longer = [*ON_SLURM, *TINY, "head=mlp1", "fold=f0", "trainer.max_epochs=250",
              "mlflow.experiment_name=slurm-cancel"]
    command = leukexp("train", "-m", *longer, root=tmp_path, cluster=slurm, uri=tracking_server)
    env = {**slurm.env, "CI": "true"}
    with open(tmp_path / "sweep.log", "w") as log:
        sweep = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT,
                                 start_new_session=True)
        deadline, victim = time.time() + 300, None
        while time.time() < deadline and victim is None:
            running = [run for run in fold_runs(tracking_server, "slurm-cancel") if run.info.status == "RUNNING"]
            if running:  # a fold is training: cancel the Slurm job behind it
                queue = slurm.run("squeue", "-h", "-t", "RUNNING", "-o", "%i").stdout.split()
                victim = queue[0] if queue else None
            time.sleep(1)
        assert victim, "no job was running"
        slurm.run("scancel", victim)
        try:
            sweep.wait(300)
        finally:
            if sweep.poll() is None:
                os.killpg(sweep.pid, signal.SIGKILL)
    settled(slurm, [victim.split("_")[0]])
    assert slurm.states(victim.split("_")[0]).get(victim, "").startswith("CANCELLED"), slurm.states(victim)
    statuses = sorted(run.info.status for run in fold_runs(tracking_server, "slurm-cancel"))
    assert "KILLED" in statuses and "RUNNING" not in statuses, statuses

    resumed = command_server.run(command[2:], cwd=tmp_path, env=env, timeout=900)  # without `python -m`
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-3000:]
    runs = fold_runs(tracking_server, "slurm-cancel")
    finished = sorted(r.data.tags["fold"] for r in runs if r.info.status == "FINISHED")
    assert finished == ["f0"] and not [r for r in runs if r.info.status == "RUNNING"], "resumed and finished"
    ids = job_ids(tmp_path / "logs" / "multiruns")
    settled(slurm, ids)
    assert "RUNNING" not in set(slurm.states(*ids).values())
