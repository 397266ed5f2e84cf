"""Cross-validation structure in MLflow: one parent run per configuration, its fold runs as children,
fold aggregates on the parent once every fold has finished, and resume of finished folds."""

from __future__ import annotations

import fcntl
import hashlib
import logging
import tempfile
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd
from mlflow.entities import Metric, Run
from mlflow.tracking import MlflowClient

from leukexp.artifacts import read_predictions, write_cv_artifacts
from leukexp.stats import aggregate_metrics
from leukexp.vocabulary import (
    BEST,
    CV_GROUP_TAG,
    CV_TAGS,
    DATA_HASH_TAG,
    FOLD_TAG,
    FOLDS_FINISHED_TAG,
    KIND_CV,
    KIND_TAG,
    N_SPLITS_TAG,
    NOTE_TAG,
    PARENT_TAG,
    PREDICTIONS_FILE,
    TEST,
)

if TYPE_CHECKING:
    from leukexp.tracking import RunLogger

log = logging.getLogger(__name__)


def quote(value: str) -> str:
    """A value as an MLflow filter string literal."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


@contextmanager
def store_lock(lock_dir: Path, tracking_uri: str, experiment_id: str) -> Iterator[None]:
    """An exclusive lock per store and experiment, held while parents are created or aggregated."""
    lock_dir.mkdir(parents=True, exist_ok=True)
    key = hashlib.sha1(f"{tracking_uri}|{experiment_id}".encode(), usedforsecurity=False).hexdigest()[:12]
    with open(lock_dir / f"cv-{key}.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _parents(client: MlflowClient, experiment_id: str, cv_group: str, data_hash: str) -> list[Run]:
    query = (f"tags.`{KIND_TAG}` = '{KIND_CV}' and tags.{CV_GROUP_TAG} = {quote(cv_group)} "
             f"and tags.{DATA_HASH_TAG} = {quote(data_hash)}")
    runs = client.search_runs([experiment_id], query, max_results=100)
    return sorted(runs, key=lambda r: (r.info.start_time, r.info.run_id))


def get_or_create_parent(client: MlflowClient, experiment_id: str, tags: dict[str, str]) -> str:
    """The configuration's parent run id, created if it does not exist yet (call under `store_lock`).

    Without a shared lock (jobs on several machines) two parents may be created at once: the oldest wins
    and the newer is deleted, so every job ends up under the same parent.
    """
    found = _parents(client, experiment_id, tags[CV_GROUP_TAG], tags[DATA_HASH_TAG])
    if found:
        return found[0].info.run_id
    parent_tags = {k: tags[k] for k in CV_TAGS if k in tags} | {KIND_TAG: KIND_CV, N_SPLITS_TAG: tags[N_SPLITS_TAG]}
    name = f"cv {tags.get('model', '')}-{tags.get('head', '')}-{tags.get('task', '')}"
    run = client.create_run(experiment_id, run_name=name, tags=parent_tags)
    found = _parents(client, experiment_id, tags[CV_GROUP_TAG], tags[DATA_HASH_TAG])
    winner = found[0].info.run_id if found else run.info.run_id
    if winner != run.info.run_id:
        client.delete_run(run.info.run_id)
    return winner


def fold_runs(client: MlflowClient, experiment_id: str, parent_id: str,
              statuses: tuple[str, ...] = ("FINISHED",)) -> dict[str, Run]:
    """The newest child run of each fold with one of `statuses`."""
    query = f"tags.`{PARENT_TAG}` = {quote(parent_id)}"
    runs = client.search_runs([experiment_id], query, max_results=10000, order_by=["attributes.start_time DESC"])
    newest: dict[str, Run] = {}
    for run in runs:
        if run.info.status in statuses:
            newest.setdefault(run.data.tags.get(FOLD_TAG, "?"), run)
    return newest


def finished_fold(client: MlflowClient, experiment_id: str, parent_id: str, fold: str) -> Run | None:
    """The FINISHED run of this fold under this parent, if any (resume skips it)."""
    return fold_runs(client, experiment_id, parent_id).get(fold)


def close_stale_runs(client: MlflowClient, experiment_id: str, parent_id: str, fold: str) -> int:
    """Mark RUNNING runs of this fold KILLED: they belong to a sweep that was killed and is now re-run."""
    stale = [r for r in fold_runs(client, experiment_id, parent_id, ("RUNNING",)).values()
             if r.data.tags.get(FOLD_TAG) == fold]
    for run in stale:
        client.set_tag(run.info.run_id, NOTE_TAG, "killed before finishing; re-run by a resumed sweep")
        client.set_terminated(run.info.run_id, status="KILLED")
    return len(stale)


def fold_table(children: dict[str, Run]) -> pd.DataFrame:
    """Test (and best-epoch) metrics, one row per fold, folds in order."""
    rows = {fold: {k: v for k, v in run.data.metrics.items() if k.startswith((TEST, BEST))}
            for fold, run in sorted(children.items())}
    return pd.DataFrame.from_dict(rows, orient="index").sort_index(axis=1)


def aggregate_if_complete(client: MlflowClient, experiment_id: str, parent_id: str, n_splits: int) -> bool:
    """Once all folds have FINISHED, log aggregates and figures on the parent and finish it."""
    children = fold_runs(client, experiment_id, parent_id)
    if len(children) < n_splits:
        return False
    table = fold_table(children)
    metrics = aggregate_metrics(table)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        predictions = {}
        for fold, run in sorted(children.items()):
            folder = out / f"download-{fold}"
            folder.mkdir()
            predictions[fold] = read_predictions(Path(client.download_artifacts(run.info.run_id, PREDICTIONS_FILE,
                                                                                str(folder))))
        for path in write_cv_artifacts(out, table, predictions, metrics):
            client.log_artifact(parent_id, str(path))
    client.log_batch(parent_id, metrics=[_metric(k, v) for k, v in metrics.items()])
    client.set_tag(parent_id, FOLDS_FINISHED_TAG, str(len(children)))
    client.set_terminated(parent_id, status="FINISHED")
    return True


def _metric(key: str, value: float) -> Metric:
    return Metric(key, float(value), int(time.time() * 1000), 0)


class FoldRun:
    """The MLflow side of one fold run: its CV parent, resume, logging, and the parent's aggregates.

    Args:
        logger: the run logger on the experiment's store.
        tags: the fold run's tags (`cv_group`, `data_hash`, `fold`, `n_splits`, ...).
        lock_dir: folder of the lock that serializes parent creation and aggregation.
    """

    def __init__(self, logger: RunLogger, tags: dict[str, str], lock_dir: Path) -> None:
        self.logger = logger
        self.tags = tags
        self.lock_dir = lock_dir
        self.n_splits = int(tags[N_SPLITS_TAG])
        self.parent_id: str | None = None

    def _locked(self) -> AbstractContextManager[None]:
        return store_lock(self.lock_dir, self.logger.tracking_uri, self.logger.experiment_id)

    def open(self, resume: bool) -> Run | None:
        """Find or create the parent; with `resume`, return this fold's earlier FINISHED run (to skip)."""
        client, experiment = self.logger.client, self.logger.experiment_id
        with self._locked():
            self.parent_id = get_or_create_parent(client, experiment, self.tags)
            if resume:
                done = finished_fold(client, experiment, self.parent_id, self.tags[FOLD_TAG])
                if done is not None:
                    aggregate_if_complete(client, experiment, self.parent_id, self.n_splits)
                    return done
                close_stale_runs(client, experiment, self.parent_id, self.tags[FOLD_TAG])
        return None

    def start(self, params: dict[str, str]) -> str:
        """Create the fold run under its parent and log the flattened config."""
        tags = self.tags
        run_id = self.logger.start(f"{tags['model']}-{tags['head']}-{tags['task']}-{tags[FOLD_TAG]}", tags,
                                   parent_run_id=self.parent_id)
        self.logger.log_params(params)
        return run_id

    def finish(self, history: pd.DataFrame, metrics: dict[str, float], artifacts: list[Path]) -> bool:
        """Log per-epoch history, test metrics and artifacts, close the run; aggregate if all folds are done."""
        for row in history.to_dict("records"):
            self.logger.log_metrics({k: v for k, v in row.items() if k != "epoch" and v == v}, step=int(row["epoch"]))
        self.logger.log_metrics(metrics)
        self.logger.log_artifacts(artifacts)
        self.logger.end("FINISHED")
        with self._locked():
            return aggregate_if_complete(self.logger.client, self.logger.experiment_id, self.parent_id, self.n_splits)

    def fail(self) -> None:
        """Mark the run FAILED (the sweep goes on; a resumed sweep re-runs it)."""
        self.logger.end("FAILED")
