"""The experiment's saved ranking view: its state, its refresh, and a real multi-key sweep read through the UI's API."""

from __future__ import annotations

import json
import os
import pkgutil
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from mlflow_ui import read_view
from omegaconf import OmegaConf

import leukexp
from conftest import free_port, start_server, stop
from leukexp.sweeps.multirun import compared_metric
from leukexp.tracking.views import (
    RANKING_VIEW_ID,
    VIEW_TAG_PREFIX,
    column,
    ranking_state,
    save_ranking_view,
    view_url,
)
from leukexp.vocabulary import DATA_HASH_TAG, KIND_TAG, RESULT_TAG, TEST_ACC


def test_the_ranking_shows_parents_sorted_by_the_compared_metric_with_the_deciding_columns() -> None:
    state = ranking_state(TEST_ACC, ["model", "model.pooling"])
    assert state["searchFilter"] == "tags.`leukexp.kind` = 'cv'" and state["orderByAsc"] is False
    assert state["orderByKey"] == "metrics.`cv/test/acc_mean`"
    assert state["selectedColumns"] == [
        "tags.`leukexp.result`", "metrics.`cv/test/acc_mean`", "metrics.`cv/test/acc_std`",
        "metrics.`cv/test/acc_ci95_low`", "metrics.`cv/test/acc_ci95_high`", "metrics.`cv/test/balanced_acc_mean`",
        "metrics.`cv/test/ece_mean`", "tags.`model`", "params.`model.pooling`", "metrics.`cv/folds_finished`",
        "attributes.`Dataset`"]
    search = ranking_state("val/loss", ["optimizer.lr"], maximize=False)
    assert search["orderByKey"] == "metrics.`cv/val/loss_mean`" and search["orderByAsc"] is True
    assert "metrics.`cv/val/balanced_acc_mean`" in search["selectedColumns"]


def test_the_compared_metric_is_a_searchs_objective_or_test_accuracy() -> None:
    plain = OmegaConf.create({"hydra": {"sweeper": {"params": None}}})
    search = OmegaConf.create({"hydra": {"sweeper": {"objective": "cv/best/val/acc_mean", "direction": "maximize"}}})
    loss = OmegaConf.create({"hydra": {"sweeper": {"objective": "cv/val/loss_mean", "direction": "minimize"}}})
    assert compared_metric(plain) == (TEST_ACC, True)
    assert compared_metric(search) == ("best/val/acc", True)
    assert compared_metric(loss) == ("val/loss", False)
    bags = OmegaConf.create({"hydra": {"sweeper": {}}, "bags": {"_target_": "leukexp.data.bags.ImageBags"},
                             "evaluation": {"rank_by": "auto"}})
    assert compared_metric(bags) == ("test/auc_macro", True), "a bag study ranks by AUROC"
    images = OmegaConf.create({"hydra": {"sweeper": {}}, "bags": {"_target_": "leukexp.data.bags.NoBags"},
                               "evaluation": {"rank_by": "auto"}})
    assert compared_metric(images) == (TEST_ACC, True)
    chosen = OmegaConf.merge(images, {"evaluation": {"rank_by": "test/ece_raw"}})
    assert compared_metric(chosen) == ("test/ece_raw", False), "a calibration error: lowest first"


def test_a_view_is_refreshed_never_duplicated(tmp_path: Path) -> None:
    client = MlflowClient(f"sqlite:///{tmp_path}/store.db")
    experiment = client.create_experiment("views")
    save_ranking_view(client, experiment, TEST_ACC, ["head"])
    first = json.loads(client.get_experiment(experiment).tags[VIEW_TAG_PREFIX + RANKING_VIEW_ID])
    save_ranking_view(client, experiment, TEST_ACC, ["head", "stain"])
    tags = client.get_experiment(experiment).tags
    assert [k for k in tags if k.startswith(VIEW_TAG_PREFIX)] == [VIEW_TAG_PREFIX + RANKING_VIEW_ID]
    again = json.loads(tags[VIEW_TAG_PREFIX + RANKING_VIEW_ID])
    assert again["createdAt"] == first["createdAt"] and again["updatedAt"] >= first["updatedAt"]
    name, state = read_view(tags)
    assert name == "leukexp ranking: cv/test/acc_mean" and "params.`stain`" in state["selectedColumns"]
    assert view_url("http://h:5000/", experiment).endswith(f"/runs?viewStateShareKey={RANKING_VIEW_ID}")


def strict_deprecations() -> dict[str, str]:
    """An environment in which Hydra's and MLflow's deprecation warnings are errors: Hydra's own switch, every
    FutureWarning (MLflow's deprecation category), and DeprecationWarnings attributed to leukexp's code (a call of
    something deprecated, with the warning's stack level pointing at the caller)."""
    modules = ["leukexp", "__main__", "hydra_plugins.leukexp_search"]
    modules += [m.name for m in pkgutil.walk_packages(leukexp.__path__, "leukexp.")]
    warnings = ["error::FutureWarning", *(f"error::DeprecationWarning:{m}" for m in modules)]
    return {"HYDRA_DEPRECATION_WARNINGS_AS_ERRORS": "1", "PYTHONWARNINGS": ",".join(warnings)}


