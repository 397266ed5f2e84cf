"""leukexp on a real local Ray cluster (`ray start --head`, `tests/engines.py`): `leukexp-extract --ray-tasks`,
then a head sweep through hydra-ray-launcher (`hydra/launcher=ray`) against a real `mlflow server`; a job whose
Ray worker is stopped mid-fold ends KILLED in MLflow and the sweep run again finishes it. Skipped, saying why, only
where Ray is not installed (`make test` installs `leukexp[ray]`)."""

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from engines import RayCluster, fold_runs, wait_for
from forkserver import CommandServer

from leukexp.commands import extract
from leukexp.config.compose import compose_train
from leukexp.features.cache import FeatureCache
from leukexp.sweeps.ray_cluster import task_error

on_the_cluster = pytest.mark.xdist_group("ray")  # one cluster: its tests on one pytest worker

TINY = ["model=timm", "model.name=test_efficientnet", "model.pretrained=false", "model.input_size=64",
        "data.counts={ALL:8,HLT:8}", "data.image_size=64", "task=binary", "augmentation=flips",
        "fold.n_splits=2", "evaluation.cam_panel=false"]
MISSES = re.compile(r"feature cache: \d+ hits, (\d+) misses")
SHARD_LINE = re.compile(r"shard (\d)/2: ([\d,]+) views needed, ([\d,]+) computed")


@pytest.fixture(scope="module")
def ray_cluster():
    why = RayCluster.why_not()
    if why:
        pytest.skip(why)
    cluster = RayCluster(cpus=2).start()
    yield cluster
    cluster.stop()


def leukexp(module: str, *arguments: str, root: Path, uri: str) -> list[str]:
    """A leukexp command's module and arguments (for the command server; `python -m` before it for a process)."""
    return [f"leukexp.commands.{module}", *arguments, f"paths.root_dir={root}", f"mlflow.tracking_uri={uri}"]


@pytest.mark.slow
@on_the_cluster
def test_extraction_as_ray_tasks_then_a_head_sweep_on_ray(ray_cluster: RayCluster, tracking_server: str,
                                                          command_server: CommandServer, tmp_path: Path) -> None:
    env = {**ray_cluster.env, "CI": "true"}
    extract = command_server.run(leukexp("extract", "--ray-tasks", "2", *TINY, root=tmp_path, uri=tracking_server),
                                 cwd=tmp_path, env=env, timeout=600)
    assert extract.returncode == 0, extract.stdout[-2000:] + extract.stderr[-3000:]
    shards = {int(index): (int(needed.replace(",", "")), int(computed.replace(",", "")))
              for index, needed, computed in SHARD_LINE.findall(extract.stdout)}
    (folder,) = [f for f in (tmp_path / "cache" / "features").iterdir() if f.is_dir()]
    entries = FeatureCache(folder.parent, folder.name).entry_count()
    assert sorted(shards) == [0, 1] and entries > 16, extract.stdout[-2000:]
    assert sum(computed for _, computed in shards.values()) == entries, "the two Ray tasks split the study, once each"
    assert all(needed > 0 for needed, _ in shards.values()), "each task had images of its own"
    workers = set(re.findall(r"\(shard (\d)/2 pid=(\d+)\)", extract.stdout + extract.stderr))
    assert {index for index, _ in workers} == {"0", "1"} and len({pid for _, pid in workers}) == 2, \
        "each shard ran as a Ray task in a worker process of its own"

    sweep = command_server.run(leukexp("train", "-m", "hydra/launcher=ray", *TINY, "head=logreg,knn", "fold=f0",
                                       "mlflow.experiment_name=ray-sweep", root=tmp_path, uri=tracking_server),
                               cwd=tmp_path, env=env, timeout=900)
    output = sweep.stdout + sweep.stderr
    assert sweep.returncode == 0, sweep.stdout[-2000:] + sweep.stderr[-3000:]
    assert "Ray Launcher is launching 2 jobs" in output and "Connecting to existing Ray cluster" in output
    assert len(set(re.findall(r"\(_run_job pid=(\d+)\)", output))) == 2, "each job in a worker process of its own"
    runs = fold_runs(tracking_server, "ray-sweep")
    assert sorted((r.data.tags["head"], r.data.tags["fold"], r.info.status) for r in runs) == [
        ("knn", "f0", "FINISHED"), ("logreg", "f0", "FINISHED")], "every fold once, on Ray"
    misses = [int(m) for m in MISSES.findall(output)]
    assert len(misses) == 2 and sum(misses) == 0, "the Ray tasks stored everything the sweep's jobs read"
    assert ray_cluster.workers("_run_job") == [], "no job left running on the cluster"


