"""The feature store: shard files with an index, float16, concurrent writers, lock buckets, older layouts."""

import multiprocessing as mp
from pathlib import Path

import numpy as np
import pytest

from leukexp.features import cache as cache_module
from leukexp.features.cache import LOCK_BUCKETS, FeatureCache, bucket_of


def get(cache: FeatureCache, key: str, view: str, width: int) -> np.ndarray | None:
    values, found = cache.get_many([(key, view)], width)
    return values[0] if found[0] else None


def test_miss_then_hit_after_the_shard_is_written(tmp_path: Path) -> None:
    cache = FeatureCache(tmp_path, "bb")
    assert get(cache, "ab12", "original", 4) is None
    cache.put("ab12", "original", np.arange(4, dtype=np.float32))
    assert get(FeatureCache(tmp_path, "bb"), "ab12", "original", 4) is None, "queued, not written yet"
    cache.flush()
    assert np.array_equal(get(cache, "ab12", "original", 4), np.arange(4))
    assert (cache.hits, cache.misses) == (1, 1)
    assert cache.size_bytes() > 0 and cache.files() == 1 and cache.entry_count() == 1


def test_keys_separate_backbones_views_and_storage(tmp_path: Path) -> None:
    one = FeatureCache(tmp_path, "one")
    one.put("ab12", "v1", np.ones(3))
    one.flush()
    assert get(FeatureCache(tmp_path, "two"), "ab12", "v1", 3) is None
    assert get(FeatureCache(tmp_path, "one"), "ab12", "v2", 3) is None
    assert get(FeatureCache(tmp_path, "one", "float16"), "ab12", "v1", 3) is None
    with pytest.raises(ValueError, match="float32 or float16"):
        FeatureCache(tmp_path, "one", "int8")


def test_entries_are_grouped_in_few_shard_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cache_module, "SHARD_ENTRIES", 1000)
    cache = FeatureCache(tmp_path, "bb")
    values = np.random.default_rng(0).normal(size=(2500, 8)).astype(np.float32)
    keys = [(f"{i:08x}", "original") for i in range(2500)]
    for start in range(0, 2500, 16):  # as the extraction writes: a batch at a time
        cache.put_many(keys[start:start + 16], values[start:start + 16])
    cache.flush()
    assert cache.files() == 3, "one file per 1,000 entries, not one per entry"
    shuffled = np.random.default_rng(1).permutation(2500)
    reader = FeatureCache(tmp_path, "bb")
    read, found = reader.get_many([keys[i] for i in shuffled], 8)
    assert found.all() and np.array_equal(read, values[shuffled])


def test_float16_storage_halves_the_bytes_and_keeps_the_values_close(tmp_path: Path) -> None:
    values = np.random.default_rng(0).normal(size=(200, 64)).astype(np.float32)
    keys = [(f"{i:08x}", "v") for i in range(200)]
    sizes = {}
    for storage in ("float32", "float16"):
        cache = FeatureCache(tmp_path, "bb", storage)
        cache.put_many(keys, values)
        cache.flush()
        read, found = FeatureCache(tmp_path, "bb", storage).get_many(keys, 64)
        assert found.all() and read.dtype == np.float32
        sizes[storage] = cache.size_bytes()
        tolerance = 0 if storage == "float32" else 2e-3
        assert np.allclose(read, values, atol=tolerance, rtol=tolerance)
    assert sizes["float16"] < 0.6 * sizes["float32"]


