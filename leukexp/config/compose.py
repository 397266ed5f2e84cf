"""Where the Hydra configs live (editable installs and built wheels alike), and building objects from them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from leukexp.errors import LeukexpError

_PACKAGE_DIR = Path(__file__).resolve().parents[1]  # leukexp/


def config_dir() -> Path:
    """Return the directory holding `train.yaml`: `leukexp/conf` in a wheel, `conf/` in a checkout."""
    for candidate in (_PACKAGE_DIR / "conf", _PACKAGE_DIR.parent / "conf"):
        if (candidate / "train.yaml").is_file():
            return candidate
    raise FileNotFoundError(f"leukexp's configs are missing: looked in {_PACKAGE_DIR / 'conf'}")


def build(node: Any, key: str, **kwargs: Any) -> Any:
    """Instantiate a `_target_` config node; a failure is one `LeukexpError` naming the config key.

    Hydra wraps errors raised while building objects in a multi-line `InstantiationException`; a
    user-facing error from inside (data, weights files) is passed on as it is, any other one is named by key.
    """
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    try:
        return instantiate(node, **kwargs)
    except InstantiationException as error:
        cause = error.__cause__
        if isinstance(cause, LeukexpError):
            raise cause from None
        detail = f"{type(cause).__name__}: {cause}" if cause else str(error)
        raise LeukexpError(f"config '{key}': {detail.splitlines()[0][:300]}") from error
