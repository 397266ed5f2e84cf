"""Hydra's plugin entry for leukexp's search: `hydra/sweeper=optuna` (Hydra loads plugins from `hydra_plugins`)."""

from leukexp.sweeps.search import FoldSearch


class OptunaSweeper(FoldSearch):
    """An Optuna study whose trials are a configuration's k folds (`leukexp.sweeps.search`)."""


__all__ = ["OptunaSweeper"]
