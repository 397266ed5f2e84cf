"""A run's identity: what belongs to a configuration's cv_group and what does not."""

import pytest

from leukexp.config.compose import default_choices
from leukexp.config.identity import changes_the_result, configuration_name, cv_group


@pytest.mark.parametrize(("key", "counts"), [
    ("fold", False), ("fold.index", False), ("fold.name", False), ("fold.n_splits", True),
    ("fold.val_fraction", True), ("hydra/launcher", False), ("hydra.launcher.n_jobs", False),
    ("mlflow.experiment_name", False), ("paths.root_dir", False), ("sweep.resume", False),
    ("experiment", False), ("training.torch_threads", False), ("features.num_workers", False),
    ("head", False), ("head.hidden", True), ("evaluation.cam_panel", False), ("evaluation.tta", True),
    ("optimizer.lr", True), ("seed", True), ("trainer.max_epochs", True),
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


DEFAULTS = {"data": "synthetic", "task": "multiclass", "fold": "f0", "augmentation": "paper", "protocol": "strict",
            "model": "efficientnet_lite0", "head": "mlp1"}


@pytest.mark.parametrize(("choices", "overrides", "swept", "expected"), [
    ({"head": "svm"}, ["head=svm", "fold=f0"], ("head", "fold"), "svm"),
    ({"head": "mlp1"}, ["head=mlp1", "fold=f3"], ("head", "fold"), "mlp1"),
    ({"model": "senet154", "head": "svm"}, ["model=senet154", "head=svm"], ("model", "head"), "senet154 svm"),
    ({"model": "senet154", "head": "svm"}, ["experiment=thesis_heads", "head=svm"], ("head",), "svm"),
    ({"model": "efficientnet_lite2"}, ["model=efficientnet_lite2", "model.pooling=avgstd", "data.root=/tmp/x/smears"],
     ("model.pooling", "model"), "avgstd lite2"),
    ({"model": "resnext101_32x8d"}, ["model=resnext101_32x8d", "model.center_crop=true", "data.root=/tmp/x/smears"],
     (), "rx101 crop=true root=smears"),
    ({"head": "mlp3"}, ["head=mlp3", "head.dropout=0.2", "hydra/launcher=local2"], (), "mlp3 drop=0.2"),
    ({}, [], (), "default"),
    ({}, ["seed=7"], (), "seed=7"),
])
def test_names_say_what_varies_first(choices: dict, overrides: list[str], swept: tuple, expected: str) -> None:
    assert configuration_name(DEFAULTS | choices, overrides, DEFAULTS, "7" if "seed=7" in overrides else 42,
                              swept) == expected


@pytest.mark.parametrize("sweep", [
    {"model": ["efficientnet_lite0", "efficientnet_lite2"], "model.pooling": ["avg", "avgstd"]},
    {"model": ["efficientnet_lite0", "resnext101_32x8d", "senet154"], "head": ["logreg", "mlp1", "mlp3_dropout"],
     "stain": ["none", "macenko", "reinhard"]},
    {"head": ["mlp3"], "head.dropout": ["0.1", "0.25", "0.5"], "optimizer.lr": ["0.001", "0.0001"]},
])
def test_the_first_20_characters_tell_every_configuration_of_a_sweep_apart(sweep: dict[str, list[str]]) -> None:
    import itertools

    constant = ["head=logreg", "task=folders", "data=folder", "data.root=/tmp/pytest/long/path/images",
                "evaluation.tta=flips", "model.stages=all"]
    names = []
    for values in itertools.product(*sweep.values()):
        given = dict(zip(sweep, values, strict=True))
        choices = DEFAULTS | {"head": "logreg", "task": "folders", "data": "folder"} | {
            k: v for k, v in given.items() if "." not in k}
        overrides = [o for o in constant if o.split("=")[0] not in given] + [f"{k}={v}" for k, v in given.items()]
        names.append(configuration_name(choices, overrides, DEFAULTS, 42, tuple(k for k in sweep if len(sweep[k]) > 1)))
    assert len({name[:20] for name in names}) == len(names), names
    assert not any("folder" in name or "flips" in name or "root" in name for name in names), "constant parts left out"


def test_default_choices_come_from_train_yaml() -> None:
    choices = default_choices()
    assert {k: choices[k] for k in ("model", "head", "data", "task")} == {
        "model": "efficientnet_lite0", "head": "mlp1", "data": "synthetic", "task": "multiclass"}


def test_settings_an_experiment_file_changes_count_in_the_identity(compose_cfg) -> None:
    from leukexp.config.identity import implicit_tokens

    strong = compose_cfg("experiment=strong_baseline")
    assert implicit_tokens(strong, []) == ["evaluation.tta=flips", "model.stages=all"]
    assert implicit_tokens(strong, ["model.stages=all"]) == ["evaluation.tta=flips"], "an override is counted once"
    assert implicit_tokens(compose_cfg("model.stages=[2,4]", "model.pooling=gem"), []) == [
        "model.stages=[2,4]", "model.pooling=gem"]
    assert implicit_tokens(compose_cfg(), []) == []


def test_a_stain_chosen_in_an_experiment_file_gets_its_own_configuration(compose_plan, tmp_path) -> None:
    extra = tmp_path / "extra"
    (extra / "experiment").mkdir(parents=True)
    (extra / "experiment" / "stained.yaml").write_text("# @package _global_\ndefaults:\n  - override /stain: macenko\n")
    search = f"hydra.searchpath=[file://{extra}]"
    stained = compose_plan(search, "experiment=stained").identity
    plain = compose_plan(search).identity
    assert "stain=macenko" in stained.cv_group.split() and "stain=none" in plain.cv_group.split()
    assert stained.cv_group != plain.cv_group, "its own CV parent, resume state and finished folds"
    assert not any(part.startswith("experiment") for part in stained.cv_group.split())


def test_a_group_added_through_a_search_path_counts_in_the_identity(compose_plan, tmp_path) -> None:
    extra = tmp_path / "extra"
    (extra / "lens").mkdir(parents=True)
    for name, zoom in (("wide", 1), ("close", 4)):
        (extra / "lens" / f"{name}.yaml").write_text(f"zoom: {zoom}\n")
    search = f"hydra.searchpath=[file://{extra}]"
    wide, close = compose_plan(search, "+lens=wide").identity, compose_plan(search, "+lens=close").identity
    assert "lens=wide" in wide.cv_group.split() and "lens=close" in close.cv_group.split()
    assert wide.cv_group != close.cv_group
    assert "+lens=wide" not in wide.cv_group.split(), "a group's choice is counted once"


def test_every_group_of_conf_but_the_non_identity_ones_identifies_a_configuration(compose_plan) -> None:
    from leukexp.config.identity import config_groups
    from leukexp.vocabulary import NON_IDENTITY_GROUPS

    groups = {part.split("=")[0].split("@")[0] for part in compose_plan().identity.cv_group.split()} - {"seed"}
    composed = {"data", "task", "aliases", "augmentation", "stain", "bags", "protocol", "model", "head", "trainer"}
    assert groups == composed, "every chosen group of conf/ but the fold, paths, Hydra and the experiment file"
    assert composed <= config_groups() and not groups & set(NON_IDENTITY_GROUPS)
