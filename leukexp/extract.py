"""`leukexp-extract`: a data set's embeddings computed once, for every fold's needs, before any head is trained.

    leukexp-extract data=folder data.root=/data/pbc augmentation=paper            # everything, here
    leukexp-extract data=folder data.root=/data/pbc --shard 3/20                  # one task of a Slurm array

It takes the same overrides as `leukexp-train` (data, task, model, augmentation, stain, protocol, fold.n_splits,
evaluation.tta, evaluation.external, features.*) and embeds every (image, view) any fold of that study will ask
for: each fold's training views, its validation and test originals, test-time views and the external set. With
`--shard I/N` only the images whose content hash falls in shard I of N, so N processes (a Slurm array, Ray tasks,
one per GPU) split the work without talking to each other. It is resumable: entries already in the store are
skipped, and processes that overlap take turns through the store's lock buckets. The head sweep then finds every
embedding cached (`feature cache: H hits, 0 misses`).
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass

import numpy as np
import pandas as pd
from omegaconf import DictConfig, open_dict

from leukexp.errors import LeukexpError, one_line, user_errors

PROGRAM = "leukexp-extract"


@dataclass(frozen=True)
class ShardSpec:
    """Shard `index` of `count`: the images whose content hash modulo `count` is `index`."""

    index: int = 0
    count: int = 1

    @classmethod
    def parse(cls, text: str) -> ShardSpec:
        """`I/N` (0 <= I < N), e.g. `3/20`; anything else is one line."""
        try:
            index, count = (int(part) for part in text.split("/"))
        except ValueError:
            raise LeukexpError(f"--shard {text}: expected I/N, e.g. --shard 0/4 (shard 0 of 4)") from None
        if count < 1 or not 0 <= index < count:
            raise LeukexpError(f"--shard {text}: expected 0 <= I < N, e.g. --shard {max(0, count - 1)}/{max(1, count)}")
        return cls(index, count)

    def keeps(self, image_keys: np.ndarray) -> np.ndarray:
        """Which of these content hashes (hex) belong to this shard."""
        if self.count == 1:
            return np.ones(len(image_keys), bool)
        return np.array([int(key[:8], 16) % self.count == self.index for key in image_keys], bool)


def compose(overrides: list[str]) -> DictConfig:
    """`train.yaml` with the overrides, resolved as a `leukexp-train` run would see it (outside a Hydra run)."""
    from hydra.core.hydra_config import HydraConfig

    from leukexp.config.compose import compose_train

    cfg = compose_train(overrides, return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = cfg.hydra.runtime.cwd
    HydraConfig().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg


@dataclass
class Needs:
    """The (source, view) rows one stain target's cache must hold, over a catalog."""

    catalog: pd.DataFrame
    rows: pd.DataFrame


def study_needs(cfg: DictConfig) -> list[tuple[object, object, Needs]]:
    """Per fold: its study's stain normalizer, augmentation and the rows its run embeds (training views,
    validation and test originals, test-time views); folds that share a stain target are merged."""
    from leukexp.data.augment import named_views
    from leukexp.data.study import build_study

    n_splits = int(cfg.fold.n_splits)
    merged: dict[str, tuple[object, object, list[pd.DataFrame], pd.DataFrame]] = {}
    tta = str(cfg.evaluation.tta)
    for index in range(n_splits):
        fold_cfg = cfg.copy()
        with open_dict(fold_cfg):
            fold_cfg.fold.index = index
        study = build_study(fold_cfg)
        samples = study.samples
        train = [] if study.augmentation.online else [samples.train]
        parts = [*train, samples.val, samples.test]
        if tta != "none":
            views = named_views(tta, int(cfg.seed), "evaluation.tta")
            originals = samples.test.drop_duplicates("source")
            parts.append(pd.DataFrame({"source": np.repeat(originals["source"].to_numpy(), views.n_views),
                                       "view": np.tile(np.arange(views.n_views), len(originals)),
                                       "views": tta}))
        key = study.stain.fingerprint()
        rows = pd.concat([p[["source", "view"]].assign(views=p.get("views", "study")) for p in parts])
        if key in merged:
            merged[key][2].append(rows)
        else:
            merged[key] = (study.stain, study.augmentation, [rows], study.catalog.frame)
    return [(stain, augmentation, Needs(frame, pd.concat(parts).drop_duplicates(ignore_index=True)))
            for stain, augmentation, parts, frame in merged.values()]


