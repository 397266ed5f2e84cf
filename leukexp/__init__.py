"""leukexp: leukemia microscopy studies as Hydra configuration."""

import os

# Before torch loads GNU OpenMP: its idle threads spin 300,000 times (the default) before sleeping, which makes
# a head training on two threads crawl when other processes want the cores (mlp3: 121 s under a two-process
# load, 19-22 s alone); 20,000 spins keep it as fast alone and let it share (53 s). A value in the
# environment wins.
os.environ.setdefault("GOMP_SPINCOUNT", "20000")

from leukexp.errors import LeukexpError

__all__ = ["LeukexpError", "__version__"]
__version__ = "0.1.0"
