"""Hydra's compose API behind one helper: a named option of a group, the default choices, inside and outside an app."""

import pytest

from leukexp.config.compose import compose_train, default_choices, group_options, load_option
from leukexp.errors import LeukexpError


def test_an_option_is_composed_with_its_own_defaults_and_resolved() -> None:
    lite2 = load_option("model", "efficientnet_lite2")
    assert lite2["name"] == "tf_efficientnet_lite2", "the option's own value"
    assert lite2["pooling"] == "avg" and lite2["stages"] is None, "merged in from its defaults (model/timm.yaml)"
    assert lite2["_target_"].endswith("TimmBackbone")


def test_overrides_reach_the_interpolations_of_an_option() -> None:
    assert load_option("augmentation", "flips", ["seed=7"])["seed"] == 7
    assert load_option("augmentation", "flips")["seed"] == 42
    assert load_option("model", "dinobloom_s", ["model.input_size=112"])["model_args"]["img_size"] == 112


def test_an_unknown_option_is_one_line_naming_the_key_and_the_options() -> None:
    expected = r"model\.members: 'nope' is not a model config \(known: .*efficientnet_lite0"
    with pytest.raises(LeukexpError, match=expected):
        load_option("model", "nope", key="model.members")


def test_default_choices_are_the_defaults_list_of_train_yaml() -> None:
    choices = default_choices()
    assert choices["model"] == "efficientnet_lite0" and choices["head"] == "mlp1" and choices["fold"] == "f0"
    assert "experiment" not in choices, "null defaults are no choice"
    assert set(group_options("augmentation")) == {"flips", "none", "online", "paper", "stain_jitter",
                                                  "stain_jitter_online"}
    assert choices["stain"] == "none"


def test_inside_a_running_app_its_own_hydra_composes() -> None:
    """Hydra initialized as `@hydra.main` leaves it for the job: the helper composes through it, no second one."""
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from leukexp.config.compose import config_dir

    with initialize_config_dir(str(config_dir()), version_base="1.3"):
        assert GlobalHydra.instance().is_initialized()
        assert compose_train(["head=svm"]).head["_target_"].endswith("svm")
        assert load_option("model", "efficientnet_lite1")["name"] == "tf_efficientnet_lite1"
        assert default_choices()["augmentation"] == "paper"
    assert not GlobalHydra.instance().is_initialized(), "the app's Hydra is left as it was"


def test_an_environment_variable_set_but_empty_counts_as_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    from omegaconf import OmegaConf

    import leukexp.config  # noqa: F401 - registers the resolver

    node = OmegaConf.create({"root": "${leukexp.env:LEUKEXP_ROOT,/the/cwd}"})
    for value, expected in (("", "/the/cwd"), ("  ", "/the/cwd"), ("/data/study", "/data/study")):
        monkeypatch.setenv("LEUKEXP_ROOT", value)
        assert OmegaConf.to_container(node, resolve=True)["root"] == expected
    monkeypatch.delenv("LEUKEXP_ROOT")
    assert OmegaConf.to_container(node, resolve=True)["root"] == "/the/cwd"
    from leukexp.config.compose import config_dir

    shipped = "\n".join(path.read_text() for path in config_dir().rglob("*.yaml"))
    assert "oc.env" not in shipped, "every environment default in the shipped configs treats empty as unset"


def test_a_key_its_target_does_not_take_is_one_line_naming_the_keys() -> None:
    from leukexp.config.compose import build

    head = compose_train(["head=abmil", "+head.bogus=1"]).head
    with pytest.raises(LeukexpError, match=r"^head\.bogus: not a key of head \(bag_network; its keys: attention,"
                                           r" dropout, hidden, pool\)"):
        build(head, "head")
    nested = compose_train(["head=logreg", "+head.estimator.Cee=1"]).head
    with pytest.raises(LeukexpError, match=r"^head\.estimator\.Cee: not a key of head\.estimator"):
        build(nested, "head")


def test_every_shipped_option_names_only_keys_its_target_takes() -> None:
    from omegaconf import OmegaConf

    from leukexp.config.compose import check_keys

    for group in ("data", "task", "fold", "protocol", "augmentation", "stain", "bags", "model", "head", "trainer"):
        for option in group_options(group):
            check_keys(OmegaConf.to_container(compose_train([f"{group}={option}"])[group]), group)
