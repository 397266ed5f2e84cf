"""Feature fusion: widths add up, each member keeps its own cache entries, members are checked."""

from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import torch

from leukexp.backbones.concat import ConcatBackbone, member_config
from leukexp.data.augment import OfflineViews
from leukexp.data.io import DECODER_VERSION
from leukexp.errors import LeukexpError
from leukexp.features.embed import ViewPass, part_caches, sample_features


def test_member_configs_resolve_their_defaults() -> None:
    config = member_config("efficientnet_lite2")
    assert config["_target_"].endswith("TimmBackbone") and config["name"] == "tf_efficientnet_lite2"
    assert config["key_map"] == "by_order" and config["center_crop"] is False, "timm.yaml's keys merged in"
    with pytest.raises(LeukexpError, match="'nope' is not a model config"):
        member_config("nope")


def test_widths_add_up_and_each_member_is_cached_apart(tmp_path: Path) -> None:
    members = [{"_target_": "leukexp.backbones.timm_backbone.TimmBackbone", "name": "test_efficientnet",
                "pretrained": False, "input_size": size} for size in (32, 48)]
    torch.manual_seed(0)
    fused = ConcatBackbone(members)
    assert fused.num_features == sum(m.num_features for m in fused.members)
    assert [p.preprocess.input_size for p in fused.parts()] == [(3, 32, 32), (3, 48, 48)]
    rng = np.random.default_rng(0)
    paths = []
    for i in range(3):
        path = tmp_path / f"{i}.png"
        cv2.imwrite(str(path), rng.integers(0, 255, (40, 40, 3), dtype=np.uint8))
        paths.append(str(path))
    catalog = pd.DataFrame({"path": paths, "sha1": [f"{i:040d}" for i in range(3)]})
    samples = pd.DataFrame({"source": [0, 1, 2], "view": 0, "label_index": 0})
    caches = part_caches(fused, tmp_path / "cache")
    features = sample_features(fused, catalog, samples, caches, ViewPass(OfflineViews()))
    assert features.shape == (3, fused.num_features)
    folders = sorted(p.name for p in (tmp_path / "cache").iterdir())
    expected = sorted(f"{m.fingerprint}-d{DECODER_VERSION}" for m in fused.members)
    assert folders == expected, "one cache folder per member"
    again = sample_features(fused, catalog, samples, part_caches(fused, tmp_path / "cache"), ViewPass(OfflineViews()))
    assert np.array_equal(features, again)


def test_fewer_than_two_members_is_refused() -> None:
    with pytest.raises(LeukexpError, match="two or more"):
        ConcatBackbone(["efficientnet_lite0"])
