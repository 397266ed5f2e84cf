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
import shutil
from dataclasses import asdict
from pathlib import Path

from benchmarks.common import Result, compose_plan, machine
from benchmarks.jobs import fresh_store, on_team_server, run_cli
from benchmarks.loops import measure_bag_loop, measure_differential_loop, measure_head_loop
from benchmarks.scale import SCALE_SIZES, scale_main
from benchmarks.store import store_main
from benchmarks.table import table
from benchmarks.throughput import measure_extraction, measure_raw, warm_workers

MEASURES = ("raw", "extraction", "head_loop", "jobs", "team_server", "load", "sweep", "cold_sweep")
DEFAULT_MEASURES = tuple(m for m in MEASURES if m != "team_server")  # it needs PostgreSQL: asked for by name
DEFAULT_HEADS = ("mlp1", "mlp3", "svm", "logreg")


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
