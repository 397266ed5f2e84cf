"""Offline views: the study's 33, deterministic per image and view; online transforms."""

import albumentations as A
import numpy as np
import pytest
from hydra.utils import instantiate

from conftest import TINY_DATA
from leukexp.data.augment import Augmentation, OfflineViews, OnlineAugment
from leukexp.data.synthetic import generate_image
from leukexp.errors import LeukexpError


@pytest.fixture
def paper(compose_cfg) -> OfflineViews:
    return instantiate(compose_cfg().augmentation, _convert_="all")


def test_paper_config_makes_33_views(paper: OfflineViews) -> None:
    assert paper.n_views == 33
    names = [v.name for v in paper.views]
    assert names[0] == "original"
    assert "shear#1" in names and "rotate#0+vflip" in names and "shift_width#1+hflip" in names
    assert len(set(names)) == 33


def test_views_are_deterministic_across_instances(paper: OfflineViews, compose_cfg) -> None:
    image = generate_image("AML", 0, size=64)
    again = instantiate(compose_cfg().augmentation, _convert_="all")
    for k in range(paper.n_views):
        assert np.array_equal(paper.apply(image, k, "abc"), again.apply(image, k, "abc"))


def test_views_differ_between_draws_and_images(paper: OfflineViews) -> None:
    image = generate_image("CML", 1, size=64)
    first, second = paper.apply(image, 1, "key"), paper.apply(image, 2, "key")
    assert not np.array_equal(first, second), "two draws of one transform differ"
    assert not np.array_equal(paper.apply(image, 1, "key"), paper.apply(image, 1, "other-key"))
    assert np.array_equal(paper.apply(image, 0, "key"), image)


def test_flipped_views_flip_their_base_view(paper: OfflineViews) -> None:
    image = generate_image("ALL", 2, size=64)
    base = paper.views.index(next(v for v in paper.views if v.name == "zoom#1"))
    vflip = paper.views.index(next(v for v in paper.views if v.name == "zoom#1+vflip"))
    hflip = paper.views.index(next(v for v in paper.views if v.name == "zoom#1+hflip"))
    assert np.array_equal(paper.apply(image, vflip, "k"), paper.apply(image, base, "k")[::-1])
    assert np.array_equal(paper.apply(image, hflip, "k"), paper.apply(image, base, "k")[:, ::-1])


def test_fingerprint_follows_the_transforms() -> None:
    one = OfflineViews({"rotate": A.Affine(rotate=(-40, 40), p=1)}, repeats=2, seed=0)
    other = OfflineViews({"rotate": A.Affine(rotate=(-10, 10), p=1)}, repeats=2, seed=0)
    assert one.fingerprint() != other.fingerprint()
    assert one.view_fingerprint(0) == other.view_fingerprint(0) == "original"


def test_online_draws_new_views() -> None:
    online = OnlineAugment(A.Compose([A.Affine(rotate=(-40, 40), p=1)]))
    image = generate_image("HLT", 3, size=64)
    assert not np.array_equal(online.apply(image, 0, "k"), online.apply(image, 0, "k"))


class Transposed(Augmentation):
    """A new kind written against the interface alone: the original and its transpose (2 fixed views)."""

    def __init__(self, name: str = "transposed") -> None:
        self.name = name

    @property
    def n_views(self) -> int:
        return 2

    def fingerprint(self) -> str:
        return "transposed-v1"

    def view_fingerprint(self, index: int) -> str:
        return "original" if index == 0 else f"{self.fingerprint()}-{index}"

    def apply(self, image: np.ndarray, index: int, image_key: str) -> np.ndarray:
        return image if index == 0 else np.ascontiguousarray(image.transpose(1, 0, 2))


def test_an_augmentation_lacking_part_of_the_interface_cannot_be_made() -> None:
    class NoApply(Augmentation):
        n_views = 1

        def fingerprint(self) -> str:
            return "x"

        def view_fingerprint(self, index: int) -> str:
            return "original"

    with pytest.raises(TypeError, match="apply"):
        NoApply()


def test_a_new_augmentation_kind_is_one_class_and_a_config(compose_plan) -> None:
    from leukexp.data.fold_data import build_fold_data

    plain = build_fold_data(compose_plan(*TINY_DATA, "task=binary", "augmentation=none"))
    own = [*TINY_DATA, "task=binary", "augmentation=none", "~augmentation.repeats", "~augmentation.seed",
           "~augmentation.transforms", "~augmentation.flips", "augmentation._target_=test_augment.Transposed"]
    with pytest.raises(LeukexpError, match=r"augmentation\._target_='test_augment\.Transposed': .* declare it: "
                                           r"allowed_targets=\[test_augment\.\]"):
        build_fold_data(compose_plan(*own))
    fold_data = build_fold_data(compose_plan(*own, "allowed_targets=[test_augment.]"))
    assert isinstance(fold_data.augmentation, Transposed) and not fold_data.augmentation.online
    assert len(fold_data.samples.train) == 2 * len(plain.samples.train), "every training image gives both views"
    assert sorted(fold_data.samples.train["view"].unique()) == [0, 1]
    assert len(fold_data.samples.test) == len(plain.samples.test), "test images stay originals"


def test_stain_jitter_views_change_the_stain_not_the_cells_and_repeat_exactly() -> None:
    from leukexp.data.augment import named_views
    from leukexp.data.synthetic import generate_image

    views = named_views("stain_jitter", seed=3)
    image = generate_image("AML", 0, size=64)
    assert views.n_views == 5 and views.view_fingerprint(0) == "original"
    jittered = [views.apply(image, index, "key") for index in range(1, 5)]
    assert all(view.shape == image.shape for view in jittered)
    assert all(np.abs(view.astype(int) - image.astype(int)).mean() > 2 for view in jittered), "another stain"
    assert not np.array_equal(jittered[0], jittered[1]), "each draw its own"
    assert np.array_equal(views.apply(image, 2, "key"), jittered[1]), "the same view in every run"
    dark = image.min(axis=2) < 120  # the cells' outline stays where it was
    assert np.mean(dark == (jittered[0].min(axis=2) < 120)) > 0.9
