"""Folds: stratification, grouping, validation split, determinism."""

import numpy as np
import pandas as pd
import pytest

from leukexp.data.splits import TEST, TRAIN, VAL, FoldSpec, assign_splits, manifest
from leukexp.errors import LeukexpError


def frame(counts: dict[str, int], groups_of: int = 1) -> pd.DataFrame:
    labels = [label for label, n in counts.items() for _ in range(n)]
    return pd.DataFrame({
        "file": [f"{label}/{i}.png" for i, label in enumerate(labels)],
        "label": labels,
        "group": [f"g{i // groups_of}" for i in range(len(labels))],
        "sha1": [f"{i:040d}" for i in range(len(labels))],
    })


STUDY = {"ALL": 49, "AML": 58, "CLL": 46, "CML": 54, "HLT": 59}


def test_folds_partition_every_image_once_and_are_stratified() -> None:
    data = frame(STUDY)
    tests = [assign_splits(data, FoldSpec(index=k)) for k in range(5)]
    in_test = np.stack([(s == TEST).to_numpy() for s in tests])
    assert (in_test.sum(axis=0) == 1).all()
    for split in tests:
        per_class = data[split == TEST].groupby("label").size()
        expected = pd.Series(STUDY) / 5
        assert ((per_class - expected).abs() <= 1).all()


def test_validation_is_a_stratified_fifth_of_training() -> None:
    data = frame(STUDY)
    split = assign_splits(data, FoldSpec(index=2))
    trainval = data[split != TEST].groupby("label").size()
    val = data[split == VAL].groupby("label").size()
    assert ((val / trainval - 0.2).abs() < 0.06).all()
    assert set(split) == {TRAIN, VAL, TEST}


def test_split_is_deterministic_and_seed_dependent() -> None:
    data = frame(STUDY)
    first = assign_splits(data, FoldSpec(index=1, seed=7))
    assert first.equals(assign_splits(data, FoldSpec(index=1, seed=7)))
    assert not first.equals(assign_splits(data, FoldSpec(index=1, seed=8)))


def test_groups_never_straddle_splits() -> None:
    data = frame(STUDY, groups_of=3)
    for k in range(5):
        split = assign_splits(data, FoldSpec(index=k))
        assert (pd.crosstab(data["group"], split) > 0).sum(axis=1).eq(1).all()


def test_class_smaller_than_folds_is_an_error() -> None:
    with pytest.raises(LeukexpError, match=r"class HLT has 3 image.*fold\.n_splits=5"):
        assign_splits(frame({"ALL": 10, "HLT": 3}), FoldSpec())


@pytest.mark.parametrize(("n_splits", "count", "fits"), [(2, 2, False), (2, 3, False), (2, 4, True), (3, 3, True),
                                                         (5, 5, True)])
def test_a_class_too_small_for_the_folds_and_a_validation_split_is_one_line(n_splits: int, count: int,
                                                                            fits: bool) -> None:
    data = frame({"ALL": count, "HLT": 20})
    if fits:
        split = assign_splits(data, FoldSpec(n_splits=n_splits, index=0))
        assert (split[data["label"] == "ALL"] == TRAIN).sum() >= 1 and (split == VAL).sum() >= 2
        return
    with pytest.raises(LeukexpError, match=rf"class ALL has {count} image\(s\): with fold.n_splits={n_splits} .*"
                                           r"at least 4 images"):
        assign_splits(data, FoldSpec(n_splits=n_splits, index=0))


def test_fold_index_out_of_range() -> None:
    with pytest.raises(LeukexpError, match=r"fold\.index=5"):
        FoldSpec(index=5, n_splits=5)


def test_manifest_columns() -> None:
    data = frame({"ALL": 5, "HLT": 5})
    table = manifest(data, assign_splits(data, FoldSpec()))
    assert table.columns.tolist() == ["file", "label", "group", "split", "sha1"]
