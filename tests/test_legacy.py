"""What saved models of earlier versions need still loads: their loader module and their backbones' module paths."""

import importlib

import pytest

from leukexp.backbones.loading import backbone_class, build_backbone


def test_a_model_saved_with_the_old_loader_module_still_finds_it() -> None:
    from leukexp.inference.serving import _load_pyfunc
    from leukexp.legacy import LEGACY_MODULES

    assert LEGACY_MODULES == {"leukexp.serving": "leukexp.inference.serving"}, "each entry is tested here"
    assert importlib.import_module("leukexp.serving")._load_pyfunc is _load_pyfunc


@pytest.mark.parametrize("target", ["leukexp.backbones.TimmBackbone", "leukexp.backbones.timm_backbone.TimmBackbone"])
def test_a_backbone_named_by_its_public_name_or_its_old_module_path_builds(target: str) -> None:
    from leukexp.backbones import TimmBackbone

    config = {"_target_": target, "name": "test_efficientnet", "pretrained": False, "input_size": 32}
    assert backbone_class(config) is TimmBackbone
    assert isinstance(build_backbone(config), TimmBackbone)


def test_a_name_that_never_existed_is_still_an_import_error() -> None:
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module("leukexp.cell.pipeline")  # a forward of an earlier version, removed
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module("leukexp.nothing_here")
    with pytest.raises(AttributeError, match="has no attribute 'nope'"):
        importlib.import_module("leukexp.heads").nope  # noqa: B018 - the lookup is the test
