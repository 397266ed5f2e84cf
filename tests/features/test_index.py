"""The store's index: used when it is current, never trusted when stale or edited; lookups of many codes at once."""

from pathlib import Path

import numpy as np
import pytest
from stores import get_pairs, put_pairs, stored_pairs

from leukexp.features import cache as cache_module
from leukexp.features.cache import FeatureCache
from leukexp.features.index import INDEX_NAME, CodeIndex
from leukexp.features.shards import Shard


def test_the_folders_index_is_used_and_a_stale_one_is_not_trusted(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cache_module, "SHARD_ENTRIES", 100)
    keys, values = stored_pairs(250)
    writer = FeatureCache(tmp_path, "bb")
    put_pairs(writer, keys, values)
    writer.flush()
    writer.save_index()
    assert (tmp_path / "bb" / INDEX_NAME).exists() and writer.files() == 3
    opened: list[str] = []
    original = cache_module.FeatureCache._add
    monkeypatch.setattr(cache_module.FeatureCache, "_add", lambda self, names: opened.extend(names)
                        or original(self, names))
    reader = FeatureCache(tmp_path, "bb")
    read, found = get_pairs(reader, keys[::-1], 4)
    assert found.all() and np.array_equal(read, values[::-1])
    assert opened == [], "every shard came from the index: none indexed again"
    extra = FeatureCache(tmp_path, "bb")
    put_pairs(extra, [("ab" * 20, "v")], np.ones((1, 4)))
    extra.flush()
    newest = FeatureCache(tmp_path, "bb")
    assert get_pairs(newest, [("ab" * 20, "v"), keys[0]], 4)[1].all() and len(opened) == 1, "only the new shard"
    full = next(path for path in (tmp_path / "bb").glob("part-*") if Shard(path).shape[0] == 100)
    full.unlink()
    stale = FeatureCache(tmp_path, "bb")  # the index lists a shard that is gone: the shards are indexed instead
    assert get_pairs(stale, keys, 4)[1].sum() == 150


def test_an_index_whose_rows_were_edited_never_hands_an_image_another_images_features(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from safetensors import safe_open

    keys, values = stored_pairs(50)
    writer = FeatureCache(tmp_path, "bb")
    put_pairs(writer, keys, values)
    writer.flush()
    writer.save_index()
    index = tmp_path / "bb" / INDEX_NAME
    with safe_open(str(index), "np") as handle:
        arrays = {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118 (not a dict)
        metadata = handle.metadata()
    arrays["row"][[0, 1]] = arrays["row"][[1, 0]]  # two entries swapped: sorted, in range, and wrong
    cache_module.write_tensors(index, arrays, metadata)
    read, found = get_pairs(FeatureCache(tmp_path, "bb"), keys, 4)
    assert found.all() and np.array_equal(read, values), "the shards' own keys decided"
    assert "its index names rows whose codes differ" in caplog.text


def test_lookup_finds_the_first_copy_and_misses_the_rest(tmp_path: Path) -> None:
    from leukexp.features.shards import write_tensors

    codes = np.array([5, 1 << 63, 7, 5, (1 << 64) - 1], np.uint64)
    write_tensors(tmp_path / "a.safetensors", {"keys": codes, "values": np.zeros((5, 2), np.float32)})
    index = CodeIndex()
    index.add([("a.safetensors", Shard(tmp_path / "a.safetensors")), ("gone.safetensors", None)])
    at = index.lookup(np.array([7, 5, 6, (1 << 64) - 1], np.uint64))
    assert index.codes[at[[0, 1, 3]]].tolist() == [7, 5, (1 << 64) - 1] and at[2] == -1
    assert index.row_of[at[1]] == 0, "an entry stored twice: its first copy"
    assert index.names == {"a.safetensors": 0, "gone.safetensors": -1}
