"""Public names: every exported name resolves, and every `_target_` in conf/ is a public name that resolves."""

import importlib
from pathlib import Path

import pytest
import yaml
from hydra._internal.utils import _locate

CONF = Path(__file__).resolve().parents[1] / "conf"
PACKAGES = ("leukexp.heads", "leukexp.backbones", "leukexp.data", "leukexp.sweeps")


def conf_targets(node: object) -> list[str]:
    if isinstance(node, dict):
        own = [str(v) for k, v in node.items() if k == "_target_"]
        return own + [t for v in node.values() for t in conf_targets(v)]
    if isinstance(node, list):
        return [t for v in node for t in conf_targets(v)]
    return []


@pytest.mark.parametrize("package", PACKAGES)
def test_every_public_name_resolves_to_code_inside_its_package(package: str) -> None:
    module = importlib.import_module(package)
    for name in module.__all__:
        value = getattr(module, name)
        assert value.__module__.startswith(package + "."), (name, value.__module__)
        assert name in dir(module)


def test_configs_name_public_names_only() -> None:
    targets = {t for path in CONF.rglob("*.yaml") for t in conf_targets(yaml.safe_load(path.read_text()))
               if t.startswith("leukexp.")}
    assert "leukexp.heads.mlp" in targets and "leukexp.backbones.TimmBackbone" in targets
    for target in sorted(targets):
        package, _, name = target.rpartition(".")
        assert package in PACKAGES and name in importlib.import_module(package).__all__, f"{target}: a module path"
        assert callable(_locate(target)), target
