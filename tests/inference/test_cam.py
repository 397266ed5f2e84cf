"""Activation maps: shape and range, which images a panel shows, linear heads as torch scores, refusals."""

from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression

from conftest import blobs
from leukexp.errors import LeukexpError
from leukexp.heads.base import HeadContext, Split
from leukexp.heads.sklearn_head import SklearnHead, knn, svm
from leukexp.inference.cam import activation_maps, cam_panel, panel_selection, write_maps
from leukexp.inference.classifier import load_classifier


def test_maps_have_each_images_size_and_stay_in_0_1(study_store: Path) -> None:
    classifier = load_classifier(study_store / "outputs" / "mlp1-f0")
    images = [np.random.default_rng(i).integers(0, 255, (h, w, 3), dtype=np.uint8)
              for i, (h, w) in enumerate([(64, 64), (90, 120)])]
    maps = activation_maps(classifier, images)  # one call over two sizes: real folders mix them
    assert [m.shape for m in maps] == [(64, 64), (90, 120)]
    assert all(m.min() >= 0.0 and m.max() <= 1.0 for m in maps) and maps[0].max() > 0.0


def test_panel_of_images_of_several_sizes(study_store: Path, tmp_path: Path) -> None:
    classifier = load_classifier(study_store / "outputs" / "mlp1-f0")
    images = [np.random.default_rng(i).integers(0, 255, (h, w, 3), dtype=np.uint8)
              for i, (h, w) in enumerate([(64, 64), (90, 120), (30, 72), (57, 61), (48, 48), (80, 40)])]
    panel = cam_panel(classifier, images, np.array([0, 0, 0, 1, 1, 1]), tmp_path / "panel.png", per_class=3)
    assert panel is not None and panel.stat().st_size > 1000


def test_one_file_per_image_and_a_panel(study_store: Path, tmp_path: Path) -> None:
    classifier = load_classifier(study_store / "outputs" / "svm-f1")
    images = [np.full((64, 64, 3), v, np.uint8) for v in (30, 120, 200)]
    written = write_maps(classifier, images, ["a.png", "b.png", "c.png"], tmp_path / "maps")
    assert [p.name for p in written] == ["a.cam.png", "b.cam.png", "c.cam.png"]
    panel = cam_panel(classifier, images, np.array([0, 1, 1]), tmp_path / "panel.png")
    assert panel is not None and panel.is_file()


def test_panel_selection_takes_right_and_wrong_per_class() -> None:
    labels = np.array([0, 0, 0, 1, 1, 1])
    predicted = np.array([0, 1, 0, 1, 1, 0])
    assert panel_selection(labels, predicted, per_class=1) == [0, 1, 3, 5]
    assert panel_selection(labels, predicted, per_class=2) == [0, 2, 1, 3, 4, 5]


@pytest.mark.parametrize("classes", [2, 3])
def test_linear_heads_give_torch_scores_that_agree_with_their_predictions(classes: int) -> None:
    x, y = blobs(90, classes=classes)
    for head in (SklearnHead(HeadContext(8, classes), LogisticRegression()), svm(HeadContext(8, classes))):
        head.fit(Split(y, x), Split(y, x))
        scores = head.class_scores()(torch.as_tensor(x)).detach().numpy()
        assert (scores.argmax(1) == head.predict_proba(x).argmax(1)).mean() > 0.97


def test_a_head_without_scores_is_refused(study_store: Path) -> None:
    classifier = load_classifier(study_store / "outputs" / "mlp1-f0")
    x, y = blobs(30, classes=2)
    classifier.head = knn(HeadContext(8, 2), k=3)
    classifier.head.fit(Split(y, x), Split(y, x))
    with pytest.raises(LeukexpError, match="need a head with class scores"):
        activation_maps(classifier, [np.zeros((64, 64, 3), np.uint8)])
