"""The feature store: shard files with an index, float16, concurrent writers, lock buckets, older layouts."""

import hashlib
import json
import multiprocessing as mp
import os
import struct
from pathlib import Path

import numpy as np
import pytest

from leukexp.errors import LeukexpError
from leukexp.features import cache as cache_module
from leukexp.features.cache import (
    INDEX_NAME,
    LOCK_BUCKETS,
    FeatureCache,
    Shard,
    bucket_of,
    entry_codes,
    write_tensors,
)


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


def stored_pairs(count: int, width: int = 4, view: str = "v") -> tuple[list[tuple[str, str]], np.ndarray]:
    keys = [(hashlib.sha1(str(i).encode()).hexdigest(), view) for i in range(count)]
    return keys, np.arange(count * width, dtype=np.float32).reshape(count, width)


def write_good(tmp_path: Path, count: int = 6) -> tuple[list[tuple[str, str]], np.ndarray]:
    keys, values = stored_pairs(count)
    cache = FeatureCache(tmp_path, "bb")
    cache.put_many(keys, values)
    cache.flush()
    return keys, values


def hostile_header(claim: int) -> bytes:
    return struct.pack("<Q", claim) + b"{}"


def forty_gib_tensor() -> bytes:
    header = json.dumps({"keys": {"dtype": "U64", "shape": [10_000_000], "data_offsets": [0, 80_000_000]},
                         "values": {"dtype": "F32", "shape": [10_000_000, 1024],
                                    "data_offsets": [80_000_000, 80_000_000 + 40 * 2**30]}}).encode()
    return struct.pack("<Q", len(header)) + header + b"\0" * 64


def truncated_shard(tmp_path: Path) -> bytes:
    other = FeatureCache(tmp_path / "scratch", "bb")
    keys, values = stored_pairs(40, view="w")
    other.put_many(keys, values)
    other.flush()
    return next((tmp_path / "scratch" / "bb").glob("part-*")).read_bytes()[:-100]


@pytest.mark.parametrize("damage", ["2^62 header", "40 GiB tensor", "not JSON", "truncated", "link out",
                                    "fifo", "folder"])
def test_a_hostile_shard_is_quarantined_with_one_warning_and_the_rest_is_read(
        tmp_path: Path, caplog: pytest.LogCaptureFixture, damage: str) -> None:
    keys, values = write_good(tmp_path)
    bad = tmp_path / "bb" / "part-0-hostile.safetensors"
    if damage == "2^62 header":
        bad.write_bytes(hostile_header(2**62))
    elif damage == "40 GiB tensor":
        bad.write_bytes(forty_gib_tensor())
    elif damage == "not JSON":
        bad.write_bytes(struct.pack("<Q", 6) + b"\xff\xfe{]]]")
    elif damage == "truncated":
        bad.write_bytes(truncated_shard(tmp_path))
    elif damage == "link out":
        secret = tmp_path / "secret.txt"
        secret.write_text("not yours")
        bad.symlink_to(secret)
    elif damage == "fifo":
        os.mkfifo(bad)  # opening it for reading would block forever
    else:
        bad.mkdir()
    reader = FeatureCache(tmp_path, "bb")
    read, found = reader.get_many([*keys, ("ff" * 20, "v")], 4)  # returns: nothing blocked, nothing allocated
    assert found.tolist() == [True] * len(keys) + [False] and np.array_equal(read[:-1], values)
    warnings = [r.message for r in caplog.records if "part-0-hostile" in r.message]
    assert len(warnings) == 1 and "moved to" in warnings[0], warnings
    assert not bad.exists() and len(list((tmp_path / "bb" / "quarantine").iterdir())) == 1
    again = FeatureCache(tmp_path, "bb")
    again.get_many(keys, 4)
    assert (again.hits, again.misses) == (len(keys), 0)
    assert len([r for r in caplog.records if "part-0-hostile" in r.message]) == 1, "quarantined once, not again"


@pytest.mark.parametrize("name", ["part-0-aaaa.safetensors", "part-9-zzzz.safetensors"])
def test_nan_rows_are_reported_and_computed_again_once_whatever_the_name_sorts_as(
        tmp_path: Path, caplog: pytest.LogCaptureFixture, name: str) -> None:
    keys, values = stored_pairs(4)
    damaged = values.copy()
    damaged[1, 2] = np.nan
    write_tensors(tmp_path / "bb" / name, {"keys": entry_codes(*zip(*keys, strict=True)), "values": damaged})
    cache = FeatureCache(tmp_path, "bb")
    _, found = cache.get_many(keys, 4)
    assert found.tolist() == [True, False, True, True]
    assert sum("NaN or infinite rows" in r.message for r in caplog.records) == 1
    # the run computes the miss (here: the three quarantined good ones come back too) and writes it
    _, found = cache.get_many(keys, 4)
    cache.put_many([keys[i] for i in np.flatnonzero(~found)], values[~found])
    cache.flush()
    for _ in range(2):  # later processes: every entry found, nothing computed again
        later = FeatureCache(tmp_path, "bb")
        read, found = later.get_many(keys, 4)
        assert found.all() and np.array_equal(read, values) and later.misses == 0


