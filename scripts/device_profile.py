"""Where a GPU extraction pass spends its time: views made on the device vs the bare forward, then one pass under
torch.profiler (CPU and CUDA self time per op). Run by scripts/device_check.sh's profile step on a lent GPU."""

import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from benchmark import all_views, compose_plan
from leukexp.data.fold_data import build_fold_data
from leukexp.data.tensor_views import TensorViews
from leukexp.features.embed import ViewPass, part_caches, sample_features
from leukexp.run.settings import backbone_from_plan


def timed(step, repeats: int = 20) -> float:
    """Seconds per call of `step`, the device synchronized around."""
    step()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        step()
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / repeats


def main() -> None:
    """Time the parts, then profile one pass per view path."""
    root, data = Path(sys.argv[1]), sys.argv[2]
    plan = compose_plan(root, ["features.precision=bf16", "data=folder", f"data.root={data}"])
    backbone = backbone_from_plan(plan)
    fold_data = build_fold_data(plan)
    views = TensorViews(fold_data.augmentation)
    images = torch.randint(0, 256, (256, 224, 224, 3), dtype=torch.uint8, device="cuda")
    thetas, warped, flips = (torch.from_numpy(np.concatenate(part)).cuda() for part in zip(
        *[views.plan(np.arange(33), f"k{i}", 224, 224) for i in range(8)], strict=True))
    thetas, warped, flips = thetas[:256], warped[:256], flips[:256]
    with torch.inference_mode():
        made = timed(lambda: views.make(images, thetas, warped, flips))
        normalized = backbone.preprocess.normalize(views.make(images, thetas, warped, flips))
        forward = timed(lambda: backbone.embed_on_device(normalized))
        whole = timed(lambda: backbone.embed(backbone.preprocess.normalize(views.make(images, thetas, warped, flips))))
    print(f"per batch of 256: make {made * 1e3:.2f} ms, forward {forward * 1e3:.2f} ms,"
          f" make+normalize+forward+copy back {whole * 1e3:.2f} ms")
    samples = all_views(len(fold_data.catalog.frame), fold_data.augmentation.n_views)
    for made_on in ("device", "cpu"):
        caches = part_caches(backbone, root / f"cache-{made_on}")
        from torch.profiler import ProfilerActivity, profile
        start = time.perf_counter()
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            sample_features(backbone, fold_data.catalog.frame, samples, caches,
                            ViewPass(fold_data.augmentation, 256, "auto", description="profile", made_on=made_on))
        print(f"{made_on}: {len(samples)} views in {time.perf_counter() - start:.1f} s (profiled)")
        table = prof.key_averages()
        try:
            print(table.table(sort_by="self_device_time_total", row_limit=12, max_name_column_width=40))
        except (KeyError, AttributeError, ValueError):
            print(table.table(sort_by="self_cuda_time_total", row_limit=12, max_name_column_width=40))
        print(table.table(sort_by="self_cpu_time_total", row_limit=15, max_name_column_width=40))


if __name__ == "__main__":  # the workers are started from a fork server, which imports this file
    main()
