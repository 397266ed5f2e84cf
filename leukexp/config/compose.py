"""Where the Hydra configs live (editable installs and built wheels alike), composing them with Hydra, and
building objects from them."""

from __future__ import annotations

import copy
import functools
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

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


def compose_train(overrides: Sequence[str] = (), return_hydra_config: bool = False) -> DictConfig:
    """`train.yaml` composed with `overrides` by Hydra, as `leukexp-train` would compose it (not resolved; with
    `return_hydra_config`, its `hydra` node too).

    Inside a running Hydra app its own Hydra composes (same search path, plugins included); elsewhere (the
    predict CLI, tests) a Hydra is set up on `config_dir()` for the call.
    """
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    if GlobalHydra.instance().is_initialized():
        return compose(config_name="train", overrides=list(overrides), return_hydra_config=return_hydra_config)
    with initialize_config_dir(str(config_dir()), version_base="1.3", job_name="leukexp"):
        return compose(config_name="train", overrides=list(overrides), return_hydra_config=return_hydra_config)


def group_options(group: str) -> list[str]:
    """The option names of a config group (`model` -> `concat`, `dinobloom_b`, ...), sorted."""
    return sorted(path.stem for path in (config_dir() / group).glob("*.yaml"))


def load_option(group: str, name: str, overrides: Sequence[str] = (), key: str | None = None) -> dict[str, Any]:
    """The resolved config a group holds after `group=name` (its own defaults merged in, interpolations resolved
    against the composed `train.yaml` with `overrides`, e.g. `seed=7`).

    An unknown name is one line naming `key` (default: the group) and the known options.
    """
    known = group_options(group)
    if name not in known:
        raise LeukexpError(f"{key or group}: '{name}' is not a {group} config (known: {', '.join(known)})")
    return copy.deepcopy(_composed_option(group, name, tuple(overrides)))  # callers may change their copy


@functools.cache
def _composed_option(group: str, name: str, overrides: tuple[str, ...]) -> dict[str, Any]:
    """`load_option`'s composition, once per process (validation and building ask for the same members)."""
    from omegaconf import OmegaConf

    return OmegaConf.to_container(compose_train([f"{group}={name}", *overrides])[group], resolve=True)


def default_choices() -> dict[str, str]:
    """The option each config group takes when nothing is chosen (the defaults list of `train.yaml`)."""
    return dict(_default_choices())


@functools.cache
def _default_choices() -> dict[str, str]:
    """`default_choices`, composed once per process (each run's tags ask for it)."""
    choices = compose_train(return_hydra_config=True).hydra.runtime.choices
    return {str(k): str(v) for k, v in choices.items() if v is not None and "/" not in str(k)}
