"""Row reads: scattered, consecutive and float16 rows land in their places exactly as fancy indexing puts them."""

from pathlib import Path

import numpy as np
import pytest

from leukexp.features import rows as rows_module
from leukexp.features.rows import copy_rows, finite_rows, stream_rows
from leukexp.features.shards import Shard, write_tensors


def wanted(count: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Sorted rows (runs and gaps) and the shuffled places they go to."""
    generator = np.random.default_rng(seed)
    rows = np.sort(np.concatenate([np.arange(10, 60), generator.choice(np.arange(60, count), 40, replace=False)]))
    return rows, generator.permutation(len(rows))


@pytest.mark.parametrize("storage", [np.float32, np.float16])
def test_streamed_and_copied_rows_match_fancy_indexing(tmp_path: Path, storage: type,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(rows_module, "STREAM_BYTES", 1024)  # many stretches and buffer refills
    values = np.arange(300 * 8, dtype=np.float32).reshape(300, 8).astype(storage)
    write_tensors(tmp_path / "s.safetensors", {"keys": np.arange(300, dtype=np.uint64), "values": values})
    shard = Shard(tmp_path / "s.safetensors")
    rows, places = wanted(300)
    order = np.argsort(places)
    expected = np.zeros((len(rows), 8), np.float32)
    expected[places] = values[rows]
    for read in (stream_rows, lambda s, r, t, w: copy_rows(s.values, r, t, w)):
        target = np.zeros((len(rows), 8), np.float32)
        read(shard, rows, target, places)
        assert np.array_equal(target, expected)
        target = np.zeros((len(rows), 8), np.float32)
        read(shard, rows[order][np.argsort(rows[order])], target, np.arange(len(rows)))  # one long run
        assert np.array_equal(target, values[rows].astype(np.float32))


def test_finite_rows_flags_only_rows_with_nan_or_inf() -> None:
    values = np.ones((5, 3), np.float32)
    values[1, 2], values[3, 0] = np.nan, -np.inf
    assert finite_rows(values).tolist() == [True, False, True, False, True]
