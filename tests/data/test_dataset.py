"""Datasets: in-memory feature batches that match a DataLoader's, view batches grouped by source image."""

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, TensorDataset

from leukexp.backbones.base import Preprocess
from leukexp.data.augment import OfflineViews
from leukexp.data.dataset import FeatureBatches, SourceViews


def test_feature_batches_equal_a_shuffled_dataloaders_and_leave_the_same_random_state() -> None:
    features = np.arange(70 * 3, dtype=np.float32).reshape(70, 3)
    labels = np.arange(70) % 4
    ours = FeatureBatches(features, labels, batch_size=16, shuffle=True, generator=torch.Generator().manual_seed(7))
    loader = DataLoader(TensorDataset(torch.as_tensor(features), torch.as_tensor(labels)), batch_size=16,
                        shuffle=True, generator=torch.Generator().manual_seed(7))
    assert len(ours) == len(loader) == 5
    for epoch in range(3):
        torch.manual_seed(epoch)
        mine = list(ours)
        after_mine = torch.rand(1)
        torch.manual_seed(epoch)
        theirs = list(loader)
        after_theirs = torch.rand(1)
        assert [len(b["label"]) for b in mine] == [16, 16, 16, 16, 6]
        for batch, (x, y) in zip(mine, theirs, strict=True):
            assert torch.equal(batch["features"], x) and torch.equal(batch["label"], y)
        assert torch.equal(after_mine, after_theirs)  # dropout afterwards draws the same numbers


def test_feature_batches_in_blocks_hold_every_batch_once_in_order() -> None:
    features, labels = np.random.default_rng(0).normal(size=(50, 2)).astype(np.float32), np.zeros(50)
    single = list(FeatureBatches(features, labels, 8))
    blocks = FeatureBatches(features, labels, 8, block=3)
    assert len(blocks) == 3 and [len(b) for b in blocks] == [3, 3, 1]
    flat = [batch for block in blocks for batch in block]
    assert all(torch.equal(a["index"], b["index"]) for a, b in zip(single, flat, strict=True))
    assert torch.equal(torch.cat([b["index"] for b in flat]), torch.arange(50))


def test_source_views_decode_an_image_once_and_return_its_views_as_8_bit(make_folder) -> None:
    import albumentations as A

    root = make_folder({"a": 2})
    paths = sorted(str(p) for p in root.rglob("*.png"))
    catalog = pd.DataFrame({"path": paths, "sha1": ["k0", "k1"]})
    views = OfflineViews(flips={"hflip": A.HorizontalFlip(p=1.0)}, repeats=0)
    preprocess = Preprocess((3, 16, 16), (0.5,) * 3, (0.5,) * 3)
    dataset = SourceViews(catalog, np.array([1, 0, 1]), np.array([0, 0, 1]), views, preprocess)
    assert len(dataset) == 2  # source 1 (rows 0 and 2), then source 0 (row 1)
    item = dataset[0]
    assert item["image"].dtype == torch.uint8 and item["image"].shape == (2, 16, 16, 3)
    assert item["row"].tolist() == [0, 2]
    assert torch.equal(item["image"][1], item["image"][0].flip(1))  # view 1: the horizontal flip
    assert dataset[1]["row"].tolist() == [1]
