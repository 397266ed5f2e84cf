"""Where the Hydra configs live, for editable installs and built wheels alike."""

from __future__ import annotations

from pathlib import Path

_PACKAGE_DIR = Path(__file__).resolve().parent


def config_dir() -> Path:
    """Return the directory holding `train.yaml`: `leukexp/conf` in a wheel, `conf/` in a checkout."""
    for candidate in (_PACKAGE_DIR / "conf", _PACKAGE_DIR.parent / "conf"):
        if (candidate / "train.yaml").is_file():
            return candidate
    raise FileNotFoundError(f"leukexp's configs are missing: looked in {_PACKAGE_DIR / 'conf'}")
