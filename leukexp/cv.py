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

import numpy as np
import pandas as pd
from mlflow.entities import Metric, Run
from mlflow.tracking import MlflowClient
from scipy import stats

from leukexp.evaluation import confusion
from leukexp.plots import plot_confusion, plot_roc

if TYPE_CHECKING:
    from leukexp.tracking import RunLogger as RunLoggerLike

log = logging.getLogger(__name__)

KIND_TAG = "leukexp.kind"
CV_TAGS = ("model", "head", "task", "augmentation", "data", "protocol", "seed", "cv_group", "data_hash")


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
    query = (f"tags.`{KIND_TAG}` = 'cv' and tags.cv_group = {quote(cv_group)} "
             f"and tags.data_hash = {quote(data_hash)}")
    runs = client.search_runs([experiment_id], query, max_results=100)
    return sorted(runs, key=lambda r: (r.info.start_time, r.info.run_id))


def get_or_create_parent(client: MlflowClient, experiment_id: str, tags: dict[str, str]) -> str:
    """The configuration's parent run id, created if it does not exist yet (call under `store_lock`).

    Without a shared lock (jobs on several machines) two parents may be created at once: the oldest wins
    and the newer is deleted, so every job ends up under the same parent.
    """
    found = _parents(client, experiment_id, tags["cv_group"], tags["data_hash"])
    if found:
        return found[0].info.run_id
    parent_tags = {k: tags[k] for k in CV_TAGS if k in tags} | {KIND_TAG: "cv", "n_splits": tags["n_splits"]}
    name = f"cv {tags.get('model', '')}-{tags.get('head', '')}-{tags.get('task', '')}"
    run = client.create_run(experiment_id, run_name=name, tags=parent_tags)
    found = _parents(client, experiment_id, tags["cv_group"], tags["data_hash"])
    winner = found[0].info.run_id if found else run.info.run_id
    if winner != run.info.run_id:
        client.delete_run(run.info.run_id)
    return winner


def fold_runs(client: MlflowClient, experiment_id: str, parent_id: str,
              statuses: tuple[str, ...] = ("FINISHED",)) -> dict[str, Run]:
    """The newest child run of each fold with one of `statuses`."""
    query = f"tags.`mlflow.parentRunId` = {quote(parent_id)}"
    runs = client.search_runs([experiment_id], query, max_results=10000, order_by=["attributes.start_time DESC"])
    newest: dict[str, Run] = {}
    for run in runs:
        if run.info.status in statuses:
            newest.setdefault(run.data.tags.get("fold", "?"), run)
    return newest


def finished_fold(client: MlflowClient, experiment_id: str, parent_id: str, fold: str) -> Run | None:
    """The FINISHED run of this fold under this parent, if any (resume skips it)."""
    return fold_runs(client, experiment_id, parent_id).get(fold)


def close_stale_runs(client: MlflowClient, experiment_id: str, parent_id: str, fold: str) -> int:
    """Mark RUNNING runs of this fold KILLED: they belong to a sweep that was killed and is now re-run."""
    stale = [r for r in fold_runs(client, experiment_id, parent_id, ("RUNNING",)).values()
             if r.data.tags.get("fold") == fold]
    for run in stale:
        client.set_tag(run.info.run_id, "leukexp.note", "killed before finishing; re-run by a resumed sweep")
        client.set_terminated(run.info.run_id, status="KILLED")
    return len(stale)


