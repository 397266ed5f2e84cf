"""A configuration's identity, read once at the run's door: the group choices of the Hydra job, the overrides that
change what a run computes, its `cv_group` and its short name.

The groups that identify a configuration are not listed by hand: they are every config group the job composed
(`conf/` folders, and groups a config search path adds) but those that never change a result
(`vocabulary.NON_IDENTITY_GROUPS`). A group added later counts without an edit here.
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass

from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, OmegaConf

from leukexp.config import schema
from leukexp.config.compose import config_dir
from leukexp.vocabulary import (
    NAME_ORDER,
    NON_IDENTITY_GROUPS,
    RUN_NAME_SEPARATOR,
    SHORT_FORMS,
    SHORT_PREFIXES,
    SWEPT_KEYS_ENV,
)


@dataclass(frozen=True)
class Identity:
    """What identifies the run's configuration: the group choices, the overrides that count, `cv_group`, the name.

    `choices` holds every group the job composed; `overrides` the command line's plus the implicit tokens of an
    experiment file (`config.identity.implicit_tokens`).
    """

    choices: Mapping[str, str]
    overrides: tuple[str, ...]
    cv_group: str
    name: str


@functools.cache
def config_groups() -> frozenset[str]:
    """Every top-level config group: the folders of `conf/` holding options (`data`, `stain`, ...)."""
    return frozenset(path.name for path in config_dir().iterdir() if path.is_dir() and any(path.glob("*.yaml")))


def identity_groups(choices: dict[str, str], defaults: dict[str, str] | None = None) -> list[str]:
    """The groups whose choice identifies a configuration, sorted: every group chosen in this job (or given a
    default), top-level, except those that never change a result (the fold, the experiment file, paths, Hydra)."""
    named = set(choices) | set(defaults or {})
    return sorted(group for group in named if "/" not in group and group not in NON_IDENTITY_GROUPS)


def group_choices() -> dict[str, str]:
    """The option chosen in each config group (empty outside a Hydra run)."""
    if not HydraConfig.initialized():
        return {}
    return {k: str(v) for k, v in HydraConfig.get().runtime.choices.items() if v is not None}


def task_overrides() -> list[str]:
    """The job's command-line overrides (empty outside a Hydra run)."""
    return list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []


def changes_the_result(key: str) -> bool:
    """Whether overriding `key` (a dotted key or a group path) can change what a run computes."""
    key = key.replace("/", ".")
    if key in NON_IDENTITY_GROUPS or ("." not in key and key in config_groups()):
        return False  # the fold varies within a configuration; group choices are counted on their own
    return schema.changes_the_result(key)


def cv_group(choices: dict[str, str], overrides: list[str], defaults: dict[str, str], seed: object) -> str:
    """The configuration's identity without the fold: group choices, the overrides that matter, the seed.

    Args:
        choices: group -> chosen option (`group_choices()`).
        overrides: the job's command-line overrides (`task_overrides()`).
        defaults: a name per group to use where `choices` has none (configs composed without Hydra's runtime).
        seed: the run's seed.
    """
    groups = identity_groups(choices, defaults)
    parts = [f"{group}={choices.get(group, defaults.get(group, '?'))}" for group in groups]
    parsed = OverridesParser.create().parse_overrides(overrides)
    parts += [text for override, text in zip(parsed, overrides, strict=True)
              if override.key_or_group not in groups and changes_the_result(override.key_or_group)]
    parts.append(f"seed={seed}")
    return " ".join(sorted(set(parts)))


def short_form(value: str) -> str:
    """A value as run names show it: `efficientnet_lite0` -> `lite0`, `resnext101_32x8d` -> `rx101`, a path -> its
    last part (`/data/smears` -> `smears`)."""
    text = str(value).rstrip("/")
    if "/" in text:
        return text.rsplit("/", 1)[-1]
    if text in SHORT_FORMS:
        return SHORT_FORMS[text]
    for prefix in SHORT_PREFIXES:
        if text.startswith(prefix) and len(text) > len(prefix):
            text = text[len(prefix):]
    return SHORT_FORMS.get(text, text)


