"""Ray: the launcher's settings (`hydra/launcher=ray`) and work split into Ray tasks (`leukexp-extract --ray-tasks`).

`hydra/launcher=ray` is hydra-ray-launcher's launcher with leukexp's settings (`RayLauncherSettings`, stored over the
plugin's own by `hydra_plugins/leukexp_ray`): it joins the cluster at RAY_ADDRESS, else one started on this machine
with `ray start --head`, else starts a Ray for the sweep (the plugin's own settings fail to join a running cluster:
they always ask for a 75 MB object store, which Ray refuses to a driver that joins); each job is a task with one
CPU (Ray sets OMP_NUM_THREADS, torch's threads, to it) in a fresh worker process (`max_calls=1`: nothing carried
from one job to the next).

`leukexp-extract --ray-tasks N` runs what `leukexp-extract --shard k/N` does, for every k, as a task on the same
cluster and waits for them all; each task with the CPUs and GPUs asked for (Ray gives a GPU task its own
`CUDA_VISIBLE_DEVICES`), in the caller's working folder. As on Slurm, the data, `paths.cache_dir` and the tracking
store must be on a disk every node mounts (or use a tracking server). A stopped command cancels its tasks.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from leukexp.errors import LeukexpError

INSTALL_HINT = "pip install 'leukexp[ray]'"


@dataclass
class RaySettings:
    """`ray.init` arguments and each job's `ray.remote` options."""

    init: dict[str, Any] = field(default_factory=lambda: {"address": None, "object_store_memory": None})
    remote: dict[str, Any] = field(default_factory=lambda: {"num_cpus": 1, "num_gpus": 0, "max_calls": 1})


@dataclass
class RayLauncherSettings:
    """`hydra/launcher=ray`: hydra-ray-launcher's launcher, these settings."""

    _target_: str = "hydra_plugins.hydra_ray_launcher.ray_launcher.RayLauncher"
    ray: RaySettings = field(default_factory=RaySettings)


@dataclass(frozen=True)
class RayResources:
    """What each task asks the cluster for."""

    cpus: float = 1.0
    gpus: float = 0.0


def call_in_folder(function: Callable[[str], dict[str, Any]], folder: str, shard: str) -> dict[str, Any]:
    """Inside a Ray worker: run one shard's function in the caller's working folder."""
    os.chdir(folder)
    return function(shard)


def import_ray() -> Any:
    """Ray, or one line saying how to install it."""
    try:
        import ray
    except ImportError:
        raise LeukexpError(f"--ray-tasks needs Ray, which is not installed: {INSTALL_HINT}") from None
    return ray


def extract_on_ray(run_shard: Callable[[str], dict[str, Any]], count: int, resources: RayResources
                   ) -> list[dict[str, Any]]:
    """Run `run_shard('k/count')` for every shard k as a Ray task (a picklable function: a module's, or a partial
    of one) and return the results in shard order; a stopped process cancels its tasks, a failed task is one line
    naming its shard."""
    ray = import_ray()
    from leukexp.runtime.signals import Interrupted

    if not ray.is_initialized():
        ray.init()
    task = ray.remote(num_cpus=resources.cpus, num_gpus=resources.gpus, max_calls=1)(call_in_folder)
    pending = {task.options(name=f"shard {index}/{count}").remote(run_shard, os.getcwd(), f"{index}/{count}"): index
               for index in range(count)}  # a task's name prefixes its lines: (shard 0/4 pid=...)
    results: dict[int, dict[str, Any]] = {}
    try:
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            index = pending.pop(done[0])
            try:
                results[index] = ray.get(done[0])
            except ray.exceptions.RayError as error:
                raise LeukexpError(f"shard {index}/{count} failed on Ray: {task_error(error)}") from None
    except (Interrupted, LeukexpError):
        for ref in pending:
            ray.cancel(ref, force=True)
        raise
    return [results[index] for index in range(count)]


def task_error(error: BaseException) -> str:
    """A failed task's own error in one line (Ray wraps it with the remote traceback)."""
    cause = getattr(error, "cause", None)
    if cause is not None:
        return f"{type(cause).__name__}: {str(cause).splitlines()[0] if str(cause) else ''}"[:500]
    lines = [line for line in str(error).splitlines() if line.strip()]
    return (lines[-1] if lines else type(error).__name__)[:500]
