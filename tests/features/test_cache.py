"""The feature store: misses then hits, float16, quarantine of NaN rows, compaction, concurrent writers, old layouts."""

import multiprocessing as mp
from pathlib import Path

import numpy as np
import pytest
from stores import get_pairs, put_pairs, stored_pairs

from leukexp.features import cache as cache_module
from leukexp.features.cache import FeatureCache
from leukexp.features.codes import entry_codes
from leukexp.features.shards import write_tensors


def get(cache: FeatureCache, key: str, view: str, width: int) -> np.ndarray | None:
    values, found = get_pairs(cache, [(key, view)], width)
    return values[0] if found[0] else None


def test_miss_then_hit_after_the_shard_is_written(tmp_path: Path) -> None:
    cache = FeatureCache(tmp_path, "bb")
    assert get(cache, "ab12", "original", 4) is None
    put_pairs(cache, [("ab12", "original")], np.arange(4, dtype=np.float32))
    assert get(FeatureCache(tmp_path, "bb"), "ab12", "original", 4) is None, "queued, not written yet"
    cache.flush()
    assert np.array_equal(get(cache, "ab12", "original", 4), np.arange(4))
    assert (cache.hits, cache.misses) == (1, 1)
    assert cache.size_bytes() > 0 and cache.files() == 1 and cache.entry_count() == 1


def test_keys_separate_backbones_views_and_storage(tmp_path: Path) -> None:
    one = FeatureCache(tmp_path, "one")
    put_pairs(one, [("ab12", "v1")], np.ones(3))
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
        put_pairs(cache, keys[start:start + 16], values[start:start + 16])
    cache.flush()
    assert cache.files() == 3, "one file per 1,000 entries, not one per entry"
    shuffled = np.random.default_rng(1).permutation(2500)
    reader = FeatureCache(tmp_path, "bb")
    read, found = get_pairs(reader, [keys[i] for i in shuffled], 8)
    assert found.all() and np.array_equal(read, values[shuffled])


def test_float16_storage_halves_the_bytes_and_keeps_the_values_close(tmp_path: Path) -> None:
    values = np.random.default_rng(0).normal(size=(200, 64)).astype(np.float32)
    keys = [(f"{i:08x}", "v") for i in range(200)]
    sizes = {}
    for storage in ("float32", "float16"):
        cache = FeatureCache(tmp_path, "bb", storage)
        put_pairs(cache, keys, values)
        cache.flush()
        read, found = get_pairs(FeatureCache(tmp_path, "bb", storage), keys, 64)
        assert found.all() and read.dtype == np.float32
        sizes[storage] = cache.size_bytes()
        tolerance = 0 if storage == "float32" else 2e-3
        assert np.allclose(read, values, atol=tolerance, rtol=tolerance)
    assert sizes["float16"] < 0.6 * sizes["float32"]


