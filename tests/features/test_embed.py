"""Feature extraction: batch size and workers per device, decode-once view batches, cache reuse."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from stores import put_pairs

import leukexp.data.dataset as dataset_module
from leukexp.backbones.timm_backbone import TimmBackbone
from leukexp.data.augment import OfflineViews
from leukexp.data.io import file_digest
from leukexp.errors import LeukexpError
from leukexp.features.cache import FeatureCache
from leukexp.features.embed import ViewPass, batch_size_for, extract_features, part_caches, workers_for

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


def test_auto_batch_size_and_workers_follow_the_device(monkeypatch: pytest.MonkeyPatch) -> None:
    assert (batch_size_for("auto", CPU), batch_size_for("auto", CUDA)) == (16, 256)
    assert batch_size_for(48, CUDA) == 48
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(16)))
    assert (workers_for("auto", CPU), workers_for("auto", CUDA)) == (1, 15)
    assert workers_for("auto", CPU, views=100) == 0  # a small pass: not worth starting a worker
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(64)))
    assert workers_for("auto", CUDA) == 16
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {0})
    assert (workers_for("auto", CPU), workers_for("auto", CUDA)) == (0, 1)
    assert workers_for(3, CPU) == 3


@pytest.fixture(scope="module")
def backbone() -> TimmBackbone:
    torch.manual_seed(0)
    return TimmBackbone("test_efficientnet", pretrained=False, input_size=48)


@pytest.fixture
def study(make_folder) -> tuple[pd.DataFrame, pd.DataFrame, OfflineViews]:
    """A catalog of 4 images and every flips view of each (3 views), source-major."""
    import albumentations as A

    root = make_folder({"a": 2, "b": 2})
    paths = sorted(root.rglob("*.png"))
    catalog = pd.DataFrame({"path": [str(p) for p in paths], "sha1": [file_digest(p.read_bytes()) for p in paths]})
    views = OfflineViews(flips={"vflip": A.VerticalFlip(p=1.0), "hflip": A.HorizontalFlip(p=1.0)}, repeats=0)
    samples = pd.DataFrame({"source": np.repeat(np.arange(4), 3), "view": np.tile(np.arange(3), 4)})
    return catalog, samples, views


def test_each_image_is_decoded_once_and_the_features_equal_view_by_view_ones(backbone, study, tmp_path: Path,
                                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    catalog, samples, views = study
    reads: list[str] = []
    original = dataset_module.read_image
    monkeypatch.setattr(dataset_module, "read_image", lambda path: reads.append(str(path)) or original(path))
    cache = FeatureCache(tmp_path, backbone.fingerprint)
    features = extract_features(backbone, catalog, samples, cache, ViewPass(views, batch_size=5, num_workers=0))
    assert sorted(reads) == sorted(catalog["path"])  # 4 decodes for 12 views
    keys, paths = catalog["sha1"].tolist(), catalog["path"].tolist()
    one_by_one = [backbone.preprocess(views.apply(original(paths[s]), v, keys[s]))
                  for s, v in zip(samples["source"], samples["view"], strict=True)]
    expected = backbone.embed(torch.stack(one_by_one)).numpy()
    assert features.shape == (12, backbone.num_features)
    assert np.allclose(features, expected, atol=1e-5)
    assert (cache.hits, cache.misses) == (0, 12)


def test_a_second_pass_reads_everything_from_the_cache(backbone, study, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    catalog, samples, views = study
    first = extract_features(backbone, catalog, samples, FeatureCache(tmp_path, "bb"), ViewPass(views, 4, 0))
    monkeypatch.setattr(dataset_module, "read_image", lambda path: pytest.fail("a warm pass decoded an image"))
    cache = FeatureCache(tmp_path, "bb")
    again = extract_features(backbone, catalog, samples, cache, ViewPass(views, 4, 0))
    assert np.array_equal(first, again) and (cache.hits, cache.misses) == (12, 0)


def test_only_missing_views_run_and_a_worker_process_gives_the_same_features(backbone, study, tmp_path: Path) -> None:
    catalog, samples, views = study
    cache = FeatureCache(tmp_path, "bb")
    part = extract_features(backbone, catalog, samples.iloc[:5], cache, ViewPass(views, 4, 0))
    cache = FeatureCache(tmp_path, "bb")
    whole = extract_features(backbone, catalog, samples, cache, ViewPass(views, 4, num_workers=1))
    assert (cache.hits, cache.misses) == (5, 7)
    assert np.array_equal(whole[:5], part)
    alone = extract_features(backbone, catalog, samples, None, ViewPass(views, 4, 0))
    assert np.allclose(whole, alone, atol=1e-5)


def test_a_cache_that_cannot_be_written_keeps_the_features_in_memory(backbone, study, tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch,
                                                                      caplog: pytest.LogCaptureFixture) -> None:
    import errno

    catalog, samples, views = study
    cache = FeatureCache(tmp_path, "bb")

    def read_only(*args: object) -> None:
        raise OSError(errno.EROFS, "Read-only file system", str(tmp_path / "bb"))

    monkeypatch.setattr("leukexp.features.cache.write_tensors", read_only)
    features = extract_features(backbone, catalog, samples, cache, ViewPass(views, 4, 0))
    alone = extract_features(backbone, catalog, samples, None, ViewPass(views, 4, 0))
    assert np.allclose(features, alone, atol=1e-5)
    assert "Read-only file system" in cache.unwritable
    assert [r.message for r in caplog.records].count(next(r.message for r in caplog.records
                                                          if "cannot be written" in r.message)) == 1


def test_non_finite_backbone_features_are_one_line_naming_an_image(backbone, study, monkeypatch) -> None:
    catalog, samples, views = study
    monkeypatch.setattr(backbone, "embed_on_device",
                        lambda batch: torch.full((len(batch), backbone.num_features), float("nan")))
    with pytest.raises(LeukexpError, match=r"gave NaN or infinite features for .* e\.g\. of .*png"):
        extract_features(backbone, catalog, samples, None, ViewPass(views, 4, 0))


def test_stain_normalized_features_are_cached_apart_and_computed_from_normalized_images(backbone, study,
                                                                                         tmp_path: Path) -> None:
    from leukexp.data.stain import NoStain, Reinhard

    catalog, samples, views = study
    reinhard = Reinhard()
    reinhard.fit([np.full((8, 8, 3), (200, 120, 150), np.uint8) + np.arange(64, dtype=np.uint8).reshape(8, 8, 1)])
    plain, = part_caches(backbone, tmp_path, NoStain())
    normalized, = part_caches(backbone, tmp_path, reinhard)
    assert plain.folder.name == part_caches(backbone, tmp_path)[0].folder.name, "no normalization: keys unchanged"
    assert normalized.folder != plain.folder and normalized.folder.name.endswith(reinhard.fingerprint())
    raw = extract_features(backbone, catalog, samples, plain, ViewPass(views, num_workers=0))
    stained = extract_features(backbone, catalog, samples, normalized, ViewPass(views, num_workers=0, stain=reinhard))
    assert not np.allclose(raw, stained), "the backbone saw the normalized images"
    assert (plain.misses, normalized.misses) == (12, 12)


def test_a_process_that_finds_another_extracting_waits_and_computes_nothing(backbone, study, tmp_path: Path,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    import threading

    catalog, samples, views = study
    held, looked = threading.Event(), threading.Event()
    other = FeatureCache(tmp_path, "bb")  # "another process": its own lock handle on the same folder

    def extract_elsewhere() -> None:
        with other.claim():
            held.set()
            looked.wait(30)  # the main extraction has read the cache (all misses) and now asks for the lock
            values = extract_features(backbone, catalog, samples, None, ViewPass(views, 4, 0))
            keys = catalog["sha1"].to_numpy()
            for (source, view), value in zip(samples[["source", "view"]].to_numpy(), values, strict=True):
                put_pairs(other, [(keys[source], views.view_fingerprint(int(view)))], value)
            other.flush()

    worker = threading.Thread(target=extract_elsewhere)
    worker.start()
    held.wait(30)
    mine = FeatureCache(tmp_path, "bb")
    real_claim = mine.claim
    monkeypatch.setattr(mine, "claim", lambda *args, **kwargs: looked.set() or real_claim(*args, **kwargs))
    original = dataset_module.read_image
    main = threading.current_thread()

    def read(path: str):
        assert threading.current_thread() is not main, "the waiting process decoded an image"
        return original(path)

    monkeypatch.setattr(dataset_module, "read_image", read)
    features = extract_features(backbone, catalog, samples, mine, ViewPass(views, 4, 0))
    worker.join()
    assert (mine.hits, mine.misses) == (12, 0), "misses count only what this process computed"
    assert features.shape == (12, backbone.num_features) and np.isfinite(features).all() and features.any()
