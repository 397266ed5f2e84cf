"""Registering a study's best configuration in the MLflow model registry.

The configuration with the best `cv/<metric>_mean` (complete studies first) is chosen, and of its fold
models the one whose own score is closest to that mean: a typical model of the configuration, not the one
that drew the easiest test fold. The version's tags link back to the CV parent and to the data (its hash and the
fold run's dataset input).
"""

from __future__ import annotations

from dataclasses import dataclass

from mlflow.entities import Run
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from leukexp.errors import LeukexpError
from leukexp.runtime.secrets import redact
from leukexp.tracking.cv import fold_runs
from leukexp.vocabulary import (
    CHAMPION_ALIAS,
    CV_GROUP_TAG,
    DATA_HASH_TAG,
    DATASET_DIGEST_TAG,
    DATASET_NAME_TAG,
    DATASET_SOURCE_TAG,
    FOLD_TAG,
    KIND_CV,
    MODEL_DIR,
    REGISTRY_METRIC_TAG,
    REGISTRY_PARENT_TAG,
    REGISTRY_SELECTION_TAG,
    STUDY_TAG,
    TEST_ACC,
    cv_metric,
    kind_filter,
)


@dataclass(frozen=True)
class Selection:
    """The chosen configuration and fold model."""

    parent: Run
    run: Run
    metric: str
    mean: float
    value: float

    @property
    def fold(self) -> str:
        """The chosen fold's name."""
        return self.run.data.tags.get(FOLD_TAG, "?")

    @property
    def reason(self) -> str:
        """Why this configuration and this fold."""
        return (f"best {cv_metric(self.metric, 'mean')} ({self.mean:.4f}) in the experiment; fold {self.fold}"
                f" ({self.metric} {self.value:.4f}) is the fold closest to that mean")


def best_configuration(client: MlflowClient, experiment_id: str, metric: str = TEST_ACC) -> Run:
    """The CV parent with the highest mean of `metric` (complete studies preferred over partial ones)."""
    key = cv_metric(metric, "mean")
    parents = [p for p in client.search_runs([experiment_id], kind_filter(KIND_CV), max_results=10000)
               if key in p.data.metrics]
    if not parents:
        raise LeukexpError(f"--register: no configuration has {key} yet; run a sweep (leukexp-train -m ...) first")
    complete = [p for p in parents if p.data.tags.get(STUDY_TAG) == "complete"]
    return max(complete or parents, key=lambda p: (p.data.metrics[key], p.info.run_id))


def select(client: MlflowClient, experiment_id: str, metric: str = TEST_ACC) -> Selection:
    """The best configuration and its fold model closest to the configuration's mean."""
    parent = best_configuration(client, experiment_id, metric)
    mean = parent.data.metrics[cv_metric(metric, "mean")]
    children = [r for r in fold_runs(client, experiment_id, parent.info.run_id).values() if metric in r.data.metrics]
    if not children:
        raise LeukexpError(f"--register: the best configuration ({parent.info.run_id}) has no finished fold run")
    run = min(children, key=lambda r: (abs(r.data.metrics[metric] - mean), r.data.tags.get(FOLD_TAG, "")))
    return Selection(parent, run, metric, mean, run.data.metrics[metric])


def data_lineage(run: Run) -> dict[str, str]:
    """Tags that link a model version back to its data: the data hash, and the run's dataset input (name, digest,
    source), as the fold run logged them."""
    tags = {DATA_HASH_TAG: run.data.tags.get(DATA_HASH_TAG, "")}
    for item in run.inputs.dataset_inputs if run.inputs else []:
        tags |= {DATASET_NAME_TAG: item.dataset.name, DATASET_DIGEST_TAG: item.dataset.digest,
                 DATASET_SOURCE_TAG: redact(item.dataset.source)}
        break
    return tags


def register(client: MlflowClient, experiment_id: str, name: str, metric: str = TEST_ACC) -> tuple[str, Selection]:
    """Register the selected fold model under `name` and move the alias `champion` to it; return the new version
    number and the selection."""
    selection = select(client, experiment_id, metric)
    try:
        client.get_registered_model(name)
    except MlflowException:
        client.create_registered_model(name, description="leukexp: the best configuration of a study")
    run = selection.run
    tags = {REGISTRY_PARENT_TAG: selection.parent.info.run_id, CV_GROUP_TAG: run.data.tags.get(CV_GROUP_TAG, ""),
            REGISTRY_METRIC_TAG: metric, cv_metric(metric, "mean"): f"{selection.mean:.6f}", FOLD_TAG: selection.fold,
            REGISTRY_SELECTION_TAG: selection.reason} | data_lineage(run)
    version = client.create_model_version(name, source=f"{run.info.artifact_uri}/{MODEL_DIR}", run_id=run.info.run_id,
                                          tags=tags, description=selection.reason)
    client.set_registered_model_alias(name, CHAMPION_ALIAS, str(version.version))
    return str(version.version), selection
