"""A run's identity: what belongs to a configuration's cv_group and what does not."""

import pytest

from leukexp.identity import changes_the_result, cv_group, git_commit


@pytest.mark.parametrize(("key", "counts"), [
    ("fold", False), ("fold.index", False), ("fold.name", False), ("fold.n_splits", True),
    ("fold.val_fraction", True), ("hydra/launcher", False), ("hydra.launcher.n_jobs", False),
    ("mlflow.experiment_name", False), ("paths.root_dir", False), ("sweep.resume", False),
    ("experiment", False), ("training.torch_threads", False), ("features.num_workers", False),
    ("head", False), ("head.hidden", True), ("optimizer.lr", True), ("seed", True), ("trainer.max_epochs", True),
])
def test_which_overrides_change_the_result(key: str, counts: bool) -> None:
    assert changes_the_result(key) is counts


def test_cv_group_is_the_same_for_every_fold_and_differs_by_configuration() -> None:
    choices = {"data": "synthetic", "task": "binary", "augmentation": "none", "protocol": "strict",
               "model": "efficientnet_lite0", "head": "mlp1", "fold": "f0"}
    f0 = cv_group(choices, ["task=binary", "fold=f0", "head.dropout=0.2", "hydra/launcher=joblib"], {}, 42)
    f3 = cv_group(choices | {"fold": "f3"}, ["task=binary", "fold=f3", "head.dropout=0.2"], {}, 42)
    assert f0 == f3
    assert "head.dropout=0.2" in f0.split() and "head=mlp1" in f0.split() and "seed=42" in f0.split()
    assert not any(part.startswith(("fold", "hydra")) for part in f0.split())
    assert cv_group(choices, ["fold.n_splits=3"], {}, 42) != cv_group(choices, [], {}, 42)
    assert cv_group(choices | {"head": "svm"}, [], {}, 42) != cv_group(choices, [], {}, 42)


def test_defaults_fill_groups_without_a_recorded_choice() -> None:
    assert "model=lite" in cv_group({}, [], {"model": "lite"}, 1).split()


def test_git_commit_outside_git(tmp_path) -> None:
    assert git_commit(tmp_path) == "unknown"