def test_the_folders_index_is_used_and_a_stale_one_is_not_trusted(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cache_module, "SHARD_ENTRIES", 100)
    keys, values = stored_pairs(250)
    writer = FeatureCache(tmp_path, "bb")
    writer.put_many(keys, values)
    writer.flush()
    writer.save_index()
    assert (tmp_path / "bb" / INDEX_NAME).exists() and writer.files() == 3
    opened: list[str] = []
    original = cache_module.FeatureCache._add
    monkeypatch.setattr(cache_module.FeatureCache, "_add", lambda self, names: opened.extend(names)
                        or original(self, names))
    reader = FeatureCache(tmp_path, "bb")
    read, found = reader.get_many(keys[::-1], 4)
    assert found.all() and np.array_equal(read, values[::-1])
    assert opened == [], "every shard came from the index: none indexed again"
    extra = FeatureCache(tmp_path, "bb")
    extra.put_many([("ab" * 20, "v")], np.ones((1, 4)))
    extra.flush()
    newest = FeatureCache(tmp_path, "bb")
    assert newest.get_many([("ab" * 20, "v"), keys[0]], 4)[1].all() and len(opened) == 1, "only the new shard"
    full = next(path for path in (tmp_path / "bb").glob("part-*") if Shard(path).shape[0] == 100)
    full.unlink()
    stale = FeatureCache(tmp_path, "bb")  # the index lists a shard that is gone: the shards are indexed instead
    assert stale.get_many(keys, 4)[1].sum() == 150


def test_an_index_whose_rows_were_edited_never_hands_an_image_another_images_features(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from safetensors import safe_open

    keys, values = stored_pairs(50)
    writer = FeatureCache(tmp_path, "bb")
    writer.put_many(keys, values)
    writer.flush()
    writer.save_index()
    index = tmp_path / "bb" / INDEX_NAME
    with safe_open(str(index), "np") as handle:
        arrays = {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118 (not a dict)
        metadata = handle.metadata()
    arrays["row"][[0, 1]] = arrays["row"][[1, 0]]  # two entries swapped: sorted, in range, and wrong
    cache_module.write_tensors(index, arrays, metadata)
    read, found = FeatureCache(tmp_path, "bb").get_many(keys, 4)
    assert found.all() and np.array_equal(read, values), "the shards' own keys decided"
    assert "its index names rows whose codes differ" in caplog.text


def test_compaction_merges_small_shards_while_a_reader_reads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cache_module, "SHARD_ENTRIES", 50)
    keys, values = stored_pairs(400)
    writer = FeatureCache(tmp_path, "bb")
    writer.put_many(keys, values)
    writer.put_many(keys[:10], values[:10])  # written twice (two jobs): kept once by compaction
    writer.flush()
    assert writer.files() == 9
    reader = FeatureCache(tmp_path, "bb")
    assert reader.get_many(keys, 4)[1].all()  # indexed before the compaction
    assert FeatureCache(tmp_path, "bb").compact() == 8
    assert writer.files() == 1 and FeatureCache(tmp_path, "bb").entry_count() == 400
    read, found = reader.get_many(keys[::-1], 4)  # its shards are gone: it reads the folder again
    assert found.all() and np.array_equal(read, values[::-1]) and reader.misses == 0


def test_a_long_pass_is_written_in_pieces(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    keys, values = stored_pairs(30)
    cache = FeatureCache(tmp_path, "bb")
    cache.put_many(keys[:10], values[:10])
    assert cache.files() == 0, "a young queue waits for a full shard"
    monkeypatch.setattr(cache_module, "FLUSH_SECONDS", 0.0)
    cache.put_many(keys[10:20], values[10:20])
    assert cache.files() == 1, "a queue older than FLUSH_SECONDS is written: a kill loses one piece at most"
    assert FeatureCache(tmp_path, "bb").get_many(keys[:20], 4)[1].all()


def test_a_shard_of_the_first_layout_is_still_read(tmp_path: Path) -> None:
    from safetensors.numpy import save_file

    keys, values = stored_pairs(3)
    (tmp_path / "bb").mkdir()
    save_file({"values": values}, str(tmp_path / "bb" / "part-1-old.safetensors"),
              metadata={"keys": json.dumps([f"{image}_{view}" for image, view in keys])})
    read, found = FeatureCache(tmp_path, "bb").get_many(keys, 4)
    assert found.all() and np.array_equal(read, values)


def test_a_file_system_that_grants_every_flock_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    FeatureCache(tmp_path, "bb").check_locking()  # this disk refuses a second process: no error
    monkeypatch.setattr(cache_module, "_another_process_refused", lambda path: False)
    with pytest.raises(LeukexpError, match=r"features\.dir: the file system under .* does not honour flock.*NFSv4"):
        FeatureCache(tmp_path, "bb").check_locking()


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
