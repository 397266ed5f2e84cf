"""The key schema: one description per key, consistent with the YAML defaults, read by validation and identity."""

import pytest
from omegaconf import OmegaConf, open_dict

from leukexp.config.schema import MISSING, SCHEMA, any_value, changes_the_result, implicit_keys, lookup, setting


def test_every_default_in_the_schema_is_the_yaml_default(compose_cfg) -> None:
    """The YAML stays the source of values: where the default config has a key, the schema's default agrees."""
    cfg = compose_cfg()
    checked = 0
    for entry in SCHEMA:
        value = lookup(cfg, entry.key)
        if entry.default is MISSING or value is MISSING:
            continue
        assert value == entry.default, f"{entry.key}: schema default {entry.default!r}, YAML {value!r}"
        checked += 1
    assert checked >= 8, "the comparison ran on the keys that have both"


def test_every_described_key_exists_in_the_default_config_or_has_a_default(compose_cfg) -> None:
    """No stale entries: a key the schema describes is in the composed config, or the schema says what it is."""
    cfg = compose_cfg()
    stale = [e.key for e in SCHEMA if lookup(cfg, e.key) is MISSING and e.default is MISSING and e.key != "search"
             and not e.key.startswith(("hydra", "head.n_jobs", "data.digest_cache", "model.key_map"))]
    assert stale == []


def test_the_default_config_satisfies_every_check(compose_cfg) -> None:
    cfg = compose_cfg()
    failing = [e.key for e in SCHEMA if e.check is not any_value and lookup(cfg, e.key) is not MISSING
               and not e.check(lookup(cfg, e.key))]
    assert failing == []


@pytest.mark.parametrize(("key", "identity"), [
    ("features.device", False), ("features.batch_size", False), ("fold.index", False), ("fold.n_splits", True),
    ("mlflow.tracking_uri", False), ("mlflow.anything.below", False), ("hydra/launcher", False),
    ("head.hidden", True), ("head.n_jobs", False), ("model.pooling", True), ("optimizer.lr", True),
    ("features.precision", True), ("training.torch_threads", False), ("evaluation.tta", True),
])
def test_identity_is_read_from_the_schema(key: str, identity: bool) -> None:
    assert changes_the_result(key) is identity


def test_a_missing_key_falls_back_to_its_schema_default_only(compose_cfg) -> None:
    cfg = compose_cfg()
    with open_dict(cfg):
        del cfg.features["device"]
    assert setting(cfg, "features.device") == "auto", "the YAML's default, not a second one in code"
    assert setting(cfg, "features.precision") == "fp32"
    with pytest.raises(KeyError, match=r"features\.batch_size"):
        with open_dict(cfg):
            del cfg.features["batch_size"]
        setting(cfg, "features.batch_size")


def test_implicit_keys_keep_their_naming_order() -> None:
    assert list(implicit_keys().items()) == [("evaluation.tta", "none"), ("model.stages", None),
                                             ("model.pooling", "avg"), ("evaluation.calibration", "none"),
                                             ("evaluation.target_sensitivity", 0.95)]


def test_lookup_returns_plain_containers(compose_cfg) -> None:
    value = lookup(compose_cfg("model.stages=[1,2]"), "model.stages")
    assert value == [1, 2] and not OmegaConf.is_config(value)


def test_a_component_parameter_defaults_where_the_schema_does(compose_cfg) -> None:
    """A key of a component's group (`model.pooling`, `stain.fit_images`) has one default: the schema's (checked
    against the YAML above) is also the default of the parameter of the leukexp class the default config builds."""
    import inspect

    from hydra.utils import get_class

    cfg = compose_cfg()
    compared = 0
    for entry in SCHEMA:
        group, _, parameter = entry.key.partition(".")
        if not parameter:  # a top-level key (seed, allowed_targets) belongs to no component
            continue
        target = lookup(cfg, f"{group}._target_")
        if entry.default is MISSING or not parameter or "." in parameter or not str(target).startswith("leukexp."):
            continue
        signature = inspect.signature(get_class(target))
        if parameter in signature.parameters:
            assert signature.parameters[parameter].default == entry.default, f"{entry.key}: {target}"
            compared += 1
    assert compared >= 4, "model.stages, model.pooling, stain.reference and stain.fit_images at least"


@pytest.mark.parametrize("where", ["leukexp.features.cache:FeatureCache", "leukexp.features.embed:part_caches"])
def test_the_feature_storage_default_is_the_schemas(where: str) -> None:
    import importlib
    import inspect

    module, name = where.split(":")
    parameter = inspect.signature(getattr(importlib.import_module(module), name)).parameters["storage"]
    assert parameter.default == setting_default("features.storage")


def setting_default(key: str) -> object:
    from leukexp.config.schema import describe

    return describe(key).default
