"""leukexp: leukemia microscopy studies as Hydra configuration."""

from leukexp.errors import LeukexpError
from leukexp.legacy import install as _install_legacy_paths

_install_legacy_paths()  # `leukexp.serving` (saved models' loader) and other module paths of earlier versions

__all__ = ["LeukexpError", "__version__"]
__version__ = "0.1.0"