def confidence_interval(values: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """Student-t interval of the mean across folds."""
    mean = float(np.mean(values))
    if len(values) < 2:
        return mean, mean
    half = float(stats.t.ppf(0.5 + level / 2, len(values) - 1) * np.std(values, ddof=1) / np.sqrt(len(values)))
    return mean - half, mean + half


def fold_table(children: dict[str, Run]) -> pd.DataFrame:
    """Test (and best-epoch) metrics, one row per fold, folds in order."""
    rows = {fold: {k: v for k, v in run.data.metrics.items() if k.startswith(("test/", "best/"))}
            for fold, run in sorted(children.items())}
    return pd.DataFrame.from_dict(rows, orient="index").sort_index(axis=1)


def aggregate_metrics(table: pd.DataFrame) -> dict[str, float]:
    """`cv/<metric>_mean`, `_std`, `_ci95_low`, `_ci95_high` for every test metric."""
    out: dict[str, float] = {}
    for metric in (c for c in table.columns if c.startswith("test/")):
        values = table[metric].dropna().to_numpy(dtype=float)
        if not len(values):
            continue
        low, high = confidence_interval(values)
        out[f"cv/{metric}_mean"] = float(values.mean())
        out[f"cv/{metric}_std"] = float(values.std(ddof=1)) if len(values) > 1 else 0.0
        out[f"cv/{metric}_ci95_low"] = low
        out[f"cv/{metric}_ci95_high"] = high
    return out


def aggregate_if_complete(client: MlflowClient, experiment_id: str, parent_id: str, n_splits: int) -> bool:
    """Once all folds have FINISHED, log aggregates and figures on the parent and finish it."""
    children = fold_runs(client, experiment_id, parent_id)
    if len(children) < n_splits:
        return False
    table = fold_table(children)
    metrics = aggregate_metrics(table)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        summary = pd.concat([table, table.mean().to_frame("mean").T, table.std(ddof=1).to_frame("std").T])
        summary.index.name = "fold"
        summary.to_csv(out / "cv_folds.csv")
        matrices, curves, classes = [], [], None
        for fold, run in sorted(children.items()):
            predictions = pd.read_csv(client.download_artifacts(run.info.run_id, "predictions.csv", str(out)))
            classes = [c.removeprefix("p_") for c in predictions.columns if c.startswith("p_")]
            labels = predictions["label"].map({c: i for i, c in enumerate(classes)}).to_numpy()
            probs = predictions[[f"p_{c}" for c in classes]].to_numpy()
            matrices.append(confusion(labels, probs, classes))
            curves.append((fold, labels, probs))
            (out / "predictions.csv").unlink()
        mean_matrix = sum(m.astype(float) for m in matrices) / len(matrices)
        mean_matrix.to_csv(out / "cv_confusion_matrix.csv")
        acc = metrics.get("cv/test/acc_mean", float("nan"))
        plot_confusion(mean_matrix.round(1), out / "cv_confusion_matrix.png",
                       f"mean of {len(matrices)} folds: acc {acc:.3f}")
        plot_roc(curves, classes or [], out / "cv_roc.png", "ROC of every fold (one-vs-rest)")
        for path in sorted(out.iterdir()):
            client.log_artifact(parent_id, str(path))
    client.log_batch(parent_id, metrics=[_metric(k, v) for k, v in metrics.items()])
    client.set_tag(parent_id, "folds_finished", str(len(children)))
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

    def __init__(self, logger: RunLoggerLike, tags: dict[str, str], lock_dir: Path) -> None:
        self.logger = logger
        self.tags = tags
        self.lock_dir = lock_dir
        self.n_splits = int(tags["n_splits"])
        self.parent_id: str | None = None

    def _locked(self) -> AbstractContextManager[None]:
        return store_lock(self.lock_dir, self.logger.tracking_uri, self.logger.experiment_id)

    def open(self, resume: bool) -> Run | None:
        """Find or create the parent; with `resume`, return this fold's earlier FINISHED run (to skip)."""
        client, experiment = self.logger.client, self.logger.experiment_id
        with self._locked():
            self.parent_id = get_or_create_parent(client, experiment, self.tags)
            if resume:
                done = finished_fold(client, experiment, self.parent_id, self.tags["fold"])
                if done is not None:
                    aggregate_if_complete(client, experiment, self.parent_id, self.n_splits)
                    return done
                close_stale_runs(client, experiment, self.parent_id, self.tags["fold"])
        return None

    def start(self, params: dict[str, str]) -> str:
        """Create the fold run under its parent and log the flattened config."""
        tags = self.tags
        run_id = self.logger.start(f"{tags['model']}-{tags['head']}-{tags['task']}-{tags['fold']}", tags,
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
