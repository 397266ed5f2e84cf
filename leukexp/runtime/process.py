"""Process-wide set-up, in one place: every entry point (`leukexp-train` and its launcher workers, `-predict`,
`-report`, `-sync`, the benchmark) calls `prepare_process()` first; importing leukexp changes nothing.

What it sets, and why:

- `GOMP_SPINCOUNT=20000` (before torch loads GNU OpenMP): idle OpenMP threads spin 300,000 times by default before
  sleeping, which makes a head training on two threads crawl when other processes want the cores (mlp3: 121 s under
  a two-process load, 19-22 s alone); 20,000 spins keep it as fast alone and let it share (53 s).
- `RAY_DEDUP_LOGS=0`: Ray shows every job's lines (it would merge two folds' alike metric tables into one).
- `HYDRA_FULL_ERROR=1`: Hydra re-raises composition errors, so `leukexp-train` reports them as one line itself.
- Quiet libraries: MLflow's artifact progress bars and database set-up lines, GitPython's refresh warning,
  Lightning's hardware banners and tips, and warnings known to be harmless here.
- Stop signals (SIGTERM, SIGINT) raise `Interrupted` (`runtime.signals`); log records carry no credentials
  (`runtime.secrets`).

A value already in the environment always wins. Threads (`usable_cores`, `torch_threads`) and seeds
(`seed_everything`) are set per job by the code that needs them, through the helpers here.
"""

from __future__ import annotations

import logging
import os
import random
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

ENVIRONMENT = {
    "GOMP_SPINCOUNT": "20000",
    "HYDRA_FULL_ERROR": "1",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
    "GIT_PYTHON_REFRESH": "quiet",
    "RAY_DEDUP_LOGS": "0",  # Ray would merge alike lines of different jobs (two folds' metric tables into one)
}
QUIET_LOGGERS = ("lightning.pytorch.utilities.rank_zero", "lightning.pytorch.accelerators.cuda",
                 "lightning.fabric.utilities.seed", "lightning.pytorch.utilities.seed",
                 "mlflow.store.db.utils", "alembic",  # a new SQLite store's table creation
                 "torch._subclasses.fake_tensor")  # its cache statistics at exit (a Ray worker's job logs INFO)
HARMLESS_WARNINGS = (".*in eval mode at the start of training.*", ".*LeafSpec.*", ".*litlogger.*",
                     ".*does not have many workers.*", ".*The number of training batches.*",
                     ".*An input example was not provided.*",
                     ".*The `srun` command is available on your system.*")  # Lightning, where Slurm is installed


def prepare_process() -> None:
    """The set-up every entry point runs first (idempotent; call it before torch is imported for OpenMP's part)."""
    from leukexp.runtime.secrets import redact_logs
    from leukexp.runtime.signals import install_stop_handlers

    for name, value in ENVIRONMENT.items():
        os.environ.setdefault(name, value)
    quiet_libraries()
    install_stop_handlers()
    redact_logs()


def quiet_libraries() -> None:
    """Silence Lightning's hardware banners and tips, and known harmless warnings."""
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    for message in HARMLESS_WARNINGS:
        warnings.filterwarnings("ignore", message=message)


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity: a Slurm or container limit), not the machine's count."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS and Windows have no affinity call
        return os.cpu_count() or 1


@contextmanager
def torch_threads(count: int | None) -> Iterator[None]:
    """Run the block with `count` torch CPU threads (None: unchanged), restoring the count afterwards."""
    import torch

    previous = torch.get_num_threads()
    if count:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch, and tell Lightning the seed for its data-loader workers (as its own
    `seed_everything(workers=True)` does, through its `PL_GLOBAL_SEED` and `PL_SEED_WORKERS` variables, without
    importing Lightning for heads that never use it)."""
    import numpy as np
    import torch

    os.environ["PL_GLOBAL_SEED"] = str(seed)
    os.environ["PL_SEED_WORKERS"] = "1"
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