def _override_part(key: str, text: str) -> str:
    """An override as a name part: a word value alone (`model.pooling=avgstd` -> `avgstd`), a number, flag, list or
    path with its key's last part (`lr=0.001`, `center_crop=true`, `root=smears`), a deletion as `~key`."""
    last = short_form(key.rsplit(".", 1)[-1])
    if "=" not in text:
        return f"~{last}"
    value = text.split("=", 1)[1]
    is_word = bool(value) and value[0].isalpha() and value.replace("_", "").replace("-", "").isalnum()
    if is_word and value.lower() not in ("true", "false", "null", "none"):
        return short_form(value)
    return f"{last}={_short_number(value) or short_form(value)}"


def _short_number(value: str) -> str | None:
    """A small number in few characters (`0.0001` -> `1e-4`, `0.00025` -> `2.5e-4`); None for anything else."""
    try:
        number = float(value)
    except ValueError:
        return None
    if number == 0 or abs(number) >= 0.01 or not math.isfinite(number):
        return None
    mantissa, exponent = f"{number:e}".split("e")
    return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"


def configuration_name(choices: dict[str, str], overrides: list[str], defaults: dict[str, str], seed: object,
                       swept: tuple[str, ...] = (), default_seed: object = 42) -> str:
    """A short name saying what varies, e.g. `lite0 avgstd` or `mlp3 drop=0.2`.

    In a sweep (`swept`: the keys it varies) the name is only the swept keys' values, in the sweep's order and in
    short forms: what is constant within the sweep is in the parent's description and tags, and the first 20
    characters tell the sweep's configurations apart. Outside a sweep: the chosen options that were asked for or
    differ from the defaults, then the other overrides that matter.
    """
    parsed = OverridesParser.create().parse_overrides(overrides)
    asked = {o.key_or_group for o in parsed}
    parts: list[tuple[str, str]] = [(group, short_form(choices[group])) for group in NAME_ORDER
                                    if group in choices and (group in asked or choices[group] != defaults.get(group))]
    for override, text in zip(parsed, overrides, strict=True):
        key = override.key_or_group
        if "." in key and changes_the_result(key) and key != "seed":
            parts.append((key, _override_part(key, text)))
    if str(seed) != str(default_seed):
        parts.append(("seed", f"seed={seed}"))
    varied = sorted(((swept.index(k), p) for k, p in parts if k in swept), key=lambda item: item[0])
    if varied:
        return RUN_NAME_SEPARATOR.join(p for _, p in varied)
    return RUN_NAME_SEPARATOR.join(p for _, p in parts) or "default"


def swept_keys() -> tuple[str, ...]:
    """The keys the running sweep varies (empty outside a sweep)."""
    return tuple(k for k in os.environ.get(SWEPT_KEYS_ENV, "").split(",") if k)


def implicit_tokens(cfg: DictConfig, overrides: list[str]) -> list[str]:
    """`key=value` for each implicit key of the schema (settings an experiment file may change without a command-line
    override) that differs from its default and is not overridden on the command line (e.g. `evaluation.tta=flips`
    and `model.stages=all` from `experiment=strong_baseline`): tokens of the identity and name all the same."""
    given = {o.split("=", 1)[0].lstrip("+~") for o in overrides}
    tokens = []
    for key, default in schema.implicit_keys().items():
        value = OmegaConf.select(cfg, key, default=default)
        value = OmegaConf.to_container(value) if OmegaConf.is_config(value) else value
        if value != default and key not in given:
            text = "null" if value is None else str(value).replace(" ", "") if isinstance(value, list) else value
            tokens.append(f"{key}={text}")
    return tokens


def run_identity(cfg: DictConfig) -> Identity:
    """The identity of a composed config (the job's Hydra choices; outside a Hydra job, each group's `name`)."""
    from types import MappingProxyType

    from leukexp.config.compose import default_choices

    choices = group_choices()
    if not choices:
        choices = {group: str(cfg[group].get("name", "?")) for group in config_groups()
                   if group in cfg and OmegaConf.is_dict(cfg[group])}
    given = task_overrides()
    overrides = tuple(given + implicit_tokens(cfg, given))
    return Identity(
        choices=MappingProxyType(dict(choices)),
        overrides=overrides,
        cv_group=cv_group(choices, list(overrides), {}, cfg.seed),
        name=configuration_name(choices, list(overrides), default_choices(), cfg.seed, swept_keys()),
    )
