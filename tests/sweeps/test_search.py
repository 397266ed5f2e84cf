"""Config-only search (hydra/sweeper=optuna): the search space, one-line refusals, and real searches that prune,
resume after a kill and show in the store and the report."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from forkserver import CommandServer
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf

from leukexp.sweeps.search import parallel_jobs
from leukexp.vocabulary import BEST, KIND_TAG, PARENT_TAG, TRIAL_STATE_TAG, VAL_ACC, cv_metric

CONFIG = OmegaConf.create({"hydra": {"runtime": {"choices": {"head": "logreg", "model": "efficientnet_lite0"}}},
                           "optimizer": {"lr": 0.001}, "head": {"C": None, "hidden": [128], "dropout": 0.0},
                           "fold": {"index": 0}, "seed": 42})


def test_fold_batches_follow_the_launchers_workers() -> None:
    class Joblib:
        joblib = {"n_jobs": 2}

    class Everything:
        joblib = {"n_jobs": -1}

    class Ray:
        ray_cfg = {"init": {"address": None}, "remote": {"num_cpus": 1}}

    assert (parallel_jobs(object(), 5), parallel_jobs(Joblib(), 5), parallel_jobs(Everything(), 5),
            parallel_jobs(Ray(), 5)) == (1, 2, 5, 5)


TINY = ["model=timm", "model.name=test_efficientnet", "model.pretrained=false", "model.input_size=64",
        "data.counts={ALL:10,HLT:10}", "data.image_size=64", "task=binary", "fold.n_splits=2",
        "evaluation.cam_panel=false"]  # activation maps: tests/inference/test_cam.py, test_pipeline.py


def search(server: CommandServer, root: Path, *overrides: str, space: str = "experiment=search_linear"
           ) -> subprocess.CompletedProcess:
    """`leukexp-train -m <space> TINY overrides` in `root`, run to its end (a child of the preloaded command server)."""
    return server.run(["leukexp.commands.train", "-m", space, *TINY, *overrides], cwd=root, timeout=600,
                      env={**os.environ, "CI": "true"})


def store_runs(root: Path) -> dict[str, list]:
    client = MlflowClient(f"sqlite:///{root}/mlruns/mlflow.db")
    experiment = client.get_experiment_by_name("search_linear").experiment_id
    runs: dict[str, list] = {"search": [], "cv": [], "fold": []}
    for run in client.search_runs([experiment], max_results=1000):
        runs[run.data.tags[KIND_TAG]].append(run)
    return runs


def study(root: Path):
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    (journal,) = (root / "mlruns" / "optuna").glob("*.journal")
    return optuna.load_study(study_name=journal.stem, storage=JournalStorage(JournalFileBackend(str(journal))))


@pytest.mark.slow
def test_a_search_resumes_after_a_kill_continues_and_shows_in_the_store_and_the_report(
        command_server: CommandServer, tmp_path: Path) -> None:
    command = [sys.executable, "-m", "leukexp.commands.train", "-m", "experiment=search_linear", *TINY,
               "hydra.sweeper.n_trials=2"]
    log = tmp_path / "first.log"
    with open(log, "w") as output:
        process = subprocess.Popen(command, cwd=tmp_path, stdout=output, stderr=subprocess.STDOUT,
                                   start_new_session=True, env={**os.environ, "CI": "true", "PYTHONUNBUFFERED": "1"})
        deadline = time.time() + 300  # kill -9 once trial 1 has one finished fold (the third fold run of the search)
        while time.time() < deadline and process.poll() is None and log.read_text().count("open the UI") < 3:
            time.sleep(0.2)
        assert process.poll() is None, log.read_text()[-3000:]
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    resumed = search(command_server, tmp_path, "hydra.sweeper.n_trials=2")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "already FINISHED" in resumed.stdout, "the interrupted trial's finished fold was reused"
    assert sum(t.state.name == "COMPLETE" for t in study(tmp_path).trials) == 2, "the killed trial was redone"

    # the same command, one trial more: the study continues
    again = search(command_server, tmp_path, "hydra.sweeper.n_trials=3")
    assert again.returncode == 0, again.stderr[-3000:]
    assert "2 of 3 trials done" in again.stdout + again.stderr
    assert sum(t.state.name == "COMPLETE" for t in study(tmp_path).trials) == 3
    done = search(command_server, tmp_path, "hydra.sweeper.n_trials=3")  # nothing left to run
    assert done.returncode == 0, done.stderr[-3000:]
    runs = store_runs(tmp_path)
    (search_run,) = runs["search"]
    assert search_run.info.status == "FINISHED", "a finished search run again stays FINISHED"
    assert search_run.data.metrics["search/trials_complete"] == 3
    finished = [r for r in runs["fold"] if r.info.status == "FINISHED"]
    assert len(runs["cv"]) == 3 and len(finished) == 6, "no fold of a trial was run twice"
    for parent in runs["cv"]:
        assert parent.data.tags[PARENT_TAG] == search_run.info.run_id, "trials sit under the search run"
        assert parent.data.tags[TRIAL_STATE_TAG] == "complete"
        assert parent.info.run_name.startswith(("logreg C=", "svm C=")), "named by the sampled values"
        assert cv_metric(BEST + VAL_ACC, "mean") in parent.data.metrics

    report = command_server.run(["leukexp.commands.report", "--experiment", "search_linear", "--out",
                                 str(tmp_path / "report")], cwd=tmp_path, env=dict(os.environ), timeout=300)
    assert report.returncode == 0, report.stderr[-3000:]
    text = (tmp_path / "report" / "report.md").read_text()
    assert "## Search search_linear-search-" in text and "3 trials (3 complete, 0 pruned, 0 failed)" in text
    assert "Parameter importances" in text and list((tmp_path / "report").glob("search_*_trials.png"))


@pytest.mark.slow
def test_a_trial_whose_first_fold_is_clearly_worse_is_pruned(command_server: CommandServer, tmp_path: Path) -> None:
    # an objective that cannot tie: the test samples of a fold (protocol=thesis scores each of 3 views apart, strict
    # scores each image once), maximized; trial 0 thesis, trial 1 strict: below the median at its first fold
    result = search(command_server, tmp_path, "hydra.sweeper.n_trials=2", "hydra.sweeper.objective=cv/test/n_mean",
                    "hydra.sweeper.pruner_startup_trials=1", "augmentation=flips", "head=logreg",
                    "mlflow.experiment_name=search_linear", "protocol=thesis,strict",
                    "hydra.sweeper.enqueue=[{protocol: thesis},{protocol: strict}]", space="hydra/sweeper=optuna")
    assert result.returncode == 0, result.stderr[-3000:]
    states = [t.state.name for t in study(tmp_path).trials]
    assert states == ["COMPLETE", "PRUNED"]
    runs = store_runs(tmp_path)
    pruned = [p for p in runs["cv"] if p.data.tags.get(TRIAL_STATE_TAG) == "pruned"]
    assert len(pruned) == 1
    folds = [r for r in runs["fold"] if r.data.tags[PARENT_TAG] == pruned[0].info.run_id]
    assert len(folds) == 1, "the pruned trial stopped after its first fold"


@pytest.mark.slow
def test_ctrl_c_stops_a_search_and_its_workers_quietly(tmp_path: Path) -> None:
    # two parallel workers (joblib's loky processes), a search far from done; Ctrl-C reaches the whole group
    command = [sys.executable, "-m", "leukexp.commands.train", "-m", "experiment=search_linear", *TINY,
               "hydra/launcher=local2", "hydra.sweeper.n_trials=40"]
    log = tmp_path / "search.log"
    with open(log, "w") as output:
        process = subprocess.Popen(command, cwd=tmp_path, stdout=output, stderr=subprocess.STDOUT,
                                   start_new_session=True, env={**os.environ, "CI": "true", "PYTHONUNBUFFERED": "1"})
        deadline = time.time() + 300
        while time.time() < deadline and process.poll() is None and log.read_text().count("open the UI") < 1:
            time.sleep(0.2)
        assert process.poll() is None, log.read_text()[-3000:]
        os.killpg(process.pid, signal.SIGINT)
        assert process.wait(timeout=120) == 128 + signal.SIGINT
    text = log.read_text()
    assert "Traceback" not in text and "KeyboardInterrupt" not in text, text[-3000:]
    assert text.count("stopped by signal 2") == 1, text[-3000:]
    deadline = time.time() + 10  # a loky worker notices its parent is gone within a few seconds
    while (left := subprocess.run(["pgrep", "-a", "-g", str(process.pid)], capture_output=True, text=True).stdout) \
            and time.time() < deadline:
        time.sleep(0.2)
    assert left == "", f"no worker outlives the search: {left}"
    runs = store_runs(tmp_path)
    assert [r.info.status for group in runs.values() for r in group if r.info.status == "RUNNING"] == []
    assert runs["search"][0].info.status == "KILLED"


def test_a_bad_search_space_stops_before_any_trial(tmp_path: Path) -> None:
    # a dimension on the command line (as a user sweeps any key), whose key does not exist
    command = [sys.executable, "-m", "leukexp.commands.train", "-m", "hydra/sweeper=optuna",
               "head.nope=interval(0,1)", *TINY]
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=120,
                            env={**os.environ, "CI": "true"})
    assert result.returncode == 2, result.stderr[-2000:]
    (line,) = [x for x in result.stderr.splitlines() if x.startswith("leukexp-train: error:")]
    assert "hydra.sweeper.params.head.nope: no such config key" in line and "Traceback" not in result.stderr
    assert (not list(tmp_path.rglob("*.journal")) and not (tmp_path / "logs" / "multiruns").exists()) or not list(
        (tmp_path / "logs").rglob("manifest.csv")), "no trial ran"


class FakeLauncher:
    """A launcher with `n_jobs` workers that records its batches; a job's value is its `optimizer.lr`."""

    def __init__(self, n_jobs: int) -> None:
        self.joblib = {"n_jobs": n_jobs}
        self.batches: list[int] = []

    def launch(self, jobs: list[list[str]], initial_job_idx: int) -> list:
        from hydra.core.utils import JobReturn, JobStatus

        self.batches.append(len(jobs))
        returns = []
        for overrides in jobs:
            job = JobReturn(overrides=overrides, status=JobStatus.COMPLETED)
            job._return_value = float(next(o for o in overrides if o.startswith("optimizer.lr=")).split("=")[1])
            returns.append(job)
        return returns


@pytest.mark.parametrize(("n_jobs", "batches"), [(1, [1] * 8), (2, [2] * 4), (4, [4, 4]), (6, [6, 2])])
def test_trials_run_together_when_the_launcher_has_a_worker_for_each_fold(tmp_path: Path, n_jobs: int,
                                                                          batches: list[int]) -> None:
    from leukexp.sweeps.search import FoldSearch

    config = OmegaConf.merge(CONFIG, {"fold": {"n_splits": 2}, "mlflow": {"enabled": False, "experiment_name": "x"},
                                      "paths": {"root_dir": str(tmp_path)}})
    sweeper = FoldSearch(params={"optimizer.lr": "interval(0.1, 0.9)"}, n_trials=4, pruner="none")
    sweeper.config, sweeper.launcher = config, FakeLauncher(n_jobs)
    sweeper.validate_batch_is_legal = lambda batch: None
    results = sweeper.sweep([])
    assert sweeper.launcher.batches == batches and len(results) == 8
    trials = study(tmp_path).trials
    assert [t.state.name for t in trials] == ["COMPLETE"] * 4
    assert all(t.value == pytest.approx(t.params["optimizer.lr"], rel=1e-5) for t in trials)


