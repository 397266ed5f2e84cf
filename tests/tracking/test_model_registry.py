"""Registering a study's best configuration: which configuration, which fold, and the links back."""

from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from leukexp.errors import LeukexpError
from leukexp.tracking.model_registry import register, select
from leukexp.vocabulary import (
    DATA_HASH_TAG,
    DATASET_DIGEST_TAG,
    DATASET_NAME_TAG,
    DATASET_SOURCE_TAG,
    REGISTRY_METRIC_TAG,
    REGISTRY_PARENT_TAG,
    TEST_ACC,
    cv_metric,
)


def store(root: Path) -> tuple[MlflowClient, str]:
    client = MlflowClient(f"sqlite:///{root}/mlruns/mlflow.db")
    return client, client.get_experiment_by_name("study").experiment_id


def test_the_best_configuration_and_its_fold_closest_to_the_mean(study_store: Path) -> None:
    client, experiment = store(study_store)
    parents = client.search_runs([experiment], "tags.`leukexp.kind` = 'cv'")
    best = max(parents, key=lambda p: p.data.metrics[cv_metric(TEST_ACC, "mean")])
    selection = select(client, experiment)
    assert selection.parent.info.run_id == best.info.run_id
    children = client.search_runs([experiment], f"tags.`mlflow.parentRunId` = '{best.info.run_id}'")
    gaps = {r.data.tags["fold"]: abs(r.data.metrics[TEST_ACC] - selection.mean) for r in children}
    assert gaps[selection.fold] == min(gaps.values())
    assert "closest to that mean" in selection.reason


def test_register_links_the_version_back_to_its_study(study_store: Path) -> None:
    client, experiment = store(study_store)
    version, selection = register(client, experiment, "unit-best")
    assert version == "1"
    stored = client.get_model_version("unit-best", "1")
    assert stored.run_id == selection.run.info.run_id
    assert stored.tags[REGISTRY_PARENT_TAG] == selection.parent.info.run_id
    assert stored.tags["fold"] == selection.fold and stored.tags[REGISTRY_METRIC_TAG] == TEST_ACC
    assert str(client.get_model_version_by_alias("unit-best", "champion").version) == "1"
    # the data: the version's tags name the fold run's dataset input, which its CV parent carries too
    (fold_input,) = client.get_run(selection.run.info.run_id).inputs.dataset_inputs
    parent_inputs = client.get_run(selection.parent.info.run_id).inputs.dataset_inputs
    assert [i.dataset.digest for i in parent_inputs] == [fold_input.dataset.digest], "one input, the folds' digest"
    assert stored.tags[DATASET_DIGEST_TAG] == fold_input.dataset.digest == selection.run.data.tags[DATA_HASH_TAG]
    assert stored.tags[DATASET_NAME_TAG] == fold_input.dataset.name and stored.tags[DATASET_SOURCE_TAG]
    assert register(client, experiment, "unit-best")[0] == "2", "registering again adds a version"
    assert str(client.get_model_version_by_alias("unit-best", "champion").version) == "2", "the alias moves to it"


def test_an_experiment_without_aggregates_is_one_clear_error(tmp_path: Path) -> None:
    client = MlflowClient(f"sqlite:///{tmp_path}/store.db")
    experiment = client.create_experiment("empty")
    with pytest.raises(LeukexpError, match="no configuration has cv/test/acc_mean"):
        select(client, experiment)
