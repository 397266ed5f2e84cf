"""The Hydra config: where it lives and composing it (`compose`), and every scalar key described once (`schema`).

Importing it registers `${leukexp.env:NAME,default}`: an environment variable that is set but empty counts as
unset (OmegaConf's `oc.env` would give `""`, and `LEUKEXP_ROOT=` would put `cache/` and `mlruns/` at the file
system's root).
"""

import os

from omegaconf import OmegaConf


def env_or_default(name: str, default: str | None = None) -> str | None:
    """The variable's value, or `default` where it is unset or empty (blank)."""
    value = os.environ.get(name, "")
    return value if value.strip() else default


OmegaConf.register_new_resolver("leukexp.env", env_or_default, replace=True)