def test_a_failed_write_leaves_no_shard(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache = FeatureCache(tmp_path, "bb")
    cache.put("ab12", "original", np.ones(3))

    def explode(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt("killed mid-write")

    monkeypatch.setattr("leukexp.features.cache.memoryview", explode, raising=False)
    with pytest.raises(KeyboardInterrupt):
        cache.flush()
    monkeypatch.undo()
    assert get(FeatureCache(tmp_path, "bb"), "ab12", "original", 3) is None
    assert not [p for p in tmp_path.rglob("*") if p.is_file() and not p.name.endswith(".lock")]


def test_damaged_shards_count_as_misses(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    cache = FeatureCache(tmp_path, "bb")
    cache.put_many([("aa11", "v"), ("bb22", "v")], np.ones((2, 4)))
    cache.flush()
    (tmp_path / "bb" / "part-1-cut.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{broken")
    _, found = FeatureCache(tmp_path, "bb").get_many([("aa11", "v"), ("cc33", "v")], 4)
    assert found.tolist() == [True, False] and "unreadable" in caplog.text
    _, other_width = FeatureCache(tmp_path, "bb").get_many([("aa11", "v")], 5)
    assert not other_width.any(), "another width is a miss"


def _writer(root: str, offset: int) -> None:
    cache = FeatureCache(root, "bb")
    for _ in range(3):
        cache.put_many([(f"{key:04x}", "v") for key in range(20)], np.repeat(np.arange(20.0)[:, None], 256, 1))
        cache.flush()


def test_two_processes_writing_the_same_entries(tmp_path: Path) -> None:
    context = mp.get_context("spawn")
    workers = [context.Process(target=_writer, args=(str(tmp_path), i)) for i in range(2)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
        assert worker.exitcode == 0
    cache = FeatureCache(tmp_path, "bb")
    values, found = cache.get_many([(f"{key:04x}", "v") for key in range(20)], 256)
    assert found.all() and np.array_equal(values, np.repeat(np.arange(20.0)[:, None], 256, 1))
    assert cache.files() == 6 and not [p for p in tmp_path.rglob("*.tmp")]


def test_a_non_finite_entry_is_a_miss(tmp_path: Path) -> None:
    cache = FeatureCache(tmp_path, "bb")
    cache.put_many([("aa11", "v0"), ("bb22", "v0"), ("cc33", "v0")],
                   np.array([[1.0, 1, 1, 1], [1.0, np.nan, 0.0, 2.0], [np.inf, 0.0, 0.0, 2.0]]))
    cache.flush()
    values, found = cache.get_many([("aa11", "v0"), ("bb22", "v0"), ("cc33", "v0")], width=4)
    assert found.tolist() == [True, False, False] and not values[1:].any()


def test_an_older_one_file_per_entry_cache_is_one_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    legacy = tmp_path / "bb" / "ab"
    legacy.mkdir(parents=True)
    np.save(legacy / "ab12_original.npy", np.ones(3, np.float32))
    cache = FeatureCache(tmp_path, "bb")
    _, found = cache.get_many([("ab12", "original")], 3)
    cache.get_many([("ab12", "original")], 3)
    assert not found.any()
    warnings = [r.message for r in caplog.records if "older one-file-per-entry" in r.message]
    assert len(warnings) == 1 and "make clean-cache" in warnings[0]


def test_lock_buckets_split_and_wait(tmp_path: Path) -> None:
    import hashlib

    keys = [hashlib.sha1(str(i).encode()).hexdigest() for i in range(200)]
    assert {bucket_of(key) for key in keys} == set(range(LOCK_BUCKETS)), "image hashes spread over every bucket"
    first, second = FeatureCache(tmp_path, "bb"), FeatureCache(tmp_path, "bb")
    with first.claim([0, 1, 2], wait=False) as held:
        assert held == [0, 1, 2]
        with second.claim([1, 2, 3, 4], wait=False) as other:
            assert other == [3, 4], "a second process takes only what is free"
    with second.claim([0, 1]) as again:
        assert again == [0, 1], "released when the block ends"


def test_the_extraction_lock_is_released_when_its_holder_is_killed(tmp_path: Path) -> None:
    import signal
    import subprocess
    import sys
    import threading

    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from leukexp.features.cache import FeatureCache\n"
         f"with FeatureCache({str(tmp_path)!r}, 'bb').claim():\n    print('held', flush=True); time.sleep(120)"],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        result: list[bool] = []
        waiting = threading.Thread(target=lambda: result.append(FeatureCache(tmp_path, "bb").claim().__enter__()))
        waiting.start()
        waiting.join(1.0)
        assert waiting.is_alive(), "the lock is held: the second claim waits"
        holder.send_signal(signal.SIGKILL)
        waiting.join(20)
        assert result == [list(range(LOCK_BUCKETS))], "kill -9 of the holder releases the lock; the waiter goes on"
    finally:
        holder.kill()
        holder.wait()
