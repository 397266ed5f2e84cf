"""leukexp's speed against the raw limit on this machine: a table of ratios, also written as JSON.

    python scripts/benchmark.py                         # everything, on the default study (a CPU: ~25 min)
    python scripts/benchmark.py --skip sweep cold_sweep load  # raw forward, extraction, warm jobs only
    python scripts/benchmark.py --model senet154 --pretrained false --precision bf16 --only raw extraction

Each measure runs in this process or as the CLI a user types, under `--root` (default `.benchmark/`, git-ignored):
- raw: the backbone's bare forward on random input already in memory (same batch size, threads, device and
  precision as leukexp uses), images/s: the limit extraction is compared with;
- extraction: one cold pass of leukexp's extraction over every view of every image of the default study
  (266 images x 33 views = 8,778 views), images/s, its ratio to raw, its wall time and peak memory;
- jobs: `leukexp-train head=H` with every feature cached, per head: seconds inside the run (`done in`) and wall;
- load: the same jobs while two busy-loop processes compete for the CPU, and the slow-down;
- sweep: the warm quickstart sweep (`-m experiment=quickstart`, 4 heads x 5 folds) and its ratio to one pass;
- cold_sweep: the same sweep with an empty feature cache, against (one pass + the warm sweep).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from leukexp.runtime.process import prepare_process

prepare_process()  # before torch loads: the same OpenMP setting as the CLI it is compared with

import torch  # noqa: E402  (after prepare_process, see above)

MEASURES = ("raw", "extraction", "jobs", "load", "sweep", "cold_sweep")
DEFAULT_HEADS = ("mlp1", "mlp3", "svm", "logreg")
DONE = re.compile(r"done in ([0-9.]+) s")


@dataclass
class Result:
    """Everything one benchmark run measured (seconds, images per second, bytes)."""

    machine: dict[str, str | int] = field(default_factory=dict)
    raw: dict[str, float] = field(default_factory=dict)
    extraction: dict[str, float] = field(default_factory=dict)
    jobs: dict[str, dict[str, float]] = field(default_factory=dict)
    load: dict[str, dict[str, float]] = field(default_factory=dict)
    sweep: dict[str, float] = field(default_factory=dict)
    cold_sweep: dict[str, float] = field(default_factory=dict)


def done_seconds(output: str) -> float | None:
    """The seconds of the `done in X s` line `leukexp-train` ends with (the last one of a sweep: None if absent)."""
    found = DONE.findall(output)
    return float(found[-1]) if found else None


def all_views(n_images: int, n_views: int) -> pd.DataFrame:
    """Samples `(source, view, label_index)` for every view of every image, source-major."""
    return pd.DataFrame({"source": np.repeat(np.arange(n_images), n_views),
                         "view": np.tile(np.arange(n_views), n_images), "label_index": 0})


def machine(device: torch.device) -> dict[str, str | int]:
    """What the numbers were measured on."""
    cpu = platform.processor() or platform.machine()
    with open("/proc/cpuinfo" if Path("/proc/cpuinfo").exists() else os.devnull) as handle:
        names = [line.split(":", 1)[1].strip() for line in handle if line.startswith("model name")]
    info: dict[str, str | int] = {"cpu": names[0] if names else cpu, "cores": len(os.sched_getaffinity(0)),
                                  "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
                                  "device": str(device)}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def compose_config(root: Path, overrides: list[str]):
    """The run config for `overrides`, with paths under `root` (no Hydra app running)."""
    from hydra import compose, initialize_config_dir

    from leukexp.config.compose import config_dir

    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        return compose("train", overrides=[f"paths.root_dir={root}", f"paths.output_dir={root}/outputs", *overrides])


def measure_raw(backbone, batch_size: int, seconds: float) -> dict[str, float]:
    """The bare forward of random input already on the device, images/s (after two warm-up batches)."""
    channels, height, width = backbone.preprocess.input_size
    images = torch.randn(batch_size, channels, height, width).to(backbone.device)
    for _ in range(2):
        backbone.embed(images)
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        backbone.embed(images)
        count += batch_size
    elapsed = time.perf_counter() - start
    return {"images_per_s": count / elapsed, "batch_size": batch_size}


def measure_extraction(cfg, backbone, cache_dir: Path) -> dict[str, float]:
    """One cold pass of leukexp's extraction over every view of every image of the study."""
    from leukexp.data.study import build_study
    from leukexp.features.extract import part_caches, sample_features

    study = build_study(cfg)
    samples = all_views(len(study.catalog.frame), study.augmentation.n_views)
    shutil.rmtree(cache_dir, ignore_errors=True)
    start = time.perf_counter()
    sample_features(backbone, study.catalog.frame, samples, study.augmentation, part_caches(backbone, cache_dir),
                    cfg.features.batch_size, cfg.features.num_workers, "benchmark pass")
    elapsed = time.perf_counter() - start
    return {"views": float(len(samples)), "seconds": elapsed, "images_per_s": len(samples) / elapsed,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def run_cli(args: list[str], root: Path, load: int = 0) -> dict[str, float]:
    """`leukexp-train ARGS` as a user runs it (optionally beside `load` busy-loop processes): seconds."""
    env = {**os.environ, "LEUKEXP_ROOT": str(root), "COLUMNS": "200"}
    env.pop("MLFLOW_TRACKING_URI", None)
    burners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(load)]
    try:
        start = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "leukexp.train", *args], cwd=root, env=env,
                              capture_output=True, text=True)
        wall = time.perf_counter() - start
    finally:
        for burner in burners:
            burner.kill()
            burner.wait()
    if done.returncode != 0:
        raise SystemExit(f"leukexp-train {' '.join(args)} failed ({done.returncode}):\n{done.stdout[-2000:]}"
                         f"\n{done.stderr[-2000:]}")
    inside = done_seconds(done.stdout)
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return {"wall_s": wall, "run_s": inside if inside is not None else float("nan"), "peak_rss_mb": peak}


