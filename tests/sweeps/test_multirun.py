"""Multiruns as a user launches them: parent/child runs, aggregates, parallel launchers, resume, failures."""

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from forkserver import CommandServer
from mlflow.tracking import MlflowClient

from leukexp.report.runs import load_runs
from leukexp.report.sections import write_report
from leukexp.report.tables import per_fold_tables, summary_table
from leukexp.sweeps import multirun as sweep_module
from leukexp.vocabulary import KIND_TAG, NOTE_CONTENT, PARENT_TAG, STUDY_TAG, TEST_ACC, cv_metric

TINY = ["model=timm", "model.name=test_efficientnet", "model.pretrained=false", "model.input_size=64",
        "data.counts={ALL:8,HLT:8}", "data.image_size=64", "task=binary", "augmentation=none",
        "trainer.max_epochs=2", "fold.n_splits=2", "evaluation.cam_panel=false"]  # maps: test_cam.py, test_pipeline.py
SWEEP = ["head=mlp1,svm", "fold=f0,f1"]


@pytest.mark.parametrize(("requested", "parallel_jobs", "expected"), [
    (3, 1, 3), (None, 1, None), (None, 2, 8), (None, 3, 5), (None, 32, 1), (None, -1, 1), (1, 2, 1)])
def test_job_threads_share_the_cores(monkeypatch: pytest.MonkeyPatch, requested: int | None, parallel_jobs: int,
                                     expected: int | None) -> None:
    """On 16 usable cores: two jobs get 8 threads each, three get 5, more jobs than cores still one."""
    monkeypatch.setattr(sweep_module, "usable_cores", lambda: 16)
    assert sweep_module.job_threads(requested, parallel_jobs) == expected


def test_the_plan_reads_how_hydra_launched_the_job(monkeypatch: pytest.MonkeyPatch) -> None:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from leukexp.config.plan import LaunchSettings

    assert LaunchSettings.of_hydra_job() == LaunchSettings(multirun=False, parallel_jobs=1), "outside a Hydra app"

    class Job:
        mode, launcher = RunMode.MULTIRUN, {"n_jobs": 3}

    monkeypatch.setattr(HydraConfig, "initialized", staticmethod(lambda: True))
    monkeypatch.setattr(HydraConfig, "get", staticmethod(lambda: Job))
    assert LaunchSettings.of_hydra_job() == LaunchSettings(multirun=True, parallel_jobs=3)
    Job.mode = RunMode.RUN
    assert LaunchSettings.of_hydra_job() == LaunchSettings(), "a single run resumes nothing, shares no cores"


def test_swept_keys_from_the_command_line_and_the_sweeper() -> None:
    keys = sweep_module.swept(["head=mlp1,svm", "fold=f0,f1", "task=binary", "model.input_size=64"],
                              {"model": "inception_v3,senet154", "trainer.max_epochs": "3"})
    assert keys == ["head", "fold", "model"]


def sweep(server: CommandServer, root: Path, *overrides: str, timeout: int = 600) -> subprocess.CompletedProcess:
    """`leukexp-train -m TINY overrides` in `root`, run to its end (as a child of the preloaded command server)."""
    return server.run(["leukexp.commands.train", "-m", *TINY, *overrides], cwd=root, timeout=timeout,
                      env={**os.environ, "CI": "true"})


def client_for(root: Path) -> tuple[MlflowClient, str]:
    client = MlflowClient(f"sqlite:///{root}/mlruns/mlflow.db")
    return client, client.get_experiment_by_name("leukexp").experiment_id


def runs_by_kind(root: Path) -> tuple[list, list]:
    client, experiment = client_for(root)
    runs = client.search_runs([experiment], max_results=1000)
    parents = [r for r in runs if r.data.tags.get(KIND_TAG) == "cv"]
    folds = [r for r in runs if r.data.tags.get(KIND_TAG) == "fold"]
    return parents, folds


