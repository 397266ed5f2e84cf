"""A run's identity: the group choices of the Hydra job, its configuration (`cv_group`) and its MLflow tags."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING

from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig

from leukexp.config import schema
from leukexp.config.compose import default_choices
from leukexp.vocabulary import (
    AUGMENTATION_TAG,
    CLASSES_TAG,
    CONFIG_GROUPS,
    CV_GROUP_TAG,
    DATA_HASH_TAG,
    DATA_TAG,
    FOLD_TAG,
    GIT_COMMIT_TAG,
    HEAD_TAG,
    KIND_FOLD,
    KIND_TAG,
    MODEL_TAG,
    N_SPLITS_TAG,
    NAME_ORDER,
    NAME_TAG,
    NON_IDENTITY_GROUPS,
    PROTOCOL_TAG,
    RUN_NAME_SEPARATOR,
    SEARCH_RUN_TAG,
    SEARCH_TAG,
    SEED_TAG,
    SWEPT_KEYS_ENV,
    TASK_TAG,
    TRIAL_TAG,
    TTA_TAG,
    class_key_parts,
)

if TYPE_CHECKING:
    from leukexp.data.study import Study


def git_commit(where: Path) -> str:
    """The checkout's commit, or `unknown` outside git."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() if out.returncode == 0 else "unknown"


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
    if key in NON_IDENTITY_GROUPS or key in CONFIG_GROUPS:
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
    parts = [f"{group}={choices.get(group, defaults.get(group, '?'))}" for group in CONFIG_GROUPS]
    parsed = OverridesParser.create().parse_overrides(overrides)
    parts += [text for override, text in zip(parsed, overrides, strict=True)
              if changes_the_result(override.key_or_group)]
    parts.append(f"seed={seed}")
    return " ".join(sorted(set(parts)))


def configuration_name(choices: dict[str, str], overrides: list[str], defaults: dict[str, str], seed: object,
                       swept: tuple[str, ...] = (), default_seed: object = 42) -> str:
    """A short name saying what varies, e.g. `senet154 · svm` or `mlp3 · dropout=0.2`.

    Parts: chosen options that were asked for or differ from the defaults, then the other overrides that matter
    (their last key part); what the sweep varies (`swept`) comes first, so it shows in the UI's name column.
    """
    parsed = OverridesParser.create().parse_overrides(overrides)
    asked = {o.key_or_group for o in parsed}
    parts: list[tuple[str, str]] = [(group, choices[group]) for group in NAME_ORDER
                                    if group in choices and (group in asked or choices[group] != defaults.get(group))]
    for override, text in zip(parsed, overrides, strict=True):
        key = override.key_or_group
        if "." in key and changes_the_result(key) and key != "seed":
            parts.append((key, f"{key.rsplit('.', 1)[-1]}={text.split('=', 1)[1]}"))
    if str(seed) != str(default_seed):
        parts.append(("seed", f"seed={seed}"))
    ordered = [p for k, p in parts if k in swept] + [p for k, p in parts if k not in swept]
    return RUN_NAME_SEPARATOR.join(ordered) or "default"


def swept_keys() -> tuple[str, ...]:
    """The keys the running sweep varies (empty outside a sweep)."""
    return tuple(k for k in os.environ.get(SWEPT_KEYS_ENV, "").split(",") if k)


def implicit_tokens(cfg: DictConfig, overrides: list[str]) -> list[str]:
    """`key=value` for each implicit key of the schema (settings an experiment file may change without a command-line
    override) that differs from its default and is not overridden on the command line (e.g. `evaluation.tta=flips`
    and `model.stages=all` from `experiment=strong_baseline`): tokens of the identity and name all the same."""
    from omegaconf import OmegaConf

    given = {o.split("=", 1)[0].lstrip("+~") for o in overrides}
    tokens = []
    for key, default in schema.implicit_keys().items():
        value = OmegaConf.select(cfg, key, default=default)
        value = OmegaConf.to_container(value) if OmegaConf.is_config(value) else value
        if value != default and key not in given:
            text = "null" if value is None else str(value).replace(" ", "") if isinstance(value, list) else value
            tokens.append(f"{key}={text}")
    return tokens


def run_tags(cfg: DictConfig, study: Study) -> dict[str, str]:
    """The tags every fold run carries, for filtering and grouping in MLflow and reports."""
    choices = group_choices()
    defaults = {group: str(cfg[group].get("name", "?")) for group in CONFIG_GROUPS}
    overrides = task_overrides() + implicit_tokens(cfg, task_overrides())
    return {
        MODEL_TAG: choices.get("model", str(cfg.model.get("label") or cfg.model.get("name"))),
        HEAD_TAG: choices.get("head", "custom"),
        TASK_TAG: study.task.name,
        FOLD_TAG: study.fold.name or f"f{study.fold.index}",
        AUGMENTATION_TAG: study.augmentation.name,
        DATA_TAG: str(cfg.data.get("name", "folder")),
        PROTOCOL_TAG: study.protocol.name,
        SEED_TAG: str(cfg.seed),
        GIT_COMMIT_TAG: git_commit(Path(__file__).parent),
        CV_GROUP_TAG: cv_group(choices, overrides, defaults, cfg.seed),
        TTA_TAG: str(schema.setting(cfg, "evaluation.tta")),
        NAME_TAG: configuration_name(choices, overrides, default_choices(), cfg.seed, swept_keys()),
        DATA_HASH_TAG: study.data_fingerprint(),
        N_SPLITS_TAG: str(study.fold.n_splits),
        KIND_TAG: KIND_FOLD,
        CLASSES_TAG: json.dumps(dict(zip(class_key_parts(study.classes), study.classes, strict=True)),
                                ensure_ascii=False)[:5000],
        **search_tags(cfg),
    }


def search_tags(cfg: DictConfig) -> dict[str, str]:
    """A search trial's tags (`hydra/sweeper=optuna` sets `search.*` for its jobs); none outside a search."""
    search = cfg.get("search") or {}
    tags = {SEARCH_TAG: search.get("study"), TRIAL_TAG: search.get("trial"), SEARCH_RUN_TAG: search.get("run_id")}
    return {key: str(value) for key, value in tags.items() if value is not None}
