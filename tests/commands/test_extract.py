"""`leukexp-extract`: every fold's embeddings computed once, split into shards, resumable."""

from pathlib import Path

import numpy as np
import pytest
from hydra.core.global_hydra import GlobalHydra

from conftest import TINY_MODEL
from leukexp.commands.extract import ShardSpec, main
from leukexp.errors import LeukexpError
from leukexp.features.cache import FeatureCache
from leukexp.features.codes import entry_codes

SMALL = [*TINY_MODEL, "data.counts={ALL: 6, AML: 6, CLL: 6, CML: 6, HLT: 6}", "data.image_size=48",
         "augmentation=flips", "fold.n_splits=3", "fold.val_fraction=0.3"]


def test_shards_split_images_by_content_hash() -> None:
    keys = np.array([f"{i:08x}" + "0" * 32 for i in range(12)])
    shards = [ShardSpec(i, 3).keeps(keys) for i in range(3)]
    assert (np.sum(shards, axis=0) == 1).all(), "every image in exactly one shard"
    assert ShardSpec.parse("2/3") == ShardSpec(2, 3) and ShardSpec().keeps(keys).all()
    for bad in ("3/3", "1", "a/b", "0/0"):
        with pytest.raises(LeukexpError, match=f"--shard {bad}"):
            ShardSpec.parse(bad)


def entries(root: Path) -> set[int]:
    return {int(code) for folder in (root / "cache" / "features").iterdir() if folder.is_dir()
            for code in FeatureCache(folder.parent, folder.name).entry_codes()}


def needed(root: Path) -> set[int]:
    """What the folds' runs ask the cache for: training views, validation and test originals, per fold."""
    from conftest import compose, plan_of
    from leukexp.data.fold_data import build_fold_data

    wanted = set()
    for fold in range(3):
        fold_data = build_fold_data(plan_of(compose(root, *SMALL, f"fold.index={fold}")))
        keys = fold_data.catalog.frame["sha1"].to_numpy()
        for split in (fold_data.samples.train, fold_data.samples.val, fold_data.samples.test):
            views = [fold_data.augmentation.view_fingerprint(int(v)) for v in split["view"]]
            wanted |= {int(code) for code in entry_codes(keys[split["source"].to_numpy()], views)}
    return wanted


@pytest.fixture(autouse=True)
def fresh_hydra():
    yield
    GlobalHydra.instance().clear()


@pytest.mark.slow
def test_two_shards_then_a_warm_rerun_compute_each_entry_once(tmp_path: Path, capsys) -> None:
    overrides = [f"paths.root_dir={tmp_path}", *SMALL]
    assert main(["--shard", "0/2", *overrides]) == 0
    first = capsys.readouterr().out
    GlobalHydra.instance().clear()
    assert main(["--shard", "1/2", *overrides]) == 0
    second = capsys.readouterr().out
    computed = [int(text.split(" computed")[0].rsplit(", ", 1)[1].replace(",", "")) for text in (first, second)]
    stored = entries(tmp_path)
    assert sum(computed) == len(stored) == len(needed(tmp_path)) and stored == needed(tmp_path)
    shards = lambda: [p for p in (tmp_path / "cache" / "features").glob("*/part-*.safetensors")]  # noqa: E731
    before = len(shards())
    GlobalHydra.instance().clear()
    assert main(["--compact", *overrides]) == 0
    out = capsys.readouterr().out
    assert "0 computed" in out, "resumable: nothing left to compute"
    folders = {path.parent for path in shards()}
    assert f"compacted: {before - len(folders)} files fewer" in out and len(shards()) == len(folders) < before
    assert entries(tmp_path) == stored, "the same entries, in one file per folder"
    assert f"the store holds {len(stored):,} entries in {len(folders)} files" in out


def test_a_bad_shard_or_override_is_one_line(tmp_path: Path, capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--shard", "5/2", f"paths.root_dir={tmp_path}"])
    assert exit_info.value.code == 2 and "--shard 5/2" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main([f"paths.root_dir={tmp_path}", "model=nope"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and len(err.strip().splitlines()) == 1 and "model" in err
