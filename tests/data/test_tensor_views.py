"""Views made as tensors in batches (`features.views=device`): the same geometry and parameter ranges as the CPU
path's albumentations transforms, exact flips, their own cache keys, and extraction through them."""

from pathlib import Path

import albumentations as A
import cv2
import numpy as np
import pandas as pd
import pytest
import torch
from albumentations.augmentations.geometric import functional as fgeometric
from hydra.utils import instantiate
from scipy.stats import ks_2samp

from leukexp.backbones.timm_backbone import TimmBackbone
from leukexp.config.compose import load_option
from leukexp.data.augment import OfflineViews, _stable_seed
from leukexp.data.io import file_digest
from leukexp.data.tensor_views import TensorViews, sampling_theta, views_for
from leukexp.errors import LeukexpError
from leukexp.features.cache import FeatureCache
from leukexp.features.embed import ViewPass, extract_features

HEIGHT, WIDTH = 224, 200  # not square: x and y must not be swapped anywhere


def option(name: str) -> OfflineViews:
    return instantiate(load_option("augmentation", name, ["seed=42"]), _convert_="all")


@pytest.fixture(scope="module")
def paper() -> OfflineViews:
    return option("paper")


def smooth_image() -> np.ndarray:
    """An image whose bilinear interpolation is meaningful (a random one is all edges)."""
    y, x = np.mgrid[0:HEIGHT, 0:WIDTH]
    return np.stack([128 + 100 * np.sin(x / 13.0), 128 + 100 * np.cos(y / 17.0),
                     128 + 60 * np.sin((x + y) / 23.0)], -1).astype(np.uint8)


@pytest.mark.parametrize("name", ["shear", "zoom", "rotate", "shift_height", "shift_width"])
def test_a_warp_on_the_device_is_opencvs_warp_of_the_same_matrix(paper: OfflineViews, name: str) -> None:
    image = smooth_image()
    views = TensorViews(paper)
    for seed in range(3):
        matrix = views.ranges[name].draw(np.random.default_rng(seed), HEIGHT, WIDTH)
        expected = fgeometric.warp_affine(image, matrix, cv2.INTER_LINEAR, 0, cv2.BORDER_REPLICATE, (HEIGHT, WIDTH))
        theta = torch.from_numpy(sampling_theta(matrix, HEIGHT, WIDTH))[None]
        made = views.make(torch.from_numpy(image)[None], theta, torch.tensor([True]),
                          torch.tensor([0], dtype=torch.int8))
        difference = np.abs(made[0].numpy() - expected.astype(np.float32))
        assert difference.max() <= 0.51  # OpenCV rounds to 8 bits; the tensor path does not
        assert difference.mean() < 0.3


def albumentations_matrices(transform: A.Affine, count: int) -> np.ndarray:
    """`count` draws of an albumentations Affine's matrix (as the CPU path makes them), flattened (count, 6)."""
    rows = []
    for seed in range(count):
        transform.set_random_seed(_stable_seed("cpu", seed))
        params = transform.get_params() | {"shape": (HEIGHT, WIDTH, 3)}
        rows.append(transform.get_params_dependent_on_data(params, {})["matrix"][:2].ravel())
    return np.array(rows)


@pytest.mark.parametrize("name", ["shear", "zoom", "rotate", "shift_height", "shift_width"])
def test_each_transform_draws_from_the_cpu_paths_distribution(paper: OfflineViews, name: str) -> None:
    views = TensorViews(paper)
    cpu = albumentations_matrices(paper.transforms[name], 1500)
    device = np.array([views.ranges[name].draw(np.random.default_rng(_stable_seed("device", seed)), HEIGHT, WIDTH
                                               )[:2].ravel() for seed in range(1500)])
    for entry in range(6):
        if np.ptp(cpu[:, entry]) < 1e-9:  # a constant entry (1, 0 or the centre) must be the same constant
            assert np.allclose(device[:, entry], cpu[0, entry], atol=1e-9)
        else:  # the CPU path rounds shifts to whole pixels: a tolerance of one pixel's worth of the statistic
            assert ks_2samp(cpu[:, entry], device[:, entry]).statistic < 0.06, (name, entry)
            assert np.allclose([device[:, entry].min(), device[:, entry].max()],
                               [cpu[:, entry].min(), cpu[:, entry].max()], atol=0.05 * np.ptp(cpu[:, entry]) + 1)


def test_a_flip_is_exactly_a_flip_and_shares_the_cpu_paths_cache_key(paper: OfflineViews) -> None:
    views, image = TensorViews(paper), smooth_image()
    for index, view in enumerate(paper.views):
        if view.transform != "original" or view.flip is None:
            continue
        flipped = image[::-1] if view.flip == "vflip" else image[:, ::-1]
        assert np.array_equal(views.apply(image, index, "key"), flipped)
        assert np.array_equal(paper.apply(image, index, "key"), flipped)  # the CPU path: the same pixels
        assert views.view_fingerprint(index) == paper.view_fingerprint(index)
    warped = [i for i, view in enumerate(paper.views) if view.transform != "original"]
    assert len(warped) == 30
    assert not {views.view_fingerprint(i) for i in warped} & {paper.view_fingerprint(i) for i in range(33)}
    assert views.view_fingerprint(0) == "original"


