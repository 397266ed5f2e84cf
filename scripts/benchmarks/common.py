"""What every measure shares: the result record, the run plan composed as a run's door composes it, the machine."""

from __future__ import annotations

import json
import os
import platform
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from leukexp.config.plan import RunPlan
from leukexp.runtime.process import prepare_process

prepare_process()  # before torch loads: the same OpenMP setting as the CLI it is compared with

import torch  # noqa: E402  (after prepare_process, see above)

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


def compose_plan(root: Path, overrides: list[str]) -> RunPlan:
    """The run plan for `overrides`, with paths under `root` (no Hydra app running), read as a run's door does."""
    from hydra import compose, initialize_config_dir

    from leukexp.config.compose import config_dir
    from leukexp.run.validation import validate

    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = compose("train", overrides=[f"paths.root_dir={root}", f"paths.output_dir={root}/outputs", *overrides])
        validate(cfg)
        return RunPlan.from_config(cfg)




def peak_rss() -> int:
    """This process's own peak memory in bytes: VmHWM of its address space (ru_maxrss would carry over the parent's
    peak, which Linux keeps across the fork and exec that start a job)."""
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmHWM:"))


def measure_sizes(measure: Callable[[int], dict[str, float]], sizes: list[int],
                  table: Callable[[list[dict[str, float]]], str], target: Path) -> list[dict[str, float]]:
    """Every size in turn (each row printed as JSON when measured), then the table, and the JSON file `target`."""
    rows = []
    for size in sizes:
        rows.append(measure(size))
        print(json.dumps(rows[-1]), flush=True)
    print(table(rows))
    target.write_text(json.dumps({"machine": machine(torch.device("cpu")), "rows": rows}, indent=2) + "\n")
    return rows
