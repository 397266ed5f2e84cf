"""A saved model folder: written by a run, reloaded for prediction, refused when it names foreign code."""

import json
from pathlib import Path

import numpy as np
import pytest

from leukexp.backbones.timm_backbone import TimmBackbone
from leukexp.errors import LeukexpError
from leukexp.heads.base import HeadContext
from leukexp.heads.torch_head import mlp
from leukexp.inference.classifier import MANIFEST, load_classifier, save_classifier

MODEL = {"_target_": "leukexp.backbones.timm_backbone.TimmBackbone", "name": "test_efficientnet",
         "pretrained": False, "input_size": 32}


def saved(folder: Path) -> tuple[Path, np.ndarray]:
    """A model folder with a trained head, and the probabilities it gives for four images."""
    import torch

    torch.manual_seed(0)
    backbone = TimmBackbone("test_efficientnet", pretrained=False, input_size=32)
    head = mlp(HeadContext(backbone.num_features, 3), hidden=[8])
    images = [np.full((40, 40, 3), v, np.uint8) for v in (0, 80, 160, 240)]
    features = backbone.embed(torch.stack([backbone.preprocess(i) for i in images])).numpy()
    head.best_epoch = 0
    head.network.eval()
    probs = head.predict_proba(features)
    save_classifier(folder, head, backbone, MODEL, ["A", "B", "C"], seed=0)
    return folder, probs


def test_round_trip_gives_the_same_probabilities(tmp_path: Path) -> None:
    import torch

    folder, probs = saved(tmp_path / "model")
    torch.manual_seed(0)  # the random-init backbone is rebuilt the same way
    classifier = load_classifier(folder)
    images = [np.full((40, 40, 3), v, np.uint8) for v in (0, 80, 160, 240)]
    assert np.allclose(classifier.predict_proba(images), probs, atol=1e-6)
    assert classifier.classes == ["A", "B", "C"]


def test_the_stain_normalization_travels_with_the_model(tmp_path: Path) -> None:
    import torch

    from leukexp.data.stain import Macenko
    from leukexp.data.synthetic import generate_image

    torch.manual_seed(0)
    backbone = TimmBackbone("test_efficientnet", pretrained=False, input_size=32)
    head = mlp(HeadContext(backbone.num_features, 3), hidden=[8])
    head.best_epoch = 0
    head.network.eval()
    stain = Macenko()
    stain.fit([generate_image("AML", 0, size=64)])
    save_classifier(tmp_path / "m", head, backbone, MODEL, ["A", "B", "C"], stain=stain, seed=0)
    assert json.loads((tmp_path / "m" / MANIFEST).read_text())["stain"]["name"] == "macenko"
    torch.manual_seed(0)
    classifier = load_classifier(tmp_path / "m")
    assert classifier.stain.fingerprint() == stain.fingerprint()
    image = generate_image("CLL", 1, size=64, domain="B")
    features = backbone.embed(torch.stack([backbone.preprocess(stain(image))])).numpy()
    assert np.allclose(classifier.predict_proba([image]), head.predict_proba(features), atol=1e-6)
    assert torch.equal(classifier.prepare(image), backbone.preprocess(stain(image)))
    meta = json.loads((tmp_path / "m" / MANIFEST).read_text())
    meta["stain"] = {"name": "macenko", "target": {"stain_matrix": "x"}}
    (tmp_path / "m" / MANIFEST).write_text(json.dumps(meta))
    with pytest.raises(LeukexpError, match="stain is damaged"):
        load_classifier(tmp_path / "m")


def test_a_manifest_naming_foreign_code_is_refused(tmp_path: Path) -> None:
    folder, _ = saved(tmp_path / "model")
    meta = json.loads((folder / MANIFEST).read_text())
    meta["model"] = {"_target_": "os.system", "command": f"touch {tmp_path / 'pwned'}"}
    (folder / MANIFEST).write_text(json.dumps(meta))
    with pytest.raises(LeukexpError, match=r"refuses to build os\.system"):
        load_classifier(folder)
    assert not (tmp_path / "pwned").exists()


def test_missing_or_broken_manifest(tmp_path: Path) -> None:
    with pytest.raises(LeukexpError, match=r"no classifier\.json"):
        load_classifier(tmp_path)
    (tmp_path / MANIFEST).write_text("{not json")
    with pytest.raises(LeukexpError, match="not a leukexp model manifest"):
        load_classifier(tmp_path)


def test_a_model_folder_with_code_is_refused(tmp_path: Path) -> None:
    from leukexp.inference.serving import save_model

    folder, _ = saved(tmp_path / "classifier")
    model = save_model(tmp_path / "model", folder, ["A", "B", "C"])
    assert not (model / "code").exists(), "leukexp's own models carry no code"
    load_classifier(model)
    shadow = model / "code" / "leukexp"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text(f"open({str(tmp_path / 'pwned')!r}, 'w')\n")
    with pytest.raises(LeukexpError, match=r"carries a code/ folder"):
        load_classifier(model)
    assert not (tmp_path / "pwned").exists()


def test_interpolations_in_a_stored_config_are_never_resolved(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LEUKEXP_TEST_SECRET", "s3cret")
    folder, _ = saved(tmp_path / "model")
    meta = json.loads((folder / MANIFEST).read_text())
    meta["model"]["name"] = "${oc.env:LEUKEXP_TEST_SECRET}"
    (folder / MANIFEST).write_text(json.dumps(meta))
    with pytest.raises(LeukexpError, match=r"refuses a config holding the interpolation") as error:
        load_classifier(folder)
    assert "${oc.env:LEUKEXP_TEST_SECRET}" in str(error.value) and "s3cret" not in str(error.value)


def test_a_folder_whose_parts_disagree_is_one_line(tmp_path: Path) -> None:
    folder, _ = saved(tmp_path / "model")
    manifest = folder / MANIFEST
    meta = json.loads(manifest.read_text())
    meta["classes"] = ["A", "B"]  # a manifest copied from a two-class model
    manifest.write_text(json.dumps(meta))
    with pytest.raises(LeukexpError, match=r"lists 2 classes but its head scores 3; the model folder's parts"
                                           r" disagree"):
        load_classifier(folder)
    meta["classes"] = ["A", "B", "C"]
    meta["model"]["input_size"] = 48  # still test_efficientnet: the same width, so the head fits
    manifest.write_text(json.dumps(meta))
    assert load_classifier(folder, allow_weight_mismatch=True).classes == ["A", "B", "C"]
    meta["model"] = {**MODEL, "name": "resnet18"}  # another backbone: 512 features, not the head's
    manifest.write_text(json.dumps(meta))
    with pytest.raises(LeukexpError, match=r"its head does not take this backbone's 512 features"):
        load_classifier(folder)


def test_backbone_weights_other_than_the_heads_are_refused_unless_allowed(tmp_path: Path, caplog) -> None:
    folder, _ = saved(tmp_path / "model")
    assert load_classifier(folder).classes == ["A", "B", "C"], "rebuilt with its own seed: the head's weights"
    meta = json.loads((folder / MANIFEST).read_text())
    (folder / MANIFEST).write_text(json.dumps({**meta, "seed": 1}))  # a random init other than the head's
    with pytest.raises(LeukexpError, match=r"backbone weights here differ from those the head was trained on .*"
                                           r"--allow-weight-mismatch"):
        load_classifier(folder)
    assert load_classifier(folder, allow_weight_mismatch=True).classes == ["A", "B", "C"]
    assert "backbone weights differ" in caplog.text