def extract(cfg: DictConfig, shard: ShardSpec) -> dict[str, float]:
    """Embed what every fold needs (this shard's images only); return views, misses and seconds."""
    from leukexp.cell.settings import backbone_from_config
    from leukexp.config.schema import setting
    from leukexp.console import console
    from leukexp.data.augment import named_views
    from leukexp.data.external import scan_external
    from leukexp.features.extract import cache_note, part_caches, sample_features
    from leukexp.runtime.process import seed_everything

    if not cfg.features.cache:
        raise LeukexpError("features.cache=false: leukexp-extract fills the feature cache; leave features.cache=true")
    seed_everything(int(cfg.seed))
    backbone = backbone_from_config(cfg)
    storage = str(setting(cfg, "features.storage"))
    needs = study_needs(cfg)
    views, misses, started = 0, 0, time.perf_counter()
    for stain, augmentation, need in needs:
        caches = part_caches(backbone, cfg.features.dir, stain, storage)
        keys = need.catalog["sha1"].to_numpy()
        groups = [(augmentation, need.rows[need.rows["views"] == "study"])]
        groups += [(named_views(name, int(cfg.seed), "evaluation.tta"), rows)
                   for name, rows in need.rows[need.rows["views"] != "study"].groupby("views")]
        for views_of, rows in groups:
            mine = rows[shard.keeps(keys[rows["source"].to_numpy()])]
            if len(mine):
                sample_features(backbone, need.catalog, mine.reset_index(drop=True), views_of, caches,
                                cfg.features.batch_size, cfg.features.num_workers, "embedding", stain)
                views += len(mine)
        external = scan_external(cfg, build_task(cfg), sorted_classes(need.catalog))
        if external is not None:
            frame = external.frame
            mine = frame[shard.keeps(frame["sha1"].to_numpy())]
            rows = pd.DataFrame({"source": mine.index.to_numpy(), "view": 0})
            if len(rows):
                sample_features(backbone, frame, rows, augmentation, caches, cfg.features.batch_size,
                                cfg.features.num_workers, "external images", stain)
                views += len(rows)
        misses += sum(cache.misses for cache in caches if cache)
        console.print(cache_note(caches))
    return {"views": views, "misses": misses, "seconds": time.perf_counter() - started}


def build_task(cfg: DictConfig) -> object:
    """The task of the composed config."""
    from leukexp.config.compose import build

    return build(cfg.task, "task", _convert_="all")


def sorted_classes(frame: pd.DataFrame) -> list[str]:
    """The study's classes in label-index order, from a catalog frame."""
    pairs = frame[["label_index", "label"]].drop_duplicates().sort_values("label_index")
    return pairs["label"].tolist()


def main(argv: list[str] | None = None) -> int:
    """Command line entry of `leukexp-extract`: 0 when every needed embedding of this shard is in the store."""
    from leukexp.runtime.process import prepare_process

    parser = argparse.ArgumentParser(prog=PROGRAM, description=__doc__.splitlines()[0])
    parser.add_argument("--shard", default="0/1", help="I/N: embed shard I of N (by image content hash), e.g. 3/20")
    parser.add_argument("overrides", nargs="*", help="the overrides a leukexp-train run of the study takes")
    args = parser.parse_args(argv)
    prepare_process()
    with user_errors(PROGRAM):
        shard = ShardSpec.parse(args.shard)
        cfg = compose_hydra_errors(args.overrides)
        from leukexp.cell.validation import validate

        validate(cfg)
        from leukexp.console import console

        result = extract(cfg, shard)
        rate = result["misses"] / result["seconds"] if result["seconds"] else 0.0
        console.print(f"{PROGRAM}: shard {shard.index}/{shard.count}: {result['views']:,} views needed,"
                      f" {result['misses']:,} computed in {result['seconds']:.1f} s ({rate:.1f} views/s)")
    return 0


def compose_hydra_errors(overrides: list[str]) -> DictConfig:
    """`compose`, with Hydra's multi-line composition errors as one line."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    try:
        return compose(overrides)
    except (HydraException, OmegaConfBaseException) as error:
        raise LeukexpError(one_line(error)) from None


if __name__ == "__main__":
    raise SystemExit(main())
