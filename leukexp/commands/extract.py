"""`leukexp-extract`: a data set's embeddings computed once, for every fold's needs, before any head is trained.

    leukexp-extract data=folder data.root=/data/pbc augmentation=paper            # everything, here
    leukexp-extract data=folder data.root=/data/pbc --shard 3/20                  # one task of a Slurm array
    leukexp-extract data=folder data.root=/data/pbc --ray-tasks 20 --ray-gpus 1   # 20 Ray tasks, waited for

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
import dataclasses
import functools
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from omegaconf import DictConfig, open_dict

from leukexp.errors import LeukexpError, one_line, user_errors

if TYPE_CHECKING:
    from pathlib import Path

    from leukexp.config.plan import RunPlan
    from leukexp.features.cache import FeatureCache
    from leukexp.run.embeds import Embeds

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


def fold_plans(plan: RunPlan) -> list[RunPlan]:
    """The plan of every fold of the study."""
    n_splits = int(plan.fold.get("n_splits"))
    return [plan.for_fold(index) for index in range(n_splits)]


def study_embeds(plan: RunPlan) -> list[Embeds]:
    """What every fold's run embeds (`run.embeds.fold_embeds`, the same derivation a run uses), with the rows of
    sets that share a catalog, views and stain target merged (each embedding asked for once)."""
    from leukexp.data.external import scan_external
    from leukexp.data.fold_data import build_fold_data
    from leukexp.run.embeds import fold_embeds

    merged: dict[tuple[str, str, str], tuple[Embeds, list[pd.DataFrame]]] = {}
    external = None
    for fold_plan in fold_plans(plan):
        fold_data = build_fold_data(fold_plan)
        if external is None:
            external = scan_external(plan.evaluation.external, fold_data.task, fold_data.classes,
                                 fold_data.catalog)
        for embeds in fold_embeds(fold_plan, fold_data, external):
            key = (embeds.purpose, embeds.views.name, embeds.stain.fingerprint() if embeds.stain.active else "")
            merged.setdefault(key, (embeds, []))[1].append(embeds.samples[["source", "view"]])
    return [dataclasses.replace(first, samples=pd.concat(rows).drop_duplicates(ignore_index=True))
            for first, rows in merged.values()]


def extract(plan: RunPlan, shard: ShardSpec, compact: bool = False) -> dict[str, float]:
    """Embed what every fold needs (this shard's images only); return views, misses, seconds and, with `compact`,
    how many files fewer the store's folders hold after merging their small shards."""
    from leukexp.console import console
    from leukexp.run.embeds import cache_note, caches_for
    from leukexp.run.settings import backbone_from_plan
    from leukexp.runtime.process import seed_everything

    if not plan.features.cache:
        raise LeukexpError("features.cache=false: leukexp-extract fills the feature cache; leave features.cache=true")
    seed_everything(plan.seed)
    backbone = backbone_from_plan(plan)
    views, misses, merged, started = 0, 0, 0, time.perf_counter()
    folders: dict[Path, FeatureCache] = {}
    for embeds in study_embeds(plan):
        caches = caches_for(plan, backbone, embeds.stain)
        keys = embeds.catalog["sha1"].to_numpy()
        mine = embeds.samples[shard.keeps(keys[embeds.samples["source"].to_numpy()])].reset_index(drop=True)
        if len(mine):
            dataclasses.replace(embeds, samples=mine).features(backbone, caches, plan.features,
                                                                f"embedding {embeds.purpose}")
            views += len(mine)
        misses += sum(cache.misses for cache in caches if cache)
        folders |= {cache.folder: cache for cache in caches if cache}
        console.print(cache_note(caches))
    if compact:
        merged = sum(cache.compact() for cache in folders.values())
    stores = list(folders.values())
    return {"views": views, "misses": misses, "seconds": time.perf_counter() - started, "fewer_files": merged,
            "entries": sum(cache.entry_count() for cache in stores), "files": sum(cache.files() for cache in stores),
            "bytes": sum(cache.size_bytes() for cache in stores)}


def main(argv: list[str] | None = None) -> int:
    """Command line entry of `leukexp-extract`: 0 when every needed embedding of this shard is in the store."""
    from leukexp.runtime.process import prepare_process

    parser = argparse.ArgumentParser(prog=PROGRAM, description=__doc__.splitlines()[0])
    parser.add_argument("--shard", default="0/1", help="I/N: embed shard I of N (by image content hash), e.g. 3/20")
    parser.add_argument("--compact", action="store_true",
                        help="then merge the store's small shard files (safe while other jobs read; a pass merges"
                             " on its own once 8 small ones pile up)")
    parser.add_argument("--ray-tasks", type=int, default=0, metavar="N",
                        help="run the N shards as Ray tasks on the cluster at RAY_ADDRESS (or the one started on this"
                             " machine with `ray start --head`) and wait for them all")
    parser.add_argument("--ray-cpus", type=float, default=1.0, metavar="C", help="CPUs per Ray task (default 1)")
    parser.add_argument("--ray-gpus", type=float, default=0.0, metavar="G",
                        help="GPUs per Ray task (default 0; with features.device=cuda, 1)")
    parser.add_argument("overrides", nargs="*", help="the overrides a leukexp-train run of the study takes")
    args = parser.parse_args(argv)
    prepare_process()
    with user_errors(PROGRAM):
        shard = ShardSpec.parse(args.shard)
        if args.ray_tasks:
            return extract_with_ray(args, shard)
        plan = plan_from_overrides(args.overrides)
        result = extract(plan, shard, args.compact)
        print_shard(shard, result, args.compact)
    return 0


def plan_from_overrides(overrides: list[str]) -> RunPlan:
    """The study's run plan from `leukexp-train` overrides, checked before any work."""

    from leukexp.config.plan import RunPlan
    from leukexp.run.validation import validate

    cfg = compose_hydra_errors(overrides)
    validate(cfg)
    return RunPlan.from_config(cfg)


def print_shard(shard: ShardSpec, result: dict[str, float], compact: bool) -> None:
    """The line every shard prints: views needed, views computed, time and rate."""
    from leukexp.console import console

    rate = result["misses"] / result["seconds"] if result["seconds"] else 0.0
    console.print(f"{PROGRAM}: shard {shard.index}/{shard.count}: {result['views']:,} views needed,"
                  f" {result['misses']:,} computed in {result['seconds']:.1f} s ({rate:.1f} views/s)"
                  + (f"; compacted: {result['fewer_files']} files fewer" if compact else "")
                  + (f"; the store holds {result['entries']:,} entries in {result['files']:,} files"
                     f" ({result['bytes'] / 2**20:,.1f} MiB)" if "entries" in result else ""))


def run_shard(shard: str, overrides: list[str], compact: bool) -> dict[str, Any]:
    """One shard's extraction in a process of its own (a Ray task): what `leukexp-extract --shard` does."""
    from leukexp.runtime.process import prepare_process

    prepare_process()
    return {"shard": shard, **extract(plan_from_overrides(overrides), ShardSpec.parse(shard), compact)}


def extract_with_ray(args: argparse.Namespace, shard: ShardSpec) -> int:
    """`--ray-tasks N`: the config checked here, then the N shards as Ray tasks; their lines and the total."""
    from leukexp.console import console
    from leukexp.sweeps.ray_cluster import RayResources, extract_on_ray, import_ray

    if shard.count != 1:
        raise LeukexpError(f"--shard {args.shard} with --ray-tasks {args.ray_tasks}: the Ray tasks are the shards;"
                           " give one of the two")
    if args.ray_tasks < 1 or args.ray_cpus <= 0 or args.ray_gpus < 0:
        raise LeukexpError("--ray-tasks must be at least 1, --ray-cpus above 0 and --ray-gpus 0 or more")
    import_ray()
    plan_from_overrides(args.overrides)  # a config mistake is one line here, before any task starts
    started = time.perf_counter()
    task = functools.partial(run_shard, overrides=list(args.overrides), compact=args.compact)
    results = extract_on_ray(task, args.ray_tasks, RayResources(args.ray_cpus, args.ray_gpus))
    for result in results:
        print_shard(ShardSpec.parse(result["shard"]), result, args.compact)
    views, misses = sum(r["views"] for r in results), sum(r["misses"] for r in results)
    console.print(f"{PROGRAM}: {len(results)} Ray tasks: {views:,} views needed, {misses:,} computed in"
                  f" {time.perf_counter() - started:.1f} s")
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
