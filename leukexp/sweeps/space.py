"""The search space: Hydra's override syntax (`interval`, `tag(log, ...)`, `choice`, `range`) as Optuna
distributions, checked against the composed config before any trial runs; the objective a search averages."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, Override, RangeSweep
from omegaconf import DictConfig, OmegaConf

from leukexp.errors import LeukexpError
from leukexp.vocabulary import CV, is_fold_metric

# config keys a search may not vary: they say which fold runs, or where results go, not what is computed
NOT_SEARCHABLE = ("fold", "fold.index", "fold.name", "optimized_metric", "search", "hydra", "paths", "mlflow")


@dataclass(frozen=True)
class Space:
    """The search space: Optuna distributions by override key, the fixed overrides, and how choices are written."""

    distributions: dict[str, Any]
    fixed: list[str]
    labels: dict[str, dict[Any, str]]

    def overrides(self, params: Mapping[str, Any]) -> list[str]:
        """The sampled values as command-line overrides (`head.C=0.0316`, `head.hidden=[256,64]`)."""
        return [f"{key}={self.labels.get(key, {}).get(value, override_value(value))}" for key, value in
                params.items()]


def override_value(value: Any) -> str:
    """A sampled value as Hydra override text."""
    if isinstance(value, float):
        return f"{value:.6g}"  # six significant digits: a readable run name, a value Optuna's record rounds to
    if isinstance(value, list | tuple):
        return "[" + ",".join(override_value(v) for v in value) + "]"
    return str(value)


def fold_metric(objective: str) -> str:
    """The fold-run metric an objective averages: `cv/best/val/acc_mean` -> `best/val/acc`."""
    metric = objective.removeprefix(CV).removesuffix("_mean")
    if not (objective.startswith(CV) and objective.endswith("_mean")) or not is_fold_metric(metric):
        raise LeukexpError(f"hydra.sweeper.objective={objective!r}: expected the fold mean of a metric fold runs log,"
                           " e.g. cv/best/val/acc_mean (validation: the default), cv/val/loss_mean or cv/test/acc_mean")
    return metric


def _distribution(key: str, sweep: object) -> tuple[Any, dict[Any, str]]:
    """The Optuna distribution of one parsed sweep, and labels for choices that are not plain values."""
    import optuna.distributions as dist

    if isinstance(sweep, IntervalSweep):
        low, high, log_scale = sweep.start, sweep.end, "log" in sweep.tags
        if low is None or high is None or not low < high:
            raise LeukexpError(f"hydra.sweeper.params.{key}: interval({low}, {high}) is empty; give low < high")
        if log_scale and low <= 0:
            raise LeukexpError(f"hydra.sweeper.params.{key}: a log interval needs low > 0 (got {low})")
        if isinstance(low, int) and isinstance(high, int):
            return dist.IntDistribution(int(low), int(high), log=log_scale), {}
        return dist.FloatDistribution(float(low), float(high), log=log_scale), {}
    if isinstance(sweep, ChoiceSweep | RangeSweep):
        values = list(sweep.list) if isinstance(sweep, ChoiceSweep) else list(_range(sweep))
        if not values:
            raise LeukexpError(f"hydra.sweeper.params.{key}: the choice is empty; give at least one value")
        plain = [v if isinstance(v, str | int | float | bool) or v is None else override_value(container(v))
                 for v in values]
        labels = {p: override_value(container(v)) for p, v in zip(plain, values, strict=True) if p is not v}
        return dist.CategoricalDistribution(plain), labels
    raise LeukexpError(f"hydra.sweeper.params.{key}: {type(sweep).__name__} is not a search dimension; use"
                       " interval(...), tag(log, interval(...)), choice(...) or range(...)")


def _range(sweep: RangeSweep) -> Sequence[Any]:
    start, stop, step = sweep.start, sweep.stop, sweep.step
    if start is None or stop is None or not step:
        raise LeukexpError("hydra.sweeper.params: range(start, stop[, step]) needs a start, a stop and a step != 0")
    count = math.ceil((stop - start) / step)
    return [start + i * step for i in range(max(0, count))]


def container(value: Any) -> Any:
    """A config node as plain Python (other values as they are)."""
    return OmegaConf.to_container(value) if OmegaConf.is_config(value) else value


def parse_space(params: Mapping[str, Any], arguments: Sequence[str], config: DictConfig,
                compose: Callable[[list[str]], DictConfig] | None = None) -> Space:
    """The search space from the sweeper's `params` and the command line's sweep overrides; every other override
    is fixed. An unknown key, a key a search may not vary or an empty range is one line, before any trial runs.

    `compose` builds the config under some overrides: a key inside a searched group (`head.C` while `head` is
    searched) must exist under one of that group's options.
    """
    texts = [f"{key}={value}" for key, value in params.items()] + list(arguments)
    try:
        parsed: list[Override] = OverridesParser.create().parse_overrides(texts)
    except Exception as error:  # Hydra's parser explains the syntax error
        raise LeukexpError(f"hydra.sweeper.params: {str(error).splitlines()[0]}") from error
    distributions: dict[str, Any] = {}
    labels: dict[str, dict[Any, str]] = {}
    fixed = [text for override, text in zip(parsed, texts, strict=True) if not override.is_sweep_override()]
    groups = {o.key_or_group: list(o.sweep_string_iterator()) for o in parsed
              if o.is_sweep_override() and o.is_discrete_sweep() and o.key_or_group in _choices(config)}
    for override in parsed:
        key = override.key_or_group
        if not override.is_sweep_override():
            continue
        group = next((g for g in groups if key.startswith(g + ".")), None)
        if group is not None and compose is not None:
            configs = [compose([*fixed, f"{group}={option}"]) for option in groups[group]]
            if not any(_has_key(c, key) for c in configs):
                raise LeukexpError(f"hydra.sweeper.params.{key}: no option of {group} ({', '.join(groups[group])})"
                                   " has this key; see leukexp-train --cfg job")
        elif group is None:
            check_key(key, config)
        value = override.value()
        if key in _choices(config) and not (isinstance(value, ChoiceSweep)
                                            and all(isinstance(option, str) for option in value.list)):
            raise LeukexpError(f"hydra.sweeper.params.{key}: {key} is a config group, its values are option names;"
                               f" search them with choice(...), e.g. {key}='choice({_choices(config)[key]}, ...)'")
        distributions[key], labels[key] = _distribution(key, override.value())  # `a,b` is choice(a,b) too
    if not distributions:
        raise LeukexpError("hydra.sweeper.params: no search dimension; give e.g."
                           " hydra.sweeper.params.optimizer.lr='tag(log, interval(1e-4, 1e-2))'")
    return Space(distributions, fixed, labels)


def _choices(config: DictConfig) -> dict[str, Any]:
    return dict(OmegaConf.select(config, "hydra.runtime.choices", default={}) or {})


def _has_key(config: DictConfig, key: str) -> bool:
    return OmegaConf.select(config, key, default="<missing>", throw_on_missing=False) != "<missing>"


def check_key(key: str, config: DictConfig) -> None:
    """A key to search must exist in the composed config (or be a config group) and change what a run computes."""
    if any(key == k or key.startswith(k + ".") for k in NOT_SEARCHABLE):
        raise LeukexpError(f"hydra.sweeper.params.{key}: a search varies what a run computes, not {key}")
    choices = _choices(config)
    if key in choices or key.replace(".", "/") in choices:
        return
    if not _has_key(config, key):
        raise LeukexpError(f"hydra.sweeper.params.{key}: no such config key; see leukexp-train --cfg job")


def default_study_name(config: DictConfig, space: Space, objective: str) -> str:
    """The experiment's name and a hash of the space, fixed overrides and objective: the same command, the same
    study (so re-running it continues the study)."""
    text = repr((sorted((k, repr(d)) for k, d in space.distributions.items()), sorted(space.fixed), objective))
    digest = hashlib.sha1(text.encode(), usedforsecurity=False).hexdigest()[:8]
    return f"{config.mlflow.experiment_name}-search-{digest}"
