"""A fold run's MLflow tags, written from the run plan's identity (`config.identity`) and its fold's data."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from leukexp.vocabulary import (
    AUGMENTATION_TAG,
    CLASSES_TAG,
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
    NAME_TAG,
    PROTOCOL_TAG,
    SEARCH_RUN_TAG,
    SEARCH_TAG,
    SEED_TAG,
    TASK_TAG,
    TRIAL_TAG,
    TTA_TAG,
    class_key_parts,
)

if TYPE_CHECKING:
    from leukexp.config.plan import RunPlan
    from leukexp.data.fold_data import FoldData


def git_commit(where: Path) -> str:
    """The checkout's commit, or `unknown` outside git."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() if out.returncode == 0 else "unknown"


def run_tags(plan: RunPlan, fold_data: FoldData) -> dict[str, str]:
    """The tags every fold run carries, for filtering and grouping in MLflow and reports."""
    choices = plan.identity.choices
    model = plan.components["model"]
    return {
        MODEL_TAG: choices.get("model", str(model.get("label") or model.get("name"))),
        HEAD_TAG: choices.get("head", "custom"),
        TASK_TAG: fold_data.task.name,
        FOLD_TAG: fold_data.fold.name or f"f{fold_data.fold.index}",
        AUGMENTATION_TAG: fold_data.augmentation.name,
        DATA_TAG: str(plan.components["data"].get("name", "folder")),
        PROTOCOL_TAG: fold_data.protocol.name,
        SEED_TAG: str(plan.seed),
        GIT_COMMIT_TAG: git_commit(Path(__file__).parent),
        CV_GROUP_TAG: plan.identity.cv_group,
        TTA_TAG: plan.evaluation.tta,
        NAME_TAG: plan.identity.name,
        DATA_HASH_TAG: fold_data.data_fingerprint(),
        N_SPLITS_TAG: str(fold_data.fold.n_splits),
        KIND_TAG: KIND_FOLD,
        CLASSES_TAG: json.dumps(dict(zip(class_key_parts(fold_data.classes), fold_data.classes, strict=True)),
                                ensure_ascii=False)[:5000],
        **search_tags(plan.search),
    }


def search_tags(search: Mapping[str, Any] | None) -> dict[str, str]:
    """A search trial's tags (`hydra/sweeper=optuna` sets `search.*` for its jobs); none outside a search."""
    values = dict(search) if search else {}
    tags = {SEARCH_TAG: values.get("study"), TRIAL_TAG: values.get("trial"), SEARCH_RUN_TAG: values.get("run_id")}
    return {key: str(value) for key, value in tags.items() if value is not None}