def ui_api(base: str, path: str, body: dict | None = None) -> dict:
    """A call of the MLflow UI's own API (`/ajax-api/2.0/mlflow/...`), as the runs page makes it."""
    request = urllib.request.Request(f"{base}/ajax-api/2.0/mlflow/{path}", method="POST" if body else "GET",
                                     data=json.dumps(body).encode() if body else None,
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def holds(run: dict, key: str) -> bool:
    """Whether a run (the API's JSON) has a value for a runs-table column key."""
    kind, name = key.split(".", 1)
    name = name.strip("`")
    if kind == "attributes":
        return name == "Dataset" and bool(run.get("inputs", {}).get("dataset_inputs"))
    entries = run["data"].get(kind, [])
    return any(entry["key"] == name for entry in entries)


@pytest.mark.slow
def test_a_multi_key_sweep_opens_ranked_in_the_saved_view(tmp_path: Path) -> None:
    # model.pooling x head x 2 folds, with Hydra's and MLflow's deprecations as errors, two parallel joblib jobs
    # (the local2 launcher) whose extraction starts DataLoader workers inside the joblib workers
    sweep = subprocess.run(
        [sys.executable, "-m", "leukexp.commands.train", "-m", "model=timm", "model.name=test_efficientnet",
         "model.pretrained=false", "model.input_size=64", "data.counts={ALL: 8, HLT: 8}", "data.image_size=64",
         "task=binary", "fold.n_splits=2", "fold=f0,f1", "augmentation=none", "head=logreg,svm",
         "model.pooling=avg,avgstd", "mlflow.experiment_name=views", "hydra/launcher=local2",
         "features.num_workers=1", "evaluation.cam_panel=false"],
        cwd=tmp_path, capture_output=True, text=True, timeout=600,
        env={**os.environ, "CI": "true", **strict_deprecations()})
    assert sweep.returncode == 0, sweep.stdout[-2000:] + sweep.stderr[-3000:]
    assert "Warning" not in sweep.stderr, sweep.stderr[-3000:]
    assert "Joblib" in sweep.stdout + sweep.stderr and "pickle error" not in sweep.stdout + sweep.stderr

    port = free_port()
    server = start_server(tmp_path, port, backend=f"sqlite:///{tmp_path}/mlruns/mlflow.db")
    base = f"http://127.0.0.1:{port}"
    try:
        experiment = ui_api(base, "experiments/get-by-name?experiment_name=views")["experiment"]
        tags = {t["key"]: t["value"] for t in experiment.get("tags", [])}
        name, state = read_view(tags)  # as the UI's Views menu lists it and its runs page reads it
        assert name == "leukexp ranking: cv/test/acc_mean"
        order = f"{state['orderByKey']} {'ASC' if state['orderByAsc'] else 'DESC'}"
        runs = ui_api(base, "runs/search", {"experiment_ids": [experiment["experiment_id"]],
                                            "filter": state["searchFilter"], "order_by": [order],
                                            "run_view_type": "ACTIVE_ONLY", "max_results": 100})["runs"]
    finally:
        stop(server)
    assert len(runs) == 4 and all(
        {t["key"]: t["value"] for t in r["data"]["tags"]}[KIND_TAG] == "cv" for r in runs), "the 4 parents only"
    means = [{m["key"]: m["value"] for m in r["data"]["metrics"]}["cv/test/acc_mean"] for r in runs]
    assert means == sorted(means, reverse=True), "ranked by the compared metric"
    assert column("params", "model.pooling") in state["selectedColumns"]
    assert column("tags", "head") in state["selectedColumns"]
    missing = [(r["info"]["run_name"], key) for r in runs for key in state["selectedColumns"] if not holds(r, key)]
    assert missing == [], "every column of the view has a value on every parent"

    names = [r["info"]["run_name"] for r in runs]
    assert sorted(names) == ["logreg avg", "logreg avgstd", "svm avg", "svm avgstd"], "what varies, nothing else"
    client = MlflowClient(f"sqlite:///{tmp_path}/mlruns/mlflow.db")
    for run in runs:
        parent = client.get_run(run["info"]["run_id"])
        folds = client.search_runs([parent.info.experiment_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
        assert sorted((f.info.run_name, f.info.status) for f in folds) == [
            (f"{parent.info.run_name} · f0", "FINISHED"), (f"{parent.info.run_name} · f1", "FINISHED")]
        digests = {i.dataset.digest for f in folds for i in f.inputs.dataset_inputs}
        assert [i.dataset.digest for i in parent.inputs.dataset_inputs] == [parent.data.tags[DATA_HASH_TAG]]
        assert digests == {parent.data.tags[DATA_HASH_TAG]}, "the parent's input is its folds' data"
        epochs = [k for k in parent.data.metrics if "epoch" in k]
        assert epochs == [], "sklearn heads have no epochs: no epoch aggregates"
        assert parent.data.tags[RESULT_TAG].startswith("acc ")
