"""A run's identity: the group choices of the Hydra job, its configuration (`cv_group`) and its MLflow tags."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import TYPE_CHECKING

from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig

from leukexp.vocabulary import (
    CONFIG_GROUPS,
    CV_GROUP_TAG,
    DATA_HASH_TAG,
    FOLD_TAG,
    KIND_FOLD,
    KIND_TAG,
    N_SPLITS_TAG,
    NON_IDENTITY_GROUPS,
    NON_IDENTITY_PREFIXES,
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
    return not any(key == prefix or key.startswith(prefix + ".") for prefix in NON_IDENTITY_PREFIXES)


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


def run_tags(cfg: DictConfig, study: Study) -> dict[str, str]:
    """The tags every fold run carries, for filtering and grouping in MLflow and reports."""
    choices = group_choices()
    defaults = {group: str(cfg[group].get("name", "?")) for group in CONFIG_GROUPS}
    return {
        "model": choices.get("model", str(cfg.model.get("label") or cfg.model.get("name"))),
        "head": choices.get("head", "custom"),
        "task": study.task.name,
        FOLD_TAG: study.fold.name or f"f{study.fold.index}",
        "augmentation": study.augmentation.name,
        "data": str(cfg.data.get("name", "folder")),
        "protocol": study.protocol.name,
        "seed": str(cfg.seed),
        "git_commit": git_commit(Path(__file__).parent),
        CV_GROUP_TAG: cv_group(choices, task_overrides(), defaults, cfg.seed),
        DATA_HASH_TAG: study.data_fingerprint(),
        N_SPLITS_TAG: str(study.fold.n_splits),
        KIND_TAG: KIND_FOLD,
    }
