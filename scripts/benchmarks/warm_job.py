"""A warm job's feature read in a fresh process (run by `warm_read`):
`python -m benchmarks.warm_job MODE ROOT OVERRIDES`.

MODE `store`: the fold's features read from the store, timed, with the process's peak memory; `write_baseline`: the
same read, saved as one contiguous array; `np_load`: that array loaded, timed (the same process state otherwise).
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks.common import compose_plan, peak_rss
from leukexp.data.fold_data import build_fold_data
from leukexp.run.embeds import SPLITS, cache_note, caches_for, find, fold_embeds
from leukexp.run.settings import backbone_from_plan
from leukexp.runtime.process import seed_everything


def main(mode: str, root: Path, overrides: list[str]) -> dict[str, float]:
    """One measure of MODE (see the module's text); {} for `write_baseline`."""
    baseline = root / "contiguous.npy"
    cfg = compose_plan(root, overrides)
    fold_data = build_fold_data(cfg)
    seed_everything(cfg.seed)  # the random-init model of the cold pass, so the same cache key
    backbone = backbone_from_plan(cfg)
    embeds = find(fold_embeds(cfg, fold_data), SPLITS)  # what the job reads (its plan), not the reading: not timed
    if mode == "np_load":  # the same process state as the store's read (its imports, its wait): only the read differs
        start = time.perf_counter()
        array = np.load(baseline)
        return {"np_load_s": time.perf_counter() - start, "bytes": array.nbytes}
    before = peak_rss()
    start = time.perf_counter()
    caches = caches_for(cfg, backbone, fold_data.stain)
    every = embeds.features(backbone, caches, dataclasses.replace(cfg.features, num_workers=0))
    read = time.perf_counter() - start
    note = cache_note(caches)
    if "0 misses" not in note:
        raise SystemExit(f"the warm job missed entries: {note}")
    if mode == "write_baseline":
        np.save(baseline, every)
        return {}
    return {"read_s": read, "bytes": every.nbytes, "rows": len(every), "peak_rss_bytes": peak_rss(),
            "rss_before_read": before}


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1], Path(sys.argv[2]), json.loads(sys.argv[3]))))
