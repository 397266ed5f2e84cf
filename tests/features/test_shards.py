"""The shard file: a hostile file is refused before anything is read or allocated, the first layout still reads."""

import json
import os
import struct
from pathlib import Path

import numpy as np
import pytest
from stores import get_pairs, put_pairs, stored_pairs, write_good

from leukexp.features.cache import FeatureCache
from leukexp.features.shards import DamagedShardError, Shard, write_tensors


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
    put_pairs(other, keys, values)
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
    read, found = get_pairs(reader, [*keys, ("ff" * 20, "v")], 4)  # returns: nothing blocked, nothing allocated
    assert found.tolist() == [True] * len(keys) + [False] and np.array_equal(read[:-1], values)
    warnings = [r.message for r in caplog.records if "part-0-hostile" in r.message]
    assert len(warnings) == 1 and "moved to" in warnings[0], warnings
    assert not bad.exists() and len(list((tmp_path / "bb" / "quarantine").iterdir())) == 1
    again = FeatureCache(tmp_path, "bb")
    get_pairs(again, keys, 4)
    assert (again.hits, again.misses) == (len(keys), 0)
    assert len([r for r in caplog.records if "part-0-hostile" in r.message]) == 1, "quarantined once, not again"


def test_a_shard_of_the_first_layout_is_still_read(tmp_path: Path) -> None:
    from safetensors.numpy import save_file

    keys, values = stored_pairs(3)
    (tmp_path / "bb").mkdir()
    save_file({"values": values}, str(tmp_path / "bb" / "part-1-old.safetensors"),
              metadata={"keys": json.dumps([f"{image}_{view}" for image, view in keys])})
    read, found = get_pairs(FeatureCache(tmp_path, "bb"), keys, 4)
    assert found.all() and np.array_equal(read, values)


def test_a_written_shard_reads_back_and_a_short_one_says_why(tmp_path: Path) -> None:
    _, values = stored_pairs(5)
    path = tmp_path / "part-1-a.safetensors"
    write_tensors(path, {"keys": np.arange(5, dtype=np.uint64), "values": values})
    shard = Shard(path)
    assert shard.shape == (5, 4) and shard.codes.tolist() == list(range(5)) and np.array_equal(shard.values, values)
    path.write_bytes(path.read_bytes()[:40])
    with pytest.raises(DamagedShardError, match=r"does not fit its 40-byte file|header claims"):
        Shard(path)