def assert_complete_study(root: Path, n_configs: int = 2, n_folds: int = 2) -> None:
    parents, folds = runs_by_kind(root)
    assert len(parents) == n_configs
    finished = [r for r in folds if r.info.status == "FINISHED"]
    keys = [(r.data.tags["cv_group"], r.data.tags["fold"]) for r in finished]
    assert len(keys) == len(set(keys)) == n_configs * n_folds, "one finished run per configuration and fold"
    for parent in parents:
        children = [r for r in finished if r.data.tags[PARENT_TAG] == parent.info.run_id]
        assert sorted(r.data.tags["fold"] for r in children) == ["f0", "f1"]
        assert {r.data.tags["cv_group"] for r in children} == {parent.data.tags["cv_group"]}
        assert "fold=" not in parent.data.tags["cv_group"]
        assert parent.info.status == "FINISHED"
        accuracies = np.array([r.data.metrics[TEST_ACC] for r in children])
        assert parent.data.metrics[cv_metric(TEST_ACC, "mean")] == pytest.approx(accuracies.mean())
        assert parent.data.metrics[cv_metric(TEST_ACC, "std")] == pytest.approx(accuracies.std(ddof=1))
        f1 = np.array([r.data.metrics["test/f1_macro"] for r in children])
        assert parent.data.metrics["cv/test/f1_macro_mean"] == pytest.approx(f1.mean())
        assert parent.data.metrics["cv/test/acc_ci95_low"] <= accuracies.mean() <= parent.data.metrics[
            "cv/test/acc_ci95_high"]
        client, _ = client_for(root)
        artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
        assert {"cv_folds.csv", "cv_confusion_matrix.png", "cv_roc.png"} <= artifacts
        # the UI: a parent named by what varies, its folds named after it, its page holding the fold table
        name = parent.info.run_name
        assert parent.data.tags["head"] in name.split(" "), name
        assert sorted(r.info.run_name for r in children) == [f"{name} · f0", f"{name} · f1"]
        note = parent.data.tags[NOTE_CONTENT]
        assert f"**{accuracies.mean():.4f}**" in note and note.count("\n| f") - note.count("\n| fold") == n_folds
    assert len({p.info.run_name for p in parents}) == len(parents), "names are unique in the experiment"


@pytest.mark.slow
def test_basic_sweep_builds_parents_children_and_aggregates_then_reports(command_server: CommandServer,
                                                                        tmp_path: Path) -> None:
    result = sweep(command_server, tmp_path, *SWEEP)
    assert result.returncode == 0, result.stderr[-3000:]
    assert_complete_study(tmp_path)
    parents, folds = runs_by_kind(tmp_path)
    assert sorted(p.info.run_name for p in parents) == ["mlp1", "svm"], "only what the sweep varies"
    epochs = {p.info.run_name: sorted(k for k in p.data.metrics if "epoch" in k) for p in parents}
    assert epochs["svm"] == [] and "cv/best/epoch_mean" in epochs["mlp1"], "no epoch numbers for a head without epochs"
    tags = folds[0].data.tags
    assert {"model", "head", "task", "fold", "augmentation", "data", "protocol", "seed", "git_commit"} <= set(tags)

    client, _ = client_for(tmp_path)
    runs = load_runs(client, "leukexp")
    summary = summary_table(runs.folds)
    assert sorted(summary["configuration"]) == ["head=mlp1", "head=svm"]
    for config, table in per_fold_tables(runs.folds).items():
        mine = [r for r in folds if f"head={r.data.tags['head']}" == config]
        expected = np.mean([r.data.metrics[TEST_ACC] for r in mine])
        assert table.loc["test_acc", "Average"] == pytest.approx(expected)
        assert summary.set_index("configuration").loc[config, "mean"] == pytest.approx(expected)
    report = write_report(runs, tmp_path / "report", "leukexp", compare=[("head=mlp1", "head=svm")])
    text = report.read_text()
    assert "## Summary of every configuration" in text and "fold noise" in text
    assert (tmp_path / "report" / "comparison.png").is_file() and (tmp_path / "report" / "per_class_f1.png").is_file()

    env = {**os.environ, "CI": "true"}
    cli = command_server.run(["leukexp.commands.report", "--experiment", "leukexp", "--out",
                              str(tmp_path / "cli-report"), "--filter", "tags.head='svm'"], cwd=tmp_path, env=env,
                             timeout=120)
    assert cli.returncode == 0, cli.stderr
    assert "1 configurations, 2 fold runs" in cli.stdout
    missing = command_server.run(["leukexp.commands.report", "--experiment", "nope"], cwd=tmp_path, env=env,
                                 timeout=120)
    assert missing.returncode == 2 and "Traceback" not in missing.stderr
    assert "leukexp-report: error: --experiment nope: not in this store" in missing.stderr


