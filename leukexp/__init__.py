"""leukexp: leukemia microscopy studies as Hydra configuration."""

from leukexp.errors import LeukexpError

__all__ = ["LeukexpError", "__version__"]
__version__ = "0.1.0"
