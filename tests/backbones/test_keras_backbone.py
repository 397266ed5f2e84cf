"""Keras applications on TensorFlow as frozen backbones: preprocessing, features, weights files, errors."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import TINY_DATA
from leukexp.backbones.base import Backbone
from leukexp.backbones.keras_backbone import KerasBackbone
from leukexp.config.compose import build
from leukexp.errors import LeukexpError
from leukexp.vocabulary import TEST_ACC


@pytest.fixture(scope="module")
def inception() -> KerasBackbone:
    return KerasBackbone("InceptionV3", pretrained=False, input_size=75)


def test_inception_v3_features_and_its_own_preprocessing(inception: KerasBackbone) -> None:
    assert isinstance(inception, Backbone) and inception.num_features == 2048
    white = inception.preprocess(np.full((90, 120, 3), 255, np.uint8))
    black = inception.preprocess(np.zeros((90, 120, 3), np.uint8))
    assert white.shape == (3, 75, 75)
    assert float(white.min()) == pytest.approx(1.0) and float(black.max()) == pytest.approx(-1.0), "tf mode: [-1, 1]"
    features = inception.embed(torch.stack([white, black]))
    assert features.shape == (2, 2048) and features.dtype == torch.float32
    assert not torch.allclose(features[0], features[1])


def test_weights_file_round_trip_and_fingerprint(inception: KerasBackbone, tmp_path: Path) -> None:
    path = tmp_path / "inception_notop.weights.h5"
    inception.model.save_weights(str(path))
    again = KerasBackbone("InceptionV3", weights_file=str(path), input_size=75)
    assert again.fingerprint == inception.fingerprint
    image = torch.randn(1, 3, 75, 75)
    assert torch.allclose(again.embed(image), inception.embed(image), atol=1e-5)
    assert KerasBackbone("InceptionV3", pretrained=False, input_size=75).fingerprint != inception.fingerprint


def test_config_presets_and_errors(compose_cfg, tmp_path: Path) -> None:
    backbone = build(compose_cfg("model=keras_inception_v3", "model.pretrained=false", "model.input_size=75").model,
                     "model")
    assert backbone.label == "keras_inception_v3" and backbone.application == "InceptionV3"
    with pytest.raises(LeukexpError, match=r"model\.application='NoSuchNet'"):
        KerasBackbone("NoSuchNet", pretrained=False)
    with pytest.raises(LeukexpError, match="no such file"):
        KerasBackbone("InceptionV3", weights_file=str(tmp_path / "missing.h5"))
    junk = tmp_path / "junk.h5"
    junk.write_bytes(b"\x00" * 64)
    with pytest.raises(LeukexpError, match="does not fit keras InceptionV3"):
        KerasBackbone("InceptionV3", weights_file=str(junk), input_size=75)
    with pytest.raises(LeukexpError, match="input_size may be too small"):
        KerasBackbone("InceptionV3", pretrained=False, input_size=32)


@pytest.mark.slow
def test_a_keras_run_with_a_torch_head_in_a_fresh_process(tmp_path: Path) -> None:
    """TensorFlow loaded before torch's compiler stack crashed the process (Lightning imports it for torch heads)."""
    command = [sys.executable, "-m", "leukexp.commands.train", "model=keras_inception_v3", "model.pretrained=false",
               "model.input_size=75", *TINY_DATA, "task=binary", "augmentation=none", "head=mlp1",
               "trainer.max_epochs=1", "mlflow.enabled=false"]
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "CI": "true"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert TEST_ACC in result.stdout
