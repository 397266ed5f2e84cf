"""Multiruns: per-job set-up and bookkeeping of Hydra sweeps, and the fold-aware hyper-parameter search.

`SweepCallback` is the name `hydra.callbacks` builds from (`_target_: leukexp.sweeps.SweepCallback`).
"""

from leukexp.exports import lazy_exports

__all__ = ["SweepCallback"]
__getattr__, __dir__ = lazy_exports(__name__, {"SweepCallback": "multirun"})
