"""Saved models name their backbone by config: only leukexp's own targets are built."""

import pytest

from leukexp.backbones.loading import build_backbone, targets
from leukexp.backbones.timm_backbone import TimmBackbone
from leukexp.errors import LeukexpError


def test_targets_are_found_at_any_depth() -> None:
    config = {"_target_": "a.B", "weights_file": {"_target_": "c.d"}, "more": [{"_target_": "e.f"}]}
    assert targets(config) == ["a.B", "c.d", "e.f"]


@pytest.mark.parametrize("config", [
    {"_target_": "os.system", "command": "touch /tmp/pwned"},
    {"_target_": "leukexp.backbones.timm_backbone.TimmBackbone", "name": "test_efficientnet",
     "weights_file": {"_target_": "subprocess.check_output", "args": ["id"]}},
])
def test_foreign_code_is_refused_before_anything_runs(config: dict) -> None:
    with pytest.raises(LeukexpError, match="refuses to build"):
        build_backbone(config)


def test_leukexps_backbones_are_built() -> None:
    backbone = build_backbone({"_target_": "leukexp.backbones.timm_backbone.TimmBackbone",
                               "name": "test_efficientnet", "pretrained": False, "input_size": 32})
    assert isinstance(backbone, TimmBackbone) and backbone.preprocess.input_size == (3, 32, 32)