def test_a_failed_write_leaves_no_shard(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache = FeatureCache(tmp_path, "bb")
    put_pairs(cache, [("ab12", "original")], np.ones(3))

    real = np.ascontiguousarray

    def explode(array: np.ndarray) -> np.ndarray:
        if array.dtype == np.float32:  # the values, after the header and the keys are written
            raise KeyboardInterrupt("killed mid-write")
        return real(array)

    monkeypatch.setattr(np, "ascontiguousarray", explode)
    with pytest.raises(KeyboardInterrupt):
        cache.flush()
    monkeypatch.undo()
    assert get(FeatureCache(tmp_path, "bb"), "ab12", "original", 3) is None
    assert not [p for p in tmp_path.rglob("*") if p.is_file() and not p.name.endswith(".lock")]


@pytest.mark.parametrize("name", ["part-0-aaaa.safetensors", "part-9-zzzz.safetensors"])
def test_nan_rows_are_reported_and_computed_again_once_whatever_the_name_sorts_as(
        tmp_path: Path, caplog: pytest.LogCaptureFixture, name: str) -> None:
    keys, values = stored_pairs(4)
    damaged = values.copy()
    damaged[1, 2] = np.nan
    write_tensors(tmp_path / "bb" / name, {"keys": entry_codes(*zip(*keys, strict=True)), "values": damaged})
    cache = FeatureCache(tmp_path, "bb")
    _, found = get_pairs(cache, keys, 4)
    assert found.tolist() == [True, False, True, True]
    assert sum("NaN or infinite rows" in r.message for r in caplog.records) == 1
    # the run computes the miss (here: the three quarantined good ones come back too) and writes it
    _, found = get_pairs(cache, keys, 4)
    put_pairs(cache, [keys[i] for i in np.flatnonzero(~found)], values[~found])
    cache.flush()
    for _ in range(2):  # later processes: every entry found, nothing computed again
        later = FeatureCache(tmp_path, "bb")
        read, found = get_pairs(later, keys, 4)
        assert found.all() and np.array_equal(read, values) and later.misses == 0


def test_compaction_merges_small_shards_while_a_reader_reads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cache_module, "SHARD_ENTRIES", 50)
    keys, values = stored_pairs(400)
    writer = FeatureCache(tmp_path, "bb")
    put_pairs(writer, keys, values)
    put_pairs(writer, keys[:10], values[:10])  # written twice (two jobs): kept once by compaction
    writer.flush()
    assert writer.files() == 9
    reader = FeatureCache(tmp_path, "bb")
    assert get_pairs(reader, keys, 4)[1].all()  # indexed before the compaction
    assert FeatureCache(tmp_path, "bb").compact() == 8
    assert writer.files() == 1 and FeatureCache(tmp_path, "bb").entry_count() == 400
    read, found = get_pairs(reader, keys[::-1], 4)  # its shards are gone: it reads the folder again
    assert found.all() and np.array_equal(read, values[::-1]) and reader.misses == 0


def test_a_long_pass_is_written_in_pieces(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    keys, values = stored_pairs(30)
    cache = FeatureCache(tmp_path, "bb")
    put_pairs(cache, keys[:10], values[:10])
    assert cache.files() == 0, "a young queue waits for a full shard"
    monkeypatch.setattr(cache_module, "FLUSH_SECONDS", 0.0)
    put_pairs(cache, keys[10:20], values[10:20])
    assert cache.files() == 1, "a queue older than FLUSH_SECONDS is written: a kill loses one piece at most"
    assert get_pairs(FeatureCache(tmp_path, "bb"), keys[:20], 4)[1].all()


def _writer(root: str, offset: int) -> None:
    cache = FeatureCache(root, "bb")
    for _ in range(3):
        put_pairs(cache, [(f"{key:04x}", "v") for key in range(20)], np.repeat(np.arange(20.0)[:, None], 256, 1))
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
    values, found = get_pairs(cache, [(f"{key:04x}", "v") for key in range(20)], 256)
    assert found.all() and np.array_equal(values, np.repeat(np.arange(20.0)[:, None], 256, 1))
    assert cache.files() == 6 and not [p for p in tmp_path.rglob("*.tmp")]


def test_a_non_finite_entry_is_a_miss(tmp_path: Path) -> None:
    cache = FeatureCache(tmp_path, "bb")
    put_pairs(cache, [("aa11", "v0"), ("bb22", "v0"), ("cc33", "v0")],
                   np.array([[1.0, 1, 1, 1], [1.0, np.nan, 0.0, 2.0], [np.inf, 0.0, 0.0, 2.0]]))
    cache.flush()
    values, found = get_pairs(cache, [("aa11", "v0"), ("bb22", "v0"), ("cc33", "v0")], width=4)
    assert found.tolist() == [True, False, False] and not values[1:].any()


def test_an_older_one_file_per_entry_cache_is_one_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    legacy = tmp_path / "bb" / "ab"
    legacy.mkdir(parents=True)
    np.save(legacy / "ab12_original.npy", np.ones(3, np.float32))
    cache = FeatureCache(tmp_path, "bb")
    _, found = get_pairs(cache, [("ab12", "original")], 3)
    get_pairs(cache, [("ab12", "original")], 3)
    assert not found.any()
    warnings = [r.message for r in caplog.records if "older one-file-per-entry" in r.message]
    assert len(warnings) == 1 and "make clean-cache" in warnings[0]


