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
- team_server (asked for with `--only`): the same jobs logging to `leukexp-server --auth` (MLflow on PostgreSQL,
  accounts on) started under ROOT/team-server, their ratio to the bare head loop;
- sweep: the warm quickstart sweep (`-m experiment=quickstart`, 4 heads x 5 folds) and its ratio to one pass;
- cold_sweep: the same sweep with an empty feature cache, against (one pass + the warm sweep).

    python scripts/benchmark.py --bags --heads differential abmil --only head_loop jobs   # the bag study's folds

With `--bags` the head loop is abmil's bare torch loop; with `differential` among the heads also the differential's
own fitting steps done bare (a scaled logistic regression on the typed training cells, every cell's type
probabilities, each bag's mean, a scaled logistic regression on the bags, val and test scored), against the warm
job's `head` phase (its fitting and scoring, from the run's `done in` line).

    python scripts/benchmark.py --scale                 # the framework at 5 k, 50 k and 500 k views (~25 min here)
    python scripts/benchmark.py --scale --sizes 2000 20000
    python scripts/benchmark.py --store 500000 5000000  # the feature store alone (synthetic entries), ~4 min
    python scripts/benchmark.py --only raw extraction --precision bf16 --views device,cpu   # on a GPU: both view paths

`--scale` measures the framework, not the model: a tiny random-weight timm model (test_efficientnet at 32 px) on
synthetic 48 px smears with the study's 33 views, at sizes spanning 100x. Per size: cold extraction views/s (and
its ratio to the model's bare forward), the files the store created, and a warm job in a fresh process: the time to
read its features (fold 0's training views, validation and test originals) against `np.load` of one contiguous
array of the same bytes, and its peak RSS against those bytes; then how each time grows (the exponent of time vs
views, from a log-log fit).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import shutil
import socket
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

MEASURES = ("raw", "extraction", "head_loop", "jobs", "team_server", "load", "sweep", "cold_sweep")
DEFAULT_MEASURES = tuple(m for m in MEASURES if m != "team_server")  # it needs PostgreSQL: asked for by name
DEFAULT_HEADS = ("mlp1", "mlp3", "svm", "logreg")
DONE = re.compile(r"done in ([0-9.]+) s")
PHASE = re.compile(r"([A-Za-z]+) ([0-9.]+)[,)]")


@dataclass
class Result:
    """Everything one benchmark run measured (seconds, images per second, bytes)."""

    machine: dict[str, str | int] = field(default_factory=dict)
    raw: dict[str, float] = field(default_factory=dict)
    extraction: dict[str, float] = field(default_factory=dict)
    extraction_by_views: dict[str, dict[str, float]] = field(default_factory=dict)
    jobs: dict[str, dict[str, float]] = field(default_factory=dict)
    load: dict[str, dict[str, float]] = field(default_factory=dict)
    sweep: dict[str, float] = field(default_factory=dict)
    cold_sweep: dict[str, float] = field(default_factory=dict)
    head_loop: dict[str, float] = field(default_factory=dict)
    differential_loop: dict[str, float] = field(default_factory=dict)
    team_server: dict[str, dict[str, float]] = field(default_factory=dict)


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


def compose_plan(root: Path, overrides: list[str]):
    """The run plan for `overrides`, with paths under `root` (no Hydra app running), read as a run's door does."""
    from hydra import compose, initialize_config_dir

    from leukexp.config.compose import config_dir
    from leukexp.config.plan import RunPlan
    from leukexp.run.validation import validate

    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = compose("train", overrides=[f"paths.root_dir={root}", f"paths.output_dir={root}/outputs", *overrides])
        validate(cfg)
        return RunPlan.from_config(cfg)


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


def measure_extraction(cfg, backbone, cache_dir: Path, made_on: str | None = None) -> dict[str, float]:
    """One cold pass of leukexp's extraction over every view of every image of the fold_data, views made where
    `made_on` says (`features.views`: cpu, device or auto; default the plan's)."""
    from leukexp.data.fold_data import build_fold_data
    from leukexp.features.embed import ViewPass, part_caches, sample_features

    fold_data = build_fold_data(cfg)
    samples = all_views(len(fold_data.catalog.frame), fold_data.augmentation.n_views)
    shutil.rmtree(cache_dir, ignore_errors=True)
    start = time.perf_counter()
    caches = part_caches(backbone, cache_dir)
    sample_features(backbone, fold_data.catalog.frame, samples, caches,
                    ViewPass(fold_data.augmentation, cfg.features.batch_size, cfg.features.num_workers,
                             description="benchmark pass", made_on=made_on or cfg.features.views))
    elapsed = time.perf_counter() - start
    return {"views": float(len(samples)), "seconds": elapsed, "images_per_s": len(samples) / elapsed,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def warm_workers(cfg, backbone, cache_dir: Path) -> None:
    """One small pass with workers (not timed), so passes compared with each other all find the worker processes'
    fork server started (its start, importing torch and the view pipeline, is paid once per process)."""
    from leukexp.data.fold_data import build_fold_data
    from leukexp.features.embed import ViewPass, part_caches, sample_features

    fold_data = build_fold_data(cfg)
    sample_features(backbone, fold_data.catalog.frame, all_views(2, 1), part_caches(backbone, cache_dir),
                    ViewPass(fold_data.augmentation, 2, 1, description="warm-up"))
    shutil.rmtree(cache_dir, ignore_errors=True)


def fold_features(plan, backbone) -> tuple:
    """The plan's fold data and its samples' features (train, val, test rows in order), from the store."""
    from leukexp.data.fold_data import build_fold_data
    from leukexp.run.embeds import SPLITS, caches_for, find, fold_embeds

    fold_data = build_fold_data(plan)
    every = find(fold_embeds(plan, fold_data), SPLITS).features(backbone, caches_for(plan, backbone, fold_data.stain),
                                                                plan.features)
    return fold_data, every


def measure_head_loop(plan, backbone) -> dict[str, float]:
    """The limit of a warm run: a bare torch loop of the default head's steps (features -> 128 -> classes, Adam,
    the run's batch size and epochs, one validation pass per epoch, one thread as the run gives a small head) on the
    run's own cached features, read from the store first (not timed)."""
    from torch import nn

    fold_data, every = fold_features(plan, backbone)
    samples = fold_data.samples
    train_x = torch.from_numpy(every[:len(samples.train)])
    train_y = torch.from_numpy(samples.train["label_index"].to_numpy())
    val_x = torch.from_numpy(every[len(samples.train):len(samples.train) + len(samples.val)])
    epochs, batch = int(plan.trainer.get("max_epochs")), plan.training.batch_size
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(train_x.shape[1], 128), nn.ReLU(), nn.Linear(128, len(fold_data.classes)))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, fused=True)
    loss_fn = nn.CrossEntropyLoss()
    start = time.perf_counter()
    for _ in range(epochs):
        model.train()
        for index in torch.randperm(len(train_x)).split(batch):
            optimizer.zero_grad()
            loss_fn(model(train_x[index]), train_y[index]).backward()
            optimizer.step()
        model.eval()
        with torch.no_grad():
            model(val_x).softmax(1)
    seconds = time.perf_counter() - start
    torch.set_num_threads(threads)
    return {"seconds": seconds, "steps": epochs * -(-len(train_x) // batch), "epochs": epochs}


def measure_bag_loop(plan, backbone) -> dict[str, float]:
    """The limit of a warm aggregator fold: a bare torch loop of `head=abmil`'s steps (the same gated attention
    network, bags padded once, the run's bags per step and epochs, one validation pass per epoch, one thread) over
    the fold's own bags, their instances' features read from the store first (not timed)."""
    from leukexp.heads.mil import BagNetwork, pad_bags

    fold_data, every = fold_features(plan, backbone)
    n_train, n_val = len(fold_data.samples.train), len(fold_data.samples.val)
    train_x = pad_bags(every[:n_train], fold_data.offsets("train"))
    val_x = pad_bags(every[n_train:n_train + n_val], fold_data.offsets("val"))
    train_y = torch.as_tensor(fold_data.labels("train")).float()
    epochs, batch = int(plan.trainer.get("max_epochs")), plan.training.batch_size
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    network = BagNetwork(every.shape[1], 1)
    network.standardize_to(every[:n_train])
    optimizer = torch.optim.Adam(network.parameters(), lr=1e-3, fused=True)
    start = time.perf_counter()
    for _ in range(epochs):
        network.train()
        for index in torch.randperm(len(train_x)).split(batch):
            optimizer.zero_grad()
            torch.nn.functional.binary_cross_entropy_with_logits(network(train_x[index]).squeeze(-1),
                                                                 train_y[index]).backward()
            optimizer.step()
        network.eval()
        with torch.no_grad():
            network(val_x)
    seconds = time.perf_counter() - start
    torch.set_num_threads(threads)
    return {"seconds": seconds, "steps": epochs * -(-len(train_x) // batch), "epochs": epochs}


def measure_differential_loop(plan, backbone, repeats: int = 5) -> dict[str, float]:
    """The limit of a warm differential fold's fitting: its steps done bare with scikit-learn (a scaled logistic
    regression on the training bags' typed cells, every cell's type probabilities, each bag's mean, a scaled logistic
    regression on the training bags' means, val and test bags scored) on the fold's own cached features; the median of
    `repeats` timings."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    fold_data, every = fold_features(plan, backbone)
    sizes = [len(fold_data.samples.train), len(fold_data.samples.val), len(fold_data.samples.test)]
    parts = np.split(every, np.cumsum(sizes)[:2])
    offsets = [fold_data.offsets(name) for name in ("train", "val", "test")]
    types = fold_data.instance_types("train")
    labelled = types != ""
    timings = []
    for _ in range(repeats):
        start = time.perf_counter()
        cells = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, random_state=0))
        cells.fit(parts[0][labelled], types[labelled].astype(str))
        means = [np.add.reduceat(cells.predict_proba(x), o[:-1], axis=0) / np.diff(o)[:, None]
                 for x, o in zip(parts, offsets, strict=True)]
        bag = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, random_state=0))
        bag.fit(means[0], fold_data.labels("train"))
        bag.predict_proba(means[1])
        bag.predict_proba(means[2])
        timings.append(time.perf_counter() - start)
    return {"seconds": float(np.median(timings)), "cells": int(labelled.sum()), "bags": len(offsets[0]) - 1}


def run_cli(args: list[str], root: Path, load: int = 0) -> dict[str, float]:
    """`leukexp-train ARGS` as a user runs it (optionally beside `load` busy-loop processes): seconds."""
    env = {**os.environ, "LEUKEXP_ROOT": str(root), "COLUMNS": "200"}
    env.pop("MLFLOW_TRACKING_URI", None)
    burners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(load)]
    try:
        start = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "leukexp.commands.train", *args], cwd=root, env=env,
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
    phases = {f"{name}_s": float(value) for line in done.stdout.splitlines() if "done in" in line
              for name, value in PHASE.findall(line.split("(", 1)[-1])}
    return {"wall_s": wall, "run_s": inside if inside is not None else float("nan"), "peak_rss_mb": peak, **phases}


def on_team_server(root: Path, args: list[str]) -> dict[str, float]:
    """`leukexp-train ARGS` logging to a team server (`leukexp-server --auth`: MLflow on PostgreSQL, accounts on)
    started under ROOT/team-server for this measure and stopped after it."""
    from leukexp.tracking import server
    from leukexp.tracking.reach import ACCOUNT_ENV

    folder = root / "team-server"
    shutil.rmtree(folder, ignore_errors=True)
    account = {ACCOUNT_ENV[0]: "admin", ACCOUNT_ENV[1]: f"bench-{os.getpid()}-{time.time_ns()}"}
    saved = {name: os.environ.get(name) for name in account}
    os.environ.update(account)
    try:
        state = server.start(folder, port=free_port(), auth=True)
        run_cli([*args, f"mlflow.tracking_uri={state['uri']}"], root)  # the server's first run: its experiment
        return run_cli([*args, f"mlflow.tracking_uri={state['uri']}"], root)
    finally:
        server.stop(folder)
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def free_port() -> int:
    """A TCP port nothing listens on."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def fresh_store(root: Path) -> None:
    """An empty MLflow store: every measured job writes to a store of the same size."""
    shutil.rmtree(root / "mlruns", ignore_errors=True)


def table(result: Result) -> str:
    """The result as the plain-text table docs/benchmarks.md quotes."""
    lines = [f"machine: {result.machine}"]
    if result.raw:
        lines.append(f"raw backbone forward        {result.raw['images_per_s']:9.1f} img/s"
                     f"  (batch {int(result.raw['batch_size'])})")
    if result.extraction:
        ratio = result.extraction["images_per_s"] / result.raw["images_per_s"] if result.raw else float("nan")
        lines.append(f"leukexp extraction          {result.extraction['images_per_s']:9.1f} img/s  ratio {ratio:.2f}"
                     f"  ({int(result.extraction['views'])} views in {result.extraction['seconds']:.1f} s,"
                     f" peak RSS {result.extraction['peak_rss_mb']:.0f} MB)")
        for made_on, measured in list(result.extraction_by_views.items())[1:]:
            other = measured["images_per_s"] / result.raw["images_per_s"] if result.raw else float("nan")
            lines.append(f"  views on {made_on:<17} {measured['images_per_s']:9.1f} img/s  ratio {other:.2f}"
                         f"  ({int(measured['views'])} views in {measured['seconds']:.1f} s)")
    if result.head_loop:
        loop = result.head_loop
        lines.append(f"bare head loop              {loop['seconds']:7.1f} s  ({int(loop['steps'])} steps,"
                     f" {int(loop['epochs'])} epochs)")
    for head, job in result.jobs.items():
        line = f"warm job head={head:<13} {job['run_s']:7.1f} s in run, {job['wall_s']:6.1f} s wall"
        if head in ("mlp1", "abmil") and result.head_loop:
            line += f"  ({job['run_s'] / result.head_loop['seconds']:.2f}x the bare head loop)"
        if head == "differential" and result.differential_loop and "head_s" in job:
            loop = result.differential_loop["seconds"]
            line += (f"  (head phase {job['head_s']:.2f} s: {job['head_s'] / max(loop, 1e-9):.2f}x the bare"
                     f" differential loop, {loop:.3f} s)")
        if head in result.load:
            loaded = result.load[head]
            line += (f" | under 2-process load {loaded['run_s']:6.1f} s in run"
                     f" ({loaded['run_s'] / job['run_s']:.2f}x)")
        lines.append(line)
    for head, job in result.team_server.items():
        line = f"  on the team server        {job['run_s']:7.1f} s in run (MLflow {job.get('MLflow_s', 0):.1f} s)"
        if head in ("mlp1", "abmil") and result.head_loop:
            line += f"  ({job['run_s'] / result.head_loop['seconds']:.2f}x the bare head loop)"
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


SCALE_SIZES = (5_000, 50_000, 500_000)
SCALE_MODEL = ["model=timm", "model.name=test_efficientnet", "model.pretrained=false", "model.input_size=32",
               "augmentation=paper", "data.image_size=48", "features.batch_size=256"]
SCALE_CLASSES = ("ALL", "AML", "CLL", "CML", "HLT")

# a job's own peak memory: VmHWM of its address space (ru_maxrss would carry over the benchmark process's peak,
# which Linux keeps across the fork and exec that start a job)
PEAK = """
def peak_rss():
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmHWM:"))
"""

WARM_JOB = PEAK + """
import json, sys, time
from pathlib import Path
import numpy as np
mode, root, overrides = sys.argv[1], Path(sys.argv[2]), json.loads(sys.argv[3])
baseline = root / "contiguous.npy"
sys.path.insert(0, {script_dir!r})
from benchmark import compose_plan
from leukexp.run.settings import backbone_from_plan
from leukexp.data.fold_data import build_fold_data
import dataclasses
from leukexp.run.embeds import SPLITS, cache_note, caches_for, find, fold_embeds
from leukexp.runtime.process import seed_everything
cfg = compose_plan(root, overrides)
fold_data = build_fold_data(cfg)
seed_everything(cfg.seed)  # the random-init model of the cold pass, so the same cache key
backbone = backbone_from_plan(cfg)
embeds = find(fold_embeds(cfg, fold_data), SPLITS)  # what the job reads (its plan), not the reading: not timed
if mode == "np_load":  # the same process state as the store's read (its imports, its wait): only the read differs
    start = time.perf_counter()
    array = np.load(baseline)
    print(json.dumps({{"np_load_s": time.perf_counter() - start, "bytes": array.nbytes}}))
    sys.exit()
before = peak_rss()
start = time.perf_counter()
caches = caches_for(cfg, backbone, fold_data.stain)
every = embeds.features(backbone, caches, dataclasses.replace(cfg.features, num_workers=0))
read = time.perf_counter() - start
note = cache_note(caches)
assert "0 misses" in note, note
parts = [every]
if mode == "write_baseline":
    np.save(baseline, np.concatenate(parts))
    sys.exit()
rss = peak_rss()
print(json.dumps({{"read_s": read, "bytes": sum(p.nbytes for p in parts), "rows": sum(len(p) for p in parts),
                  "peak_rss_bytes": rss, "rss_before_read": before}}))
"""


def warm_read(template: str, root: Path, argument: str) -> dict[str, float]:
    """A warm job's read in a fresh process (`template`: WARM_JOB or STORE_JOB), and `np.load` of the same bytes in
    another one (written first by a third)."""

    def job(mode: str) -> dict[str, float]:
        code = template.format(script_dir=str(Path(__file__).parent))
        done = subprocess.run([sys.executable, "-c", code, mode, str(root), argument], capture_output=True, text=True,
                              timeout=3600)
        if done.returncode:
            raise RuntimeError(done.stderr[-2000:])
        lines = done.stdout.strip().splitlines()
        return json.loads(lines[-1]) if lines else {}

    job("write_baseline")
    measured = job("store") | job("np_load")
    (root / "contiguous.npy").unlink()
    return measured


def scale_counts(views: int, per_image: int = 33) -> dict[str, int]:
    """Images per class for about `views` views of `per_image` each, spread over the five classes."""
    images = -(-views // per_image)
    per_class = -(-images // len(SCALE_CLASSES))
    return dict.fromkeys(SCALE_CLASSES, per_class)


def growth_exponent(sizes: list[float], seconds: list[float]) -> float:
    """The slope of log(time) against log(size): 1 is linear growth."""
    return float(np.polyfit(np.log(sizes), np.log(seconds), 1)[0])


def measure_scale(root: Path, views: int, extra: list[str]) -> dict[str, float]:
    """One size: cold extraction, files created, and a warm job's read time, baseline and peak RSS."""
    from leukexp.data.fold_data import build_fold_data
    from leukexp.features.embed import ViewPass, part_caches, sample_features
    from leukexp.run.settings import backbone_from_plan
    from leukexp.runtime.process import seed_everything

    counts = scale_counts(views)
    overrides = [*SCALE_MODEL, "data.counts={" + ", ".join(f"{k}: {v}" for k, v in counts.items()) + "}", *extra]
    cfg = compose_plan(root, overrides)
    seed_everything(cfg.seed)
    backbone = backbone_from_plan(cfg)
    started = time.perf_counter()
    fold_data = build_fold_data(cfg)
    data_s = time.perf_counter() - started
    samples = all_views(len(fold_data.catalog.frame), fold_data.augmentation.n_views)
    shutil.rmtree(Path(cfg.features.dir), ignore_errors=True)
    raw = measure_raw(backbone, 256, 5.0)["images_per_s"]
    start = time.perf_counter()
    caches = part_caches(backbone, cfg.features.dir)
    sample_features(backbone, fold_data.catalog.frame, samples, caches,
                    ViewPass(fold_data.augmentation, 256, cfg.features.num_workers, description="scale pass"))
    cold = time.perf_counter() - start
    files = caches[0].files()  # shard files after the pass (which merges small ones once 8 pile up)
    warm = warm_read(WARM_JOB, root, json.dumps(overrides))
    return {"views": float(len(samples)), "images": float(len(fold_data.catalog.frame)), "data_s": data_s,
            "cold_s": cold, "cold_views_per_s": len(samples) / cold, "raw_views_per_s": raw,
            "cold_to_raw": len(samples) / cold / raw, "files": float(files),
            "files_per_100k": files / len(samples) * 100_000, "store_bytes": float(caches[0].size_bytes()),
            "job_rows": float(warm["rows"]), "job_bytes": float(warm["bytes"]), "job_read_s": warm["read_s"],
            "np_load_s": warm["np_load_s"], "read_speed_vs_np_load": warm["np_load_s"] / warm["read_s"],
            "job_peak_rss_bytes": float(warm["peak_rss_bytes"]),
            "rss_over_bytes_gb": (warm["peak_rss_bytes"] - warm["bytes"]) / 2**30}


def read_cells(row: dict[str, float]) -> str:
    """The warm read's cells of a table row: rows and bytes, seconds, np.load's, the ratio, memory over the bytes."""
    return (f" {row['job_rows']:,.0f} rows, {row['job_bytes'] / 2**20:,.0f} MiB | {row['job_read_s']:.3f} |"
            f" {row['np_load_s']:.3f} | {row['read_speed_vs_np_load']:.2f}x | {row['rss_over_bytes_gb']:.2f} GiB |")


def scale_table(rows: list[dict[str, float]]) -> str:
    """The scale results as a markdown table, with the growth exponents."""
    lines = ["| views | images | cold views/s (x raw) | files (per 100 k) | job reads | job read s | np.load s |"
             " read speed vs np.load | job peak RSS - bytes |", "|" + "---|" * 9]
    for row in rows:
        lines.append(
            f"| {row['views']:,.0f} | {row['images']:,.0f} | {row['cold_views_per_s']:,.0f}"
            f" ({row['cold_to_raw']:.2f}) | {row['files']:.0f} ({row['files_per_100k']:.1f}) |" + read_cells(row))
    views = [row["views"] for row in rows]
    if len(rows) > 1:
        lines.append("")
        lines.append(f"time vs views, exponent (1 = linear): cold extraction"
                     f" {growth_exponent(views, [r['cold_s'] for r in rows]):.2f}, warm job read"
                     f" {growth_exponent(views, [r['job_read_s'] for r in rows]):.2f}")
    return "\n".join(lines)


STORE_JOB = PEAK + """
import json, sys, time
from pathlib import Path
import numpy as np
mode, root, images = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
baseline = root / "contiguous.npy"
sys.path.insert(0, {script_dir!r})
from benchmark import store_job_codes
from leukexp.features.cache import FeatureCache
codes = store_job_codes(images)
if mode == "np_load":  # the same process state as the store's read: only the read differs
    start = time.perf_counter()
    array = np.load(baseline)
    print(json.dumps({{"np_load_s": time.perf_counter() - start}}))
    sys.exit()
before = peak_rss()
start = time.perf_counter()
values, found = FeatureCache(root, "store").get_codes(codes, 256)
read = time.perf_counter() - start
assert found.all(), int((~found).sum())
if mode == "write_baseline":
    np.save(baseline, values)
    sys.exit()
print(json.dumps({{"read_s": read, "rows": len(values), "bytes": values.nbytes,
                  "peak_rss_bytes": peak_rss()}}))
"""


def store_keys(images: int) -> tuple[np.ndarray, np.ndarray]:
    """Image codes of `images` synthetic content hashes, and the codes of the 33 views of the study."""
    import hashlib

    from leukexp.features.cache import image_codes, view_code

    keys = [hashlib.sha1(str(i).encode(), usedforsecurity=False).hexdigest() for i in range(images)]
    views = np.array([view_code("original"), *(view_code(f"scale-{v}") for v in range(1, 33))], np.uint64)
    return image_codes(keys), views


def store_job_codes(images: int) -> np.ndarray:
    """What a warm job of a fold reads: every view of its training images (80 %), the others' originals."""
    image, views = store_keys(images)
    train = int(images * 0.8)
    return np.concatenate([(image[:train, None] ^ views[None, :]).reshape(-1), image[train:] ^ views[0]])


def measure_store(root: Path, entries: int) -> dict[str, float]:
    """The store alone at `entries` entries (33 views per image, 256 floats each, random values): written as a cold
    pass writes (each image's views together, images in lock-bucket order), the pass's index and compaction, then
    a warm job's read in a fresh process against np.load of the same bytes in another one."""
    from leukexp.features.cache import FeatureCache

    shutil.rmtree(root, ignore_errors=True)
    images = -(-entries // 33)
    image, views = store_keys(images)
    cache = FeatureCache(root, "store")
    rng = np.random.default_rng(0)
    start = time.perf_counter()
    for chunk in np.array_split(rng.permutation(images), max(1, images // 512)):
        codes = (image[chunk, None] ^ views[None, :]).reshape(-1)
        cache.put_codes(codes, rng.standard_normal((len(codes), 256), np.float32))
    cache.flush()
    written = time.perf_counter() - start
    files_before = cache.files()
    start = time.perf_counter()
    cache.settle()
    settled = time.perf_counter() - start
    warm = warm_read(STORE_JOB, root, str(images))
    return {"views": float(images * 33), "images": float(images), "write_s": written, "settle_s": settled,
            "files_before_compaction": float(files_before), "files": float(cache.files()),
            "files_per_100k": cache.files() / (images * 33) * 100_000, "job_rows": float(warm["rows"]),
            "job_bytes": float(warm["bytes"]), "job_read_s": warm["read_s"], "np_load_s": warm["np_load_s"],
            "read_speed_vs_np_load": warm["np_load_s"] / warm["read_s"],
            "job_peak_rss_bytes": float(warm["peak_rss_bytes"]),
            "rss_over_bytes_gb": (warm["peak_rss_bytes"] - warm["bytes"]) / 2**30}


def store_main(root: Path, sizes: list[int], target: Path | None) -> list[dict[str, float]]:
    """`--store`: the store alone at every size, a table, the JSON."""
    rows = []
    for entries in sizes:
        rows.append(measure_store(root / f"store-{entries}", entries))
        print(json.dumps(rows[-1]), flush=True)
    lines = ["| entries | files before -> after compaction (per 100 k) | write s | index + compaction s | job reads |"
             " job read s | np.load s | read speed vs np.load | job peak RSS - bytes |", "|" + "---|" * 9]
    for row in rows:
        lines.append(
            f"| {row['views']:,.0f} | {row['files_before_compaction']:.0f} -> {row['files']:.0f}"
            f" ({row['files_per_100k']:.2f}) | {row['write_s']:.1f} | {row['settle_s']:.1f} |" + read_cells(row))
    print("\n".join(lines))
    (target or root / "store.json").write_text(json.dumps({"machine": machine(torch.device("cpu")), "rows": rows},
                                                          indent=2) + "\n")
    return rows


def scale_main(root: Path, sizes: list[int], extra: list[str], target: Path | None) -> list[dict[str, float]]:
    """`--scale`: every size in turn, a table, the JSON."""
    rows = []
    for views in sizes:
        rows.append(measure_scale(root / f"scale-{views}", views, extra))
        print(json.dumps(rows[-1]), flush=True)
    print(scale_table(rows))
    (target or root / "scale.json").write_text(json.dumps({"machine": machine(torch.device("cpu")), "rows": rows},
                                                          indent=2) + "\n")
    return rows


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
    parser.add_argument("--bags", action="store_true", help="the bag study (experiment=mil_baseline): head_loop is a"
                        " bare loop of the abmil steps over the same bags, jobs are aggregator folds")
    parser.add_argument("--views", type=lambda text: text.split(","), default=["auto"],
                        help="where extraction makes its views (features.views: auto, cpu, device), comma-separated,"
                             " one cold pass each; the first is the table's extraction row")
    parser.add_argument("--scale", action="store_true", help="the framework at several sizes (see above)")
    parser.add_argument("--sizes", nargs="+", type=int, default=list(SCALE_SIZES), help="views per --scale size")
    parser.add_argument("--store", nargs="+", type=int, default=[],
                        help="the store alone at these entry counts (synthetic entries, no images or model: the"
                             " read path at sizes whose images would take hours to make here), e.g. 5000000")
    parser.add_argument("overrides", nargs="*", help="more Hydra overrides for every measure (e.g. trainer=gpu)")
    args = parser.parse_args(argv)
    if args.store:
        store_main(args.root.resolve(), args.store, args.json)
        return Result()
    if args.scale:
        scale_main(args.root.resolve(), args.sizes, args.overrides, args.json)
        return Result()
    chosen = [m for m in (args.only or DEFAULT_MEASURES) if m not in args.skip]
    root = args.root.resolve()
    root.mkdir(parents=True, exist_ok=True)
    overrides = [*(["experiment=mil_baseline", "head=abmil"] if args.bags else []), f"model={args.model}",
                 f"model.pretrained={args.pretrained}", f"features.device={args.device}",
                 f"features.precision={args.precision}", *args.overrides]
    if args.bags and args.heads == list(DEFAULT_HEADS):
        args.heads = ["abmil", "meanpool", "vote"]

    from leukexp.features.embed import batch_size_for
    from leukexp.run.settings import backbone_from_plan
    from leukexp.runtime.process import seed_everything

    cfg = compose_plan(root, overrides)
    seed_everything(0)
    backbone = backbone_from_plan(cfg)
    result = Result(machine=machine(backbone.device))
    print(f"machine: {result.machine}", flush=True)
    if "raw" in chosen:
        result.raw = measure_raw(backbone, batch_size_for(cfg.features.batch_size, backbone.device),
                                 args.raw_seconds)
        print(f"raw forward: {result.raw['images_per_s']:.1f} img/s", flush=True)
    if "extraction" in chosen:
        if len(args.views) > 1:  # the worker processes' fork server starts once per process: not in the first pass
            warm_workers(cfg, backbone, root / "warm-up")
        for made_on in args.views:
            result.extraction_by_views[made_on] = measure_extraction(cfg, backbone, Path(cfg.features.dir), made_on)
            print(f"extraction, views on {made_on}: {result.extraction_by_views[made_on]['images_per_s']:.1f} img/s",
                  flush=True)
        result.extraction = result.extraction_by_views[args.views[0]]
        if result.raw:  # again after the pass: the ratio uses the mean of both (a busy machine drifts)
            before = result.raw["images_per_s"]
            after = measure_raw(backbone, int(result.raw["batch_size"]), args.raw_seconds)["images_per_s"]
            result.raw |= {"images_per_s_before": before, "images_per_s_after": after,
                           "images_per_s": (before + after) / 2}
            print(f"raw forward again: {after:.1f} img/s", flush=True)
    if "head_loop" in chosen:
        result.head_loop = (measure_bag_loop if args.bags else measure_head_loop)(cfg, backbone)
        print(f"bare head loop: {result.head_loop}", flush=True)
        if args.bags and "differential" in args.heads:
            result.differential_loop = measure_differential_loop(cfg, backbone)
            print(f"bare differential loop: {result.differential_loop}", flush=True)
    for head in args.heads if "jobs" in chosen else []:
        fresh_store(root)
        result.jobs[head] = run_cli([*overrides, f"head={head}"], root)
        print(f"warm job {head}: {result.jobs[head]}", flush=True)
    for head in args.heads if "team_server" in chosen else []:
        result.team_server[head] = on_team_server(root, [*overrides, f"head={head}"])
        print(f"warm job {head} on the team server: {result.team_server[head]}", flush=True)
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