def test_views_are_seeded_per_image_and_view_as_on_the_cpu(paper: OfflineViews) -> None:
    views, image = TensorViews(paper), smooth_image()
    assert np.array_equal(views.apply(image, 3, "a"), views.apply(image, 3, "a"))
    assert not np.array_equal(views.apply(image, 3, "a"), views.apply(image, 3, "b"))
    assert not np.array_equal(views.apply(image, 3, "a"), views.apply(image, 4, "a"))  # the second draw
    thetas, warped, flips = views.plan(np.array([0, 1, 12, 23]), "a", HEIGHT, WIDTH)
    assert warped.tolist() == [False, True, True, True] and flips.tolist() == [0, 0, 1, 2]
    assert np.array_equal(thetas[1], thetas[2])  # shear#0 and shear#0+vflip: one draw, then the flip


def test_only_geometric_offline_views_are_made_on_the_device() -> None:
    assert TensorViews.unsupported(option("paper")) == ""
    assert TensorViews.unsupported(option("flips")) == ""
    assert "HEStain" in TensorViews.unsupported(option("stain_jitter"))
    online = instantiate(load_option("augmentation", "online"), _convert_="all")
    assert "offline" in TensorViews.unsupported(online)
    jitter = option("stain_jitter")
    assert views_for(jitter, "auto", torch.device("cuda")) is jitter  # auto falls back to the CPU path
    with pytest.raises(LeukexpError, match=r"features.views=device: .*stain .*HEStain"):
        views_for(jitter, "device", torch.device("cpu"))
    paper = option("paper")
    assert views_for(paper, "auto", torch.device("cpu")) is paper
    assert isinstance(views_for(paper, "auto", torch.device("cuda")), TensorViews)
    assert isinstance(views_for(paper, "device", torch.device("cpu")), TensorViews)
    assert views_for(paper, "cpu", torch.device("cuda")) is paper


def test_an_unsupported_view_path_is_one_line_before_any_work(compose_cfg) -> None:
    from leukexp.run.validation import validate

    with pytest.raises(LeukexpError, match=r"features\.views=device: augmentation stain_jitter"):
        validate(compose_cfg("augmentation=stain_jitter", "features.views=device"))
    with pytest.raises(LeukexpError, match=r"features\.views"):
        validate(compose_cfg("features.views=gpu"))
    validate(compose_cfg("augmentation=paper", "features.views=device"))


def test_extraction_through_device_views_reuses_the_originals_and_flips_and_computes_only_warps(
        make_folder, tmp_path: Path, paper: OfflineViews) -> None:
    torch.manual_seed(0)
    backbone = TimmBackbone("test_efficientnet", pretrained=False, input_size=48)
    root = make_folder({"a": 2, "b": 2})
    paths = sorted(root.rglob("*.png"))
    catalog = pd.DataFrame({"path": [str(p) for p in paths], "sha1": [file_digest(p.read_bytes()) for p in paths]})
    samples = pd.DataFrame({"source": np.repeat(np.arange(4), 33), "view": np.tile(np.arange(33), 4)})
    cpu = extract_features(backbone, catalog, samples, FeatureCache(tmp_path, "bb"), ViewPass(paper, 32, 0,
                                                                                              made_on="cpu"))
    cache = FeatureCache(tmp_path, "bb")
    device = extract_features(backbone, catalog, samples, cache, ViewPass(paper, 32, 1, made_on="device"))
    assert (cache.hits, cache.misses) == (4 * 3, 4 * 30)  # originals and flips shared; the warped views computed
    plain = np.isin(samples["view"], [0, 11, 22])
    assert np.array_equal(device[plain], cpu[plain])
    one_by_one = [backbone.preprocess(TensorViews(paper).apply(backbone.preprocess.resize(
        cv2.cvtColor(cv2.imread(str(paths[s])), cv2.COLOR_BGR2RGB)), v, catalog["sha1"][s]))
        for s, v in zip(samples["source"], samples["view"], strict=True)]
    expected = backbone.embed(torch.stack(one_by_one)).numpy()
    assert np.allclose(device, expected, atol=2e-2)  # only the 8-bit rounding of `apply` differs
    assert not np.allclose(device[~plain], cpu[~plain], atol=1e-3)  # other draws: other views
    again = FeatureCache(tmp_path, "bb")
    assert np.array_equal(extract_features(backbone, catalog, samples, again, ViewPass(paper, 32, 0,
                                                                                       made_on="device")), device)
    assert (again.hits, again.misses) == (132, 0)
