"""Protocols: strict vs the study's leaky protocol, and class balancing."""

import numpy as np
import pandas as pd
import pytest

from leukexp.data.protocol import Protocol
from leukexp.data.splits import FoldSpec, assign_splits
from leukexp.errors import LeukexpError


@pytest.fixture
def study() -> tuple[pd.DataFrame, pd.Series]:
    counts = {0: 20, 1: 30, 2: 12}
    labels = [label for label, n in counts.items() for _ in range(n)]
    data = pd.DataFrame({"label": labels, "label_index": labels, "group": [str(i) for i in range(len(labels))]})
    return data, assign_splits(data, FoldSpec(index=0))


def sources(samples: pd.DataFrame) -> set[int]:
    return set(samples["source"].tolist())


def test_strict_augments_training_images_only(study: tuple[pd.DataFrame, pd.Series]) -> None:
    data, split = study
    samples = Protocol("strict").build(data, split, n_views=33, n_classes=3)
    assert len(samples.train) == (split == "train").sum() * 33
    assert samples.val["view"].eq(0).all() and samples.test["view"].eq(0).all()
    assert not sources(samples.train) & sources(samples.val)
    assert not sources(samples.train) & sources(samples.test)


def test_thesis_protocol_leaks_views_into_validation_and_augments_test(study: tuple[pd.DataFrame, pd.Series]) -> None:
    data, split = study
    samples = Protocol("thesis", val_split="view", augment_test=True, balance="undersample").build(
        data, split, n_views=33, n_classes=3)
    assert sources(samples.train) & sources(samples.val), "the study's protocol puts views of one image on both sides"
    assert len(samples.test) == (split == "test").sum() * 33
    pooled = pd.concat([samples.train, samples.val])["label_index"].value_counts()
    assert pooled.nunique() == 1, "undersampling equalizes classes before the split"
    assert not sources(samples.test) & (sources(samples.train) | sources(samples.val))


def test_oversample_raises_every_class_to_the_largest(study: tuple[pd.DataFrame, pd.Series]) -> None:
    data, split = study
    samples = Protocol("strict", balance="oversample").build(data, split, n_views=2, n_classes=3)
    counts = samples.train["label_index"].value_counts()
    assert counts.nunique() == 1
    assert counts.iloc[0] == (data[split == "train"]["label"].value_counts().max() * 2)


def test_class_weights_are_inverse_frequency(study: tuple[pd.DataFrame, pd.Series]) -> None:
    data, split = study
    samples = Protocol("strict", balance="class_weights").build(data, split, n_views=1, n_classes=3)
    counts = samples.train["label_index"].value_counts().sort_index().to_numpy()
    weights = np.array(samples.class_weights)
    assert np.allclose(weights * counts, (weights * counts)[0])


def test_balancing_is_deterministic(study: tuple[pd.DataFrame, pd.Series]) -> None:
    data, split = study
    protocol = Protocol("strict", balance="undersample", seed=3)
    assert protocol.build(data, split, 4, 3).train.equals(protocol.build(data, split, 4, 3).train)


def test_unknown_balance_is_rejected() -> None:
    with pytest.raises(LeukexpError, match=r"protocol\.balance='smote'"):
        Protocol("strict", balance="smote")