def fresh_store(root: Path) -> None:
    """An empty MLflow store: every measured job writes to a store of the same size."""
    shutil.rmtree(root / "mlruns", ignore_errors=True)


def table(result: Result) -> str:
    """The result as the plain-text table the README quotes."""
    lines = [f"machine: {result.machine}"]
    if result.raw:
        lines.append(f"raw backbone forward        {result.raw['images_per_s']:9.1f} img/s"
                     f"  (batch {int(result.raw['batch_size'])})")
    if result.extraction:
        ratio = result.extraction["images_per_s"] / result.raw["images_per_s"] if result.raw else float("nan")
        lines.append(f"leukexp extraction          {result.extraction['images_per_s']:9.1f} img/s  ratio {ratio:.2f}"
                     f"  ({int(result.extraction['views'])} views in {result.extraction['seconds']:.1f} s,"
                     f" peak RSS {result.extraction['peak_rss_mb']:.0f} MB)")
    for head, job in result.jobs.items():
        line = f"warm job head={head:<13} {job['run_s']:7.1f} s in run, {job['wall_s']:6.1f} s wall"
        if head in result.load:
            loaded = result.load[head]
            line += (f" | under 2-process load {loaded['run_s']:6.1f} s in run"
                     f" ({loaded['run_s'] / job['run_s']:.2f}x)")
        lines.append(line)
    if result.sweep:
        ratio = result.sweep["wall_s"] / result.extraction["seconds"] if result.extraction else float("nan")
        lines.append(f"warm quickstart sweep       {result.sweep['wall_s']:7.1f} s wall"
                     f"  ({ratio:.2f}x one extraction pass)")
    if result.cold_sweep:
        ratio = result.cold_sweep.get("ratio_to_pass_plus_warm", float("nan"))
        lines.append(f"cold quickstart sweep       {result.cold_sweep['wall_s']:7.1f} s wall"
                     f"  ({ratio:.2f}x one pass + warm sweep)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> Result:
    """Run the chosen measures, print the table, write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path(".benchmark"), help="working folder (data, cache, store)")
    parser.add_argument("--json", type=Path, default=None, help="where to write the JSON (default ROOT/benchmark.json)")
    parser.add_argument("--model", default="efficientnet_lite0", help="model config (the default study's)")
    parser.add_argument("--pretrained", default="true", help="false: random weights (throughput only)")
    parser.add_argument("--device", default="auto", help="features.device")
    parser.add_argument("--precision", default="fp32", help="features.precision")
    parser.add_argument("--heads", nargs="+", default=list(DEFAULT_HEADS), help="heads of the warm jobs")
    parser.add_argument("--only", nargs="+", choices=MEASURES, help="run only these measures")
    parser.add_argument("--skip", nargs="+", choices=MEASURES, default=[], help="leave these measures out")
    parser.add_argument("--raw-seconds", type=float, default=15.0, help="how long the raw forward is timed")
    parser.add_argument("--load", type=int, default=2, help="busy-loop processes of the load measure")
    parser.add_argument("overrides", nargs="*", help="more Hydra overrides for every measure (e.g. trainer=gpu)")
    args = parser.parse_args(argv)
    chosen = [m for m in (args.only or MEASURES) if m not in args.skip]
    root = args.root.resolve()
    root.mkdir(parents=True, exist_ok=True)
    overrides = [f"model={args.model}", f"model.pretrained={args.pretrained}", f"features.device={args.device}",
                 f"features.precision={args.precision}", *args.overrides]

    from leukexp.cell.settings import backbone_from_config
    from leukexp.features.extract import batch_size_for
    from leukexp.runtime.process import seed_everything

    cfg = compose_config(root, overrides)
    seed_everything(0)
    backbone = backbone_from_config(cfg)
    result = Result(machine=machine(backbone.device))
    print(f"machine: {result.machine}", flush=True)
    if "raw" in chosen:
        result.raw = measure_raw(backbone, batch_size_for(cfg.features.batch_size, backbone.device),
                                 args.raw_seconds)
        print(f"raw forward: {result.raw['images_per_s']:.1f} img/s", flush=True)
    if "extraction" in chosen:
        result.extraction = measure_extraction(cfg, backbone, Path(cfg.features.dir))
        print(f"extraction: {result.extraction['images_per_s']:.1f} img/s", flush=True)
        if result.raw:  # again after the pass: the ratio uses the mean of both (a busy machine drifts)
            before = result.raw["images_per_s"]
            after = measure_raw(backbone, int(result.raw["batch_size"]), args.raw_seconds)["images_per_s"]
            result.raw |= {"images_per_s_before": before, "images_per_s_after": after,
                           "images_per_s": (before + after) / 2}
            print(f"raw forward again: {after:.1f} img/s", flush=True)
    for head in args.heads if "jobs" in chosen else []:
        fresh_store(root)
        result.jobs[head] = run_cli([*overrides, f"head={head}"], root)
        print(f"warm job {head}: {result.jobs[head]}", flush=True)
    for head in args.heads if "load" in chosen else []:
        fresh_store(root)
        result.load[head] = run_cli([*overrides, f"head={head}"], root, load=args.load)
        print(f"warm job {head} under load: {result.load[head]}", flush=True)
    if "sweep" in chosen:
        fresh_store(root)
        result.sweep = run_cli(["-m", "experiment=quickstart", *overrides], root)
        print(f"warm sweep: {result.sweep}", flush=True)
    if "cold_sweep" in chosen:
        fresh_store(root)
        shutil.rmtree(Path(cfg.features.dir), ignore_errors=True)
        result.cold_sweep = run_cli(["-m", "experiment=quickstart", *overrides], root)
        if result.extraction and result.sweep:
            expected = result.extraction["seconds"] + result.sweep["wall_s"]
            result.cold_sweep["ratio_to_pass_plus_warm"] = result.cold_sweep["wall_s"] / expected
        print(f"cold sweep: {result.cold_sweep}", flush=True)
    print(table(result))
    target = args.json or root / "benchmark.json"
    target.write_text(json.dumps(asdict(result), indent=2) + "\n")
    print(f"written: {target}")
    return result


if __name__ == "__main__":
    main()
