"""The run plan: the composed config read once into frozen, typed settings."""

import dataclasses

import pytest

from leukexp.config.plan import RunPlan


def test_the_plan_is_typed_and_frozen(compose_plan) -> None:
    plan = compose_plan("features.batch_size=8", "training.early_stopping_patience=3",
                        "evaluation.calibration=temperature")
    assert isinstance(plan, RunPlan)
    assert plan.features.batch_size == 8 and plan.features.num_workers == "auto" and plan.features.storage == "float32"
    assert plan.training.early_stopping_patience == 3 and plan.evaluation.calibrate
    assert plan.model.choice == "efficientnet_lite0" and plan.head.choice == "mlp1" and plan.stain.choice == "none"
    with pytest.raises(dataclasses.FrozenInstanceError):
        plan.seed = 7
    with pytest.raises(TypeError):
        plan.head.node["hidden"] = (1,)
    values = plan.head.values()
    values["hidden"] = [1]
    assert plan.head.get("hidden") == [128], "a component's values are a copy"


def test_settings_missing_from_a_config_take_the_schema_default(compose_plan) -> None:
    plan = compose_plan("~features.storage", "~evaluation.calibration")
    assert plan.features.storage == "float32" and plan.evaluation.calibration == "none"


def test_the_external_set_is_resolved_at_the_door(compose_plan, tmp_path) -> None:
    plan = compose_plan("evaluation.external=synthetic_b")
    assert plan.evaluation.external["domain"] == "B"
    assert plan.evaluation.external["cache_dir"] == str(tmp_path / "cache" / "synthetic")
    assert compose_plan().evaluation.external is None


def test_another_fold_changes_the_fold_alone(compose_plan) -> None:
    plan = compose_plan("fold=f1")
    third = plan.for_fold(3)
    assert third.fold.get("index") == 3 and third.fold.get("name") == "f3"
    assert plan.fold.get("index") == 1, "the plan itself is unchanged"
    assert third.identity == plan.identity and third.head == plan.head


def test_params_and_config_yaml_are_written_from_the_plan_with_credentials_redacted(compose_plan) -> None:
    plan = compose_plan("mlflow.tracking_uri=http://user:hunter2@localhost:5000", "head.dropout=0.25")
    text = plan.config_yaml()
    assert "hunter2" not in text and "dropout: 0.25" in text
    from leukexp.tracking.store import flatten

    params = flatten(plan.plain())
    assert params["head.dropout"] == "0.25" and "hunter2" not in params["mlflow.tracking_uri"]


def test_the_identity_is_read_once_with_the_plan(compose_plan) -> None:
    plain, svm = compose_plan().identity, compose_plan("head=svm").identity
    assert "head=mlp1" in plain.cv_group.split() and "head=svm" in svm.cv_group.split()
    assert svm.name == "svm" and plain.name == "default"
