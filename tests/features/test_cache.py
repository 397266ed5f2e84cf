"""The feature cache: hits, misses, atomic writes, concurrent writers."""

import multiprocessing as mp
from pathlib import Path

import numpy as np
import pytest

from leukexp.features.cache import FeatureCache


def test_miss_then_hit(tmp_path: Path) -> None:
    cache = FeatureCache(tmp_path, "bb")
    assert cache.get("ab12", "original") is None
    cache.put("ab12", "original", np.arange(4, dtype=np.float32))
    assert np.array_equal(cache.get("ab12", "original"), np.arange(4))
    assert (cache.hits, cache.misses) == (1, 1)
    assert cache.size_bytes() > 0


def test_keys_separate_backbones_and_views(tmp_path: Path) -> None:
    FeatureCache(tmp_path, "one").put("ab12", "v1", np.ones(3))
    assert FeatureCache(tmp_path, "two").get("ab12", "v1") is None
    assert FeatureCache(tmp_path, "one").get("ab12", "v2") is None


def test_a_failed_write_leaves_no_entry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache = FeatureCache(tmp_path, "bb")

    def explode(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt("killed mid-write")

    monkeypatch.setattr("leukexp.features.cache._npy_header", explode)
    with pytest.raises(KeyboardInterrupt):
        cache.put("ab12", "original", np.ones(3))
    monkeypatch.undo()
    assert cache.get("ab12", "original") is None
    assert not list(tmp_path.rglob("*")) or not [p for p in tmp_path.rglob("*") if p.is_file()]


def test_truncated_entry_counts_as_a_miss(tmp_path: Path) -> None:
    cache = FeatureCache(tmp_path, "bb")
    cache.put("ab12", "original", np.ones(3))
    cache.path("ab12", "original").write_bytes(b"\x93NUMPY")
    assert cache.get("ab12", "original") is None


def _writer(root: str, offset: int) -> None:
    cache = FeatureCache(root, "bb")
    for _ in range(30):
        for key in range(20):
            cache.put(f"{key:04x}", "v", np.full(256, key, np.float32))


def test_two_processes_writing_the_same_entries(tmp_path: Path) -> None:
    context = mp.get_context("spawn")
    workers = [context.Process(target=_writer, args=(str(tmp_path), i)) for i in range(2)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
        assert worker.exitcode == 0
    cache = FeatureCache(tmp_path, "bb")
    for key in range(20):
        assert np.array_equal(cache.get(f"{key:04x}", "v"), np.full(256, key, np.float32))
    assert not [p for p in tmp_path.rglob("*.tmp")]


def test_an_entry_holds_exactly_what_np_save_writes(tmp_path: Path) -> None:
    import io

    value = np.random.default_rng(0).normal(size=1280).astype(np.float32)
    FeatureCache(tmp_path, "bb").put("ab12", "v", value)
    buffer = io.BytesIO()
    np.save(buffer, value, allow_pickle=False)
    assert FeatureCache(tmp_path, "bb").path("ab12", "v").read_bytes() == buffer.getvalue()


def test_many_entries_at_once_with_hits_misses_and_foreign_entries(tmp_path: Path) -> None:
    cache = FeatureCache(tmp_path, "bb")
    for key in range(10):
        cache.put(f"{key:04x}", "v", np.full(6, key, np.float32))
    cache.path("0003", "v").write_bytes(b"not an array")  # unreadable: a miss
    np.save(cache.path("0004", "v"), np.full(6, 4.0))  # float64, written by someone else: read, as float32
    np.save(cache.path("0005", "v"), np.ones(7, np.float32))  # another width: a miss
    keys = [(f"{key:04x}", "v") for key in range(12)]  # 10 and 11 were never written
    reader = FeatureCache(tmp_path, "bb")
    values, found = reader.get_many(keys, 6, threads=3)
    assert found.tolist() == [True] * 3 + [False, True, False] + [True] * 4 + [False, False]
    assert np.array_equal(values[found][:, 0], [0, 1, 2, 4, 6, 7, 8, 9]) and not values[~found].any()
    assert (reader.hits, reader.misses) == (8, 4)


def test_a_non_finite_entry_is_a_miss(tmp_path: Path) -> None:
    cache = FeatureCache(tmp_path, "bb")
    cache.put("aa11", "v0", np.ones(4))
    cache.put("bb22", "v0", np.array([1.0, np.nan, 0.0, 2.0]))
    cache.put("cc33", "v0", np.array([np.inf, 0.0, 0.0, 2.0]))
    values, found = cache.get_many([("aa11", "v0"), ("bb22", "v0"), ("cc33", "v0")], width=4)
    assert found.tolist() == [True, False, False]
    assert np.isfinite(values).all() and (cache.hits, cache.misses) == (1, 2)
