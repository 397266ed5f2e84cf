"""The Backbone interface's shared parts: preprocessing, device and precision choices."""

import numpy as np
import pytest
import torch

from leukexp.backbones.base import Backbone, ImagePreprocess, Preprocess, check_precision, resize, resolve_device
from leukexp.errors import LeukexpError


def test_preprocess_resizes_scales_and_normalizes() -> None:
    preprocess = Preprocess((3, 8, 6), mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    white = preprocess(np.full((20, 30, 3), 255, np.uint8))
    black = preprocess(np.zeros((20, 30, 3), np.uint8))
    assert white.shape == (3, 8, 6) and torch.allclose(white, torch.ones(1)) and torch.allclose(black, -torch.ones(1))
    assert isinstance(preprocess, ImagePreprocess)
    assert preprocess.describe() != Preprocess((3, 8, 6), (0.5,) * 3, (0.25,) * 3).describe()


@pytest.mark.parametrize(("mean", "std"), [((0.5,) * 3, (0.5,) * 3), ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))])
def test_a_batch_normalized_from_8_bit_equals_image_by_image_preprocessing(mean, std) -> None:
    preprocess = Preprocess((3, 24, 24), mean=mean, std=std)
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (40, 30, 3), dtype=np.uint8) for _ in range(3)]
    resized = [preprocess.resize(image) for image in images]
    assert all(r.dtype == np.uint8 and r.shape == (24, 24, 3) for r in resized)
    batch = preprocess.normalize(torch.from_numpy(np.stack(resized)))
    assert torch.equal(batch, torch.stack([preprocess(image) for image in images]))  # bit for bit
    assert batch.is_contiguous(memory_format=torch.channels_last)
    same_size = rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)
    assert preprocess.resize(same_size) is same_size  # already the input size: no resampling


def test_center_crop_keeps_the_middle() -> None:
    image = np.zeros((100, 100, 3), np.uint8)
    image[:, :10] = 255  # a bright strip at the edge: gone after a centre crop, kept by a whole-image resize
    assert resize(image, 50, 50, crop_pct=0.5, center_crop=True).max() == 0
    assert resize(image, 50, 50).max() == 255


def test_device_and_precision_choices() -> None:
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(LeukexpError, match="not a device"):
        resolve_device("tpu9")
    assert check_precision("bf16") == "bf16"
    with pytest.raises(LeukexpError, match="fp32, bf16, fp16"):
        check_precision("int8")


class Minimal(Backbone):
    """The least a backbone implements."""

    label, num_features = "minimal", 3
    preprocess = Preprocess((3, 4, 4), (0.0,) * 3, (1.0,) * 3)

    @property
    def fingerprint(self) -> str:
        return "minimal"

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        return images.mean((2, 3))

    def reference(self) -> dict[str, object]:
        return {"label": self.label}


def test_a_backbone_without_placement_runs_on_the_cpu_in_fp32_only() -> None:
    backbone = Minimal()
    assert backbone.place("cpu", "fp32") is backbone
    with pytest.raises(LeukexpError, match="CPU in fp32 only"):
        backbone.place("cpu", "bf16")
    with pytest.raises(TypeError):
        Backbone()  # the interface itself cannot be built