@pytest.mark.slow
@on_the_cluster
def test_a_job_stopped_on_ray_is_killed_in_mlflow_and_the_sweep_run_again_finishes_it(
        ray_cluster: RayCluster, tracking_server: str, command_server: CommandServer, tmp_path: Path) -> None:
    command = leukexp("train", "-m", "hydra/launcher=ray", *TINY, "head=mlp1", "fold=f0", "trainer.max_epochs=250",
                      "mlflow.experiment_name=ray-stop", root=tmp_path, uri=tracking_server)
    env = {**ray_cluster.env, "CI": "true"}
    with open(tmp_path / "sweep.log", "w") as log:
        sweep = subprocess.Popen([sys.executable, "-m", *command], cwd=tmp_path, env=env, stdout=log,
                                 stderr=subprocess.STDOUT, start_new_session=True)
        try:
            wait_for(lambda: any(run.info.status == "RUNNING" for run in fold_runs(tracking_server, "ray-stop")), 300,
                     "a training fold")
            (worker,) = ray_cluster.workers("_run_job")
            os.kill(worker, signal.SIGTERM)  # what a node's shutdown does to its workers
            sweep.wait(300)
        finally:
            if sweep.poll() is None:
                os.killpg(sweep.pid, signal.SIGKILL)
    log_text = (tmp_path / "sweep.log").read_text()
    assert sweep.returncode != 0, log_text[-3000:]
    statuses = sorted(run.info.status for run in fold_runs(tracking_server, "ray-stop"))
    assert statuses == ["KILLED"], (statuses, log_text[-3000:])

    resumed = command_server.run(command, cwd=tmp_path, env=env, timeout=900)
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-3000:]
    runs = fold_runs(tracking_server, "ray-stop")
    assert sorted(run.info.status for run in runs) == ["FINISHED", "KILLED"], "run again, the fold finished"
    wait_for(lambda: ray_cluster.workers("_run_job") == [], 30, "the cluster's jobs' end")


def test_the_ray_launcher_joins_a_running_cluster_with_a_cpu_and_a_fresh_process_per_job(recwarn) -> None:
    if RayCluster.why_not().startswith("Ray not installed"):
        pytest.skip(RayCluster.why_not())
    launcher = compose_train(["hydra/launcher=ray"], return_hydra_config=True).hydra.launcher
    assert launcher._target_ == "hydra_plugins.hydra_ray_launcher.ray_launcher.RayLauncher"
    assert dict(launcher.ray.init) == {"address": None, "object_store_memory": None}, "no store size a join refuses"
    assert dict(launcher.ray.remote) == {"num_cpus": 1, "num_gpus": 0, "max_calls": 1}
    assert not [w for w in recwarn if "ConfigStore schema" in str(w.message)], "no schema matched by name"
    custom = compose_train(["hydra/launcher=ray", "hydra.launcher.ray.remote.num_gpus=1",
                            "hydra.launcher.ray.init.address=10.0.0.1:6379"], return_hydra_config=True).hydra.launcher
    assert custom.ray.remote.num_gpus == 1 and custom.ray.init.address == "10.0.0.1:6379"


NOT_COUNTS = "--ray-tasks must be at least 1, --ray-cpus above 0 and --ray-gpus 0 or more"


@pytest.mark.parametrize(("arguments", "message"), [
    (["--ray-tasks", "2", "--shard", "1/2"],
     "--shard 1/2 with --ray-tasks 2: the Ray tasks are the shards; give one of the two"),
    (["--ray-tasks", "-1"], NOT_COUNTS),
    (["--ray-tasks", "2", "--ray-cpus", "0"], NOT_COUNTS),
    (["--ray-tasks", "2", "--ray-gpus", "-1"], NOT_COUNTS),
])
def test_ray_task_options_that_cannot_work_are_one_line(arguments: list[str], message: str,
                                                        capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as stop:
        extract.main(arguments)
    assert stop.value.code == 2
    assert capsys.readouterr().err.strip().splitlines() == [f"leukexp-extract: error: {message}"]


def test_without_ray_the_option_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch,
                                                       capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray raises ImportError
    with pytest.raises(SystemExit) as stop:
        extract.main(["--ray-tasks", "2"])
    assert stop.value.code == 2
    assert "--ray-tasks needs Ray, which is not installed: pip install 'leukexp[ray]'" in capsys.readouterr().err


def test_a_failed_task_is_its_own_error_in_one_line() -> None:
    ray = pytest.importorskip("ray")
    error = ray.exceptions.RayTaskError("call_in_folder", "Traceback (most recent call last):\n  ...\n",
                                        OSError(28, "No space left on device"))
    assert task_error(error) == "OSError: [Errno 28] No space left on device"
    assert task_error(ray.exceptions.WorkerCrashedError()).startswith("The worker died unexpectedly")
