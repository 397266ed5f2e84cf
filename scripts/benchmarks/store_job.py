"""A warm job's read of the store alone in a fresh process (run by `warm_read`):
`python -m benchmarks.store_job MODE ROOT IMAGES` (MODE as in `benchmarks.warm_job`)."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks.common import peak_rss
from benchmarks.store import store_job_codes
from leukexp.features.cache import FeatureCache


def main(mode: str, root: Path, images: int) -> dict[str, float]:
    """One measure of MODE; {} for `write_baseline`."""
    baseline = root / "contiguous.npy"
    codes = store_job_codes(images)
    if mode == "np_load":  # the same process state as the store's read: only the read differs
        start = time.perf_counter()
        np.load(baseline)
        return {"np_load_s": time.perf_counter() - start}
    start = time.perf_counter()
    values, found = FeatureCache(root, "store").get_codes(codes, 256)
    read = time.perf_counter() - start
    if not found.all():
        raise SystemExit(f"{int((~found).sum())} entries missing from the store")
    if mode == "write_baseline":
        np.save(baseline, values)
        return {}
    return {"read_s": read, "rows": len(values), "bytes": values.nbytes, "peak_rss_bytes": peak_rss()}


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1], Path(sys.argv[2]), int(sys.argv[3]))))
