"""The embedded synthetic data: deterministic, the study's counts, separable but not trivial."""

from pathlib import Path

import cv2
import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from leukexp.data.synthetic import STUDY_COUNTS, SyntheticSource, generate_image
from leukexp.data.tasks import Task
from leukexp.errors import LeukexpError


def test_generator_is_deterministic() -> None:
    assert np.array_equal(generate_image("AML", 3, seed=1, size=96), generate_image("AML", 3, seed=1, size=96))
    assert not np.array_equal(generate_image("AML", 3, seed=1, size=96), generate_image("AML", 4, seed=1, size=96))


def test_default_counts_are_the_studys(compose_cfg) -> None:
    assert dict(compose_cfg().data.counts) == STUDY_COUNTS == {"ALL": 49, "AML": 58, "CLL": 46, "CML": 54, "HLT": 59}


def test_source_generates_once_and_scans(tmp_path: Path) -> None:
    source = SyntheticSource(counts={"ALL": 3, "HLT": 2}, image_size=48, cache_dir=tmp_path)
    catalog = source.scan(Task("folders"))
    assert catalog.frame["label"].value_counts().to_dict() == {"ALL": 3, "HLT": 2}
    first = sorted(p.stat().st_mtime_ns for p in Path(catalog.root).rglob("*.png"))
    SyntheticSource(counts={"ALL": 3, "HLT": 2}, image_size=48, cache_dir=tmp_path).scan(Task("folders"))
    assert sorted(p.stat().st_mtime_ns for p in Path(catalog.root).rglob("*.png")) == first


def colour_shape_statistics(image: np.ndarray) -> list[float]:
    hsv = cv2.cvtColor(image, cv2.COLOR_RGB2HSV)
    dark = (hsv[..., 2] < 150).astype(np.uint8)
    n_blobs, _, stats, _ = cv2.connectedComponentsWithStats(dark)
    areas = stats[1:, cv2.CC_STAT_AREA] if n_blobs > 1 else np.zeros(1)
    return [*image.reshape(-1, 3).mean(0), *image.reshape(-1, 3).std(0), dark.mean(), n_blobs,
            areas.mean(), areas.max(), hsv[..., 1].mean()]


def test_classes_are_separable_by_simple_statistics_but_not_trivially() -> None:
    labels, features = [], []
    for label_index, label in enumerate(STUDY_COUNTS):
        for index in range(16):
            features.append(colour_shape_statistics(generate_image(label, index, size=128)))
            labels.append(label_index)
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    accuracy = cross_val_score(model, np.array(features), np.array(labels), cv=4).mean()
    assert accuracy > 0.5, f"a simple classifier should beat chance (0.2) clearly, got {accuracy:.2f}"
    mean_colour = np.array(features)[:, :3]
    colour_only = cross_val_score(model, mean_colour, np.array(labels), cv=4).mean()
    assert colour_only < 0.9, f"mean colour alone should not solve the task, got {colour_only:.2f}"


def test_the_second_lab_has_other_cells_another_stain_and_a_softer_focus(tmp_path: Path) -> None:
    first, second = generate_image("CLL", 2, size=96), generate_image("CLL", 2, size=96, domain="B")
    assert np.array_equal(second, generate_image("CLL", 2, size=96, domain="B")), "deterministic"
    assert np.abs(first.astype(int) - second.astype(int)).mean() > 10
    a = [generate_image(label, i, size=96) for label in STUDY_COUNTS for i in range(3)]
    b = [generate_image(label, i, size=96, domain="B") for label in STUDY_COUNTS for i in range(3)]
    mean_a, mean_b = (np.mean([i.reshape(-1, 3).mean(0) for i in s], 0) for s in (a, b))
    assert mean_b[2] < mean_a[2] - 15, "warmer: less blue"
    sharpness = [np.mean([cv2.Laplacian(cv2.cvtColor(i, cv2.COLOR_RGB2GRAY), cv2.CV_64F).var() for i in s])
                 for s in (a, b)]
    assert sharpness[1] < 0.7 * sharpness[0], "softer focus"
    source = SyntheticSource(counts={"ALL": 2, "HLT": 2}, image_size=48, cache_dir=tmp_path, domain="B")
    other = SyntheticSource(counts={"ALL": 2, "HLT": 2}, image_size=48, cache_dir=tmp_path)
    assert source.prepare() != other.prepare(), "each lab its own folder"


def test_an_unknown_lab_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(LeukexpError, match=r"data\.domain=C: not a synthetic lab"):
        SyntheticSource(counts={"ALL": 2, "HLT": 2}, cache_dir=tmp_path, domain="C").prepare()
