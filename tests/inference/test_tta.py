"""Test-time augmentation: views per source image, averaged probabilities, metrics per source image."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from leukexp.data.augment import named_views
from leukexp.data.io import file_digest, read_image
from leukexp.errors import LeukexpError
from leukexp.inference.classifier import load_classifier
from leukexp.inference.tta import view_mean, view_samples
from leukexp.run.pipeline import train
from leukexp.vocabulary import TEST_COUNT


def test_view_samples_are_source_major() -> None:
    test = pd.DataFrame({"source": [4, 9], "view": [0, 0], "label_index": [1, 0]})
    rows = view_samples(test, 3)
    assert list(rows["source"]) == [4, 4, 4, 9, 9, 9] and list(rows["view"]) == [0, 1, 2, 0, 1, 2]
    assert list(rows["label_index"]) == [1, 1, 1, 0, 0, 0]


def test_view_mean() -> None:
    probs = np.array([[1.0, 0.0], [0.5, 0.5], [0.0, 1.0], [0.2, 0.8]]).reshape(2, 2, 2)
    assert np.allclose(view_mean(probs), [[0.75, 0.25], [0.1, 0.9]])
    softened = view_mean(probs, temperature=2.0)  # each view softened before the mean
    assert np.allclose(softened[0], [0.75, 0.25]) and 0.1 < softened[1][0] < 0.2


def test_named_views() -> None:
    assert named_views("flips").n_views == 3 and named_views("paper").n_views == 33
    with pytest.raises(LeukexpError, match="not a fixed set of views"):
        named_views("online")


def test_a_tta_runs_probabilities_are_the_mean_of_its_views(compose_cfg, tmp_path: Path) -> None:
    from conftest import STUDY

    metrics = train(compose_cfg(*STUDY, "head=logreg", "evaluation.tta=flips", "mlflow.enabled=false"))
    predictions = pd.read_csv(tmp_path / "outputs" / "predictions.csv")
    manifest = pd.read_csv(tmp_path / "outputs" / "manifest.csv")
    assert len(predictions) == (manifest["split"] == "test").sum() == metrics[TEST_COUNT], "one row per test image"
    classifier = load_classifier(tmp_path / "outputs")
    views = named_views("flips", seed=42)
    (root,) = {p.parent.parent for p in (tmp_path / "cache" / "synthetic").rglob("*.png")}
    for row in predictions.itertuples():
        path = root / row.file
        image, key = read_image(path), file_digest(path.read_bytes())
        variants = [image] + [views.apply(image, v, key) for v in range(1, views.n_views)]
        expected = classifier.predict_proba(variants).mean(axis=0)
        assert np.allclose([row.p_ALL, row.p_HLT], expected, atol=1e-6)