@pytest.mark.slow
def test_submitit_workers_share_a_tracking_server_and_compute_each_embedding_once(tmp_path: Path) -> None:
    """The distributed path: submitit's local executor (Slurm's code path) runs the folds as parallel processes that
    log to a real `mlflow server` over HTTP and share one feature cache folder. Where a real one-node Slurm cluster
    can be started, `test_slurm_cluster.py` runs the same checks (and more) through Slurm itself, and this one, the
    same submitit code path without the scheduler, gives its time back to the suite."""
    from engines import SlurmCluster

    if not SlurmCluster.not_installable():
        pytest.skip("the same path runs on a real Slurm cluster in tests/sweeps/test_slurm_cluster.py")
    from conftest import free_port, start_server, stop
    from leukexp.features.cache import FeatureCache

    port = free_port()
    server = start_server(tmp_path, port)
    uri = f"http://127.0.0.1:{port}"
    try:
        result = subprocess.run(
            [sys.executable, "-m", "leukexp.commands.train", "-m", *TINY, "head=svm", "fold=f0,f1",
             "hydra/launcher=submitit_local", "evaluation.cam_panel=false"],
            cwd=tmp_path, capture_output=True, text=True, timeout=600,
            env={**os.environ, "CI": "true", "MLFLOW_TRACKING_URI": uri})
        assert result.returncode == 0, result.stderr[-3000:]
        client = MlflowClient(uri)
        experiment = client.get_experiment_by_name("leukexp").experiment_id
        runs = client.search_runs([experiment], max_results=100)
        folds = [r for r in runs if r.data.tags.get(KIND_TAG) == "fold"]
        parents = [r for r in runs if r.data.tags.get(KIND_TAG) == "cv"]
        assert sorted((r.data.tags["head"], r.data.tags["fold"], r.info.status) for r in folds) == [
            ("svm", "f0", "FINISHED"), ("svm", "f1", "FINISHED")], "every fold once"
        (parent,) = parents
        mean = np.mean([r.data.metrics[TEST_ACC] for r in folds if r.data.tags[PARENT_TAG] == parent.info.run_id])
        assert parent.info.status == "FINISHED" and parent.data.tags[STUDY_TAG] == "complete"
        assert parent.data.metrics[cv_metric(TEST_ACC, "mean")] == pytest.approx(mean), "aggregated over both"
        logs = "".join(p.read_text() for p in (tmp_path / "logs" / "multiruns").rglob("*_log.out"))
        misses = [int(m) for m in re.findall(r"feature cache: \d+ hits, (\d+) misses", logs)]
        (folder,) = [f for f in (tmp_path / "cache" / "features").iterdir() if f.is_dir()]
        entries = FeatureCache(folder.parent, folder.name).entry_count()
        assert len(misses) == 2 and sum(misses) == entries == 16, "each image embedded once in all"
    finally:
        stop(server)


@pytest.mark.slow
def test_resume_after_the_sweep_is_killed(command_server: CommandServer, tmp_path: Path) -> None:
    longer = ["head=mlp1", "fold=f0,f1", "trainer.max_epochs=60"]  # long enough jobs to kill one mid-way
    command = [sys.executable, "-m", "leukexp.commands.train", "-m", *TINY, *longer]
    log = tmp_path / "first-sweep.log"
    with open(log, "w") as output:
        process = subprocess.Popen(command, cwd=tmp_path, stdout=output, stderr=subprocess.STDOUT,
                                   start_new_session=True, env={**os.environ, "CI": "true", "PYTHONUNBUFFERED": "1"})
        # watch the sweep's own output (not the store: reading SQLite while jobs write it adds lock contention)
        deadline = time.time() + 300
        while time.time() < deadline and process.poll() is None and "open the UI" not in log.read_text():
            time.sleep(0.2)
        assert process.poll() is None, f"the sweep ended before it could be killed:\n{log.read_text()[-3000:]}"
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    assert "open the UI" in log.read_text(), "one fold run finished (and was logged) before the kill"
    before = {r.info.run_id for r in runs_by_kind(tmp_path)[1] if r.info.status == "FINISHED"}

    result = sweep(command_server, tmp_path, *longer)
    assert result.returncode == 0, result.stderr[-3000:]
    assert_complete_study(tmp_path, n_configs=1)
    after = {r.info.run_id for r in runs_by_kind(tmp_path)[1] if r.info.status == "FINISHED"}
    assert before <= after, "finished folds were kept, not re-run"
    assert "already FINISHED" in result.stdout
    assert not [r for r in runs_by_kind(tmp_path)[1] if r.info.status == "RUNNING"]


@pytest.mark.slow
def test_two_identical_sweeps_from_two_roots_started_together_on_one_new_store(tmp_path: Path) -> None:
    # two users (two project roots, each with its own cache and run folders) sharing one store: one lock, beside it
    (tmp_path / "mlruns").mkdir()
    command = [sys.executable, "-m", "leukexp.commands.train", "-m", *TINY, "head=svm", "fold=f0,f1",
               f"mlflow.tracking_uri=sqlite:///{tmp_path}/mlruns/mlflow.db"]
    env = {**os.environ, "CI": "true"}
    roots = [tmp_path / "alice", tmp_path / "bob"]
    for root in roots:
        root.mkdir()
    sweeps = [subprocess.Popen(command, cwd=root, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               env=env) for root in roots]
    outputs = [process.communicate(timeout=600)[0] for process in sweeps]
    for process, output in zip(sweeps, outputs, strict=True):
        assert process.returncode == 0, output[-3000:]
        for symptom in ("Online migration", "duplicate column", "already exists", "Traceback"):
            assert symptom not in output, output[-3000:]
    assert_complete_study(tmp_path, n_configs=1)
    together = "".join(outputs)
    assert "running in" in together or "already FINISHED" in together, "one sweep left a fold to the other"
