"""Quiet third-party chatter so a run's output is the study, not the libraries' tips."""

from __future__ import annotations

import logging
import os
import warnings


def quiet_libraries() -> None:
    """Silence Lightning's hardware banners and tips, and known harmless warnings."""
    os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.pytorch.accelerators.cuda",
                 "lightning.fabric.utilities.seed", "lightning.pytorch.utilities.seed"):
        logging.getLogger(name).setLevel(logging.WARNING)
    harmless = (".*in eval mode at the start of training.*", ".*LeafSpec.*", ".*litlogger.*",
                ".*does not have many workers.*", ".*The number of training batches.*",
                ".*An input example was not provided.*")
    for message in harmless:
        warnings.filterwarnings("ignore", message=message)
