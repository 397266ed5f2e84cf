"""Cross-validation structure in MLflow: one parent run per configuration, its fold runs as children,
fold aggregates on the parent once every fold has finished, and resume of finished folds."""

from __future__ import annotations

import hashlib
import logging
import os
import socket
import tempfile
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd
from mlflow.entities import Metric, Run
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from leukexp.evaluation.stats import aggregate_metrics
from leukexp.files import file_lock
from leukexp.tracking.cv_summary import parent_description, read_predictions, result_summary, write_cv_artifacts
from leukexp.vocabulary import (
    BEST,
    CV_GROUP_TAG,
    CV_TAGS,
    DATA_HASH_TAG,
    EPOCH,
    EXTERNAL,
    FOLD_NAME_SEPARATOR,
    FOLD_TAG,
    FOLDS_FINISHED_METRIC,
    FOLDS_FINISHED_TAG,
    KIND_CV,
    KIND_TAG,
    N_SPLITS_TAG,
    NAME_TAG,
    NOTE_CONTENT,
    NOTE_TAG,
    OWNER_TAG,
    PARENT_TAG,
    PREDICTIONS_FILE,
    RESULT_TAG,
    SEARCH_RUN_TAG,
    STUDY_TAG,
    TEST,
    quote_filter,
)

if TYPE_CHECKING:
    from leukexp.tracking.store import RunLogger

log = logging.getLogger(__name__)


def lock_file(tracking_uri: str, experiment_id: str, fallback_dir: Path) -> Path:
    """Where the lock of a store and experiment lives: beside a SQLite or file store (so every root, user and
    machine that opens that store takes the same lock), else in `fallback_dir` (one machine's jobs; across machines
    a tracking server's claims are checked after they are written, see `FoldRun.open`)."""
    from leukexp.tracking.store import local_store_dir

    folder = local_store_dir(tracking_uri)
    if folder is not None:
        return folder / f".leukexp-cv-{experiment_id}.lock"
    key = hashlib.sha1(f"{tracking_uri}|{experiment_id}".encode(), usedforsecurity=False).hexdigest()[:12]
    return fallback_dir / f"cv-{key}.lock"


@contextmanager
def store_lock(lock_dir: Path, tracking_uri: str, experiment_id: str) -> Iterator[None]:
    """An exclusive lock per store and experiment, held while parents and fold runs are created or aggregated."""
    with file_lock(lock_file(tracking_uri, experiment_id, lock_dir)):
        yield


def this_process() -> str:
    """The owner tag of runs this process creates: `host:pid`."""
    return f"{socket.gethostname()}:{os.getpid()}"


def owner_alive(owner: str) -> bool:
    """Whether the process that owns a RUNNING run is still running (unknown hosts count as alive)."""
    host, _, pid = owner.rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return bool(owner)
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _parents(client: MlflowClient, experiment_id: str, cv_group: str, data_hash: str) -> list[Run]:
    query = (f"tags.`{KIND_TAG}` = '{KIND_CV}' and tags.{CV_GROUP_TAG} = {quote_filter(cv_group)} "
             f"and tags.{DATA_HASH_TAG} = {quote_filter(data_hash)}")
    runs = client.search_runs([experiment_id], query, max_results=100)
    return sorted(runs, key=lambda r: (r.info.start_time, r.info.run_id))


def get_or_create_parent(client: MlflowClient, experiment_id: str, tags: dict[str, str],
                         params: dict[str, str] | None = None) -> str:
    """The configuration's parent run id, created if it does not exist yet (call under `store_lock`), with
    `params` (the configuration's settings, the same for all its folds: the UI's columns of swept keys).

    Without a shared lock (jobs on several machines) two parents may be created at once: the oldest wins
    and the newer is deleted, so every job ends up under the same parent.
    """
    found = _parents(client, experiment_id, tags[CV_GROUP_TAG], tags[DATA_HASH_TAG])
    if found:
        return found[0].info.run_id
    parent_tags = {k: tags[k] for k in CV_TAGS if k in tags} | {KIND_TAG: KIND_CV, N_SPLITS_TAG: tags[N_SPLITS_TAG]}
    if tags.get(SEARCH_RUN_TAG):  # a search trial's parent sits under the search run
        parent_tags[PARENT_TAG] = tags[SEARCH_RUN_TAG]
    name = unique_name(client, experiment_id, tags.get(NAME_TAG) or "default", tags[CV_GROUP_TAG])
    parent_tags[NAME_TAG] = name
    run = client.create_run(experiment_id, run_name=name, tags=parent_tags)
    from leukexp.tracking.store import log_params

    log_params(client, run.info.run_id, params or {})
    found = _parents(client, experiment_id, tags[CV_GROUP_TAG], tags[DATA_HASH_TAG])
    winner = found[0].info.run_id if found else run.info.run_id
    if winner != run.info.run_id:
        client.delete_run(run.info.run_id)
    return winner


def unique_name(client: MlflowClient, experiment_id: str, name: str, cv_group: str) -> str:
    """`name`, or `name #xxxx` (a hash of the configuration) when another configuration already has it."""
    query = f"tags.`{KIND_TAG}` = '{KIND_CV}' and tags.`{NAME_TAG}` = {quote_filter(name)}"
    others = [r for r in client.search_runs([experiment_id], query, max_results=100)
              if r.data.tags.get(CV_GROUP_TAG) != cv_group]
    if not others:
        return name
    return f"{name} #{hashlib.sha1(cv_group.encode(), usedforsecurity=False).hexdigest()[:4]}"


def fold_runs(client: MlflowClient, experiment_id: str, parent_id: str,
              statuses: tuple[str, ...] = ("FINISHED",)) -> dict[str, Run]:
    """The newest child run of each fold with one of `statuses`."""
    query = f"tags.`{PARENT_TAG}` = {quote_filter(parent_id)}"
    runs = client.search_runs([experiment_id], query, max_results=10000, order_by=["attributes.start_time DESC"])
    newest: dict[str, Run] = {}
    for run in runs:
        if run.info.status in statuses:
            newest.setdefault(run.data.tags.get(FOLD_TAG, "?"), run)
    return newest


def finished_fold(client: MlflowClient, experiment_id: str, parent_id: str, fold: str) -> Run | None:
    """The FINISHED run of this fold under this parent, if any (resume skips it)."""
    return fold_runs(client, experiment_id, parent_id).get(fold)


def running_runs(client: MlflowClient, experiment_id: str, parent_id: str, fold: str | None = None) -> list[Run]:
    """Every RUNNING child of the parent (of one fold, if given)."""
    query = f"tags.`{PARENT_TAG}` = {quote_filter(parent_id)} and attributes.status = 'RUNNING'"
    runs = client.search_runs([experiment_id], query, max_results=10000)
    return [r for r in runs if fold is None or r.data.tags.get(FOLD_TAG) == fold]


def close_stale_runs(client: MlflowClient, experiment_id: str, parent_id: str, fold: str | None) -> int:
    """Mark RUNNING runs of this fold (None: of every fold) whose process is gone KILLED (a killed sweep that is now
    re-run, or a stopped one)."""
    stale = [r for r in running_runs(client, experiment_id, parent_id, fold)
             if not owner_alive(r.data.tags.get(OWNER_TAG, ""))]
    for run in stale:
        client.set_tag(run.info.run_id, NOTE_TAG, "killed before finishing; re-run by a resumed sweep")
        client.set_terminated(run.info.run_id, status="KILLED")
    return len(stale)


def close_stopped(client: MlflowClient, experiment_id: str, parent_ids: list[str]) -> None:
    """After a stop, once its processes are gone: each fold run still RUNNING whose process is gone is KILLED, and so
    is each of these parents left RUNNING with no running fold (a worker killed before it could close its parent)."""
    for parent_id in parent_ids:
        close_stale_runs(client, experiment_id, parent_id, None)
        if client.get_run(parent_id).info.status == "RUNNING" and not running_runs(client, experiment_id, parent_id):
            client.set_terminated(parent_id, status="KILLED")


def earlier_claim(client: MlflowClient, experiment_id: str, parent_id: str, fold: str, run_id: str) -> Run | str | None:
    """A claim on this fold older than `run_id`: its FINISHED run, or the owner of a RUNNING one in a live process.

    With a tracking server there may be no lock that every machine shares: each job writes its claim (the run) and
    then reads the fold's runs back; the oldest claim wins and the others step back.
    """
    query = f"tags.`{PARENT_TAG}` = {quote_filter(parent_id)}"
    runs = [r for r in client.search_runs([experiment_id], query, max_results=10000)
            if r.data.tags.get(FOLD_TAG) == fold and r.info.run_id != run_id]
    mine = client.get_run(run_id).info
    for run in sorted(runs, key=lambda r: (r.info.start_time, r.info.run_id)):
        if (run.info.start_time, run.info.run_id) > (mine.start_time, mine.run_id):
            break
        if run.info.status == "FINISHED":
            return run
        if run.info.status == "RUNNING" and owner_alive(run.data.tags.get(OWNER_TAG, "")):
            return run.data.tags.get(OWNER_TAG, "another process")
    return None


def fold_table(children: dict[str, Run]) -> pd.DataFrame:
    """Test, external and best-epoch metrics, one row per fold, folds in order."""
    rows = {fold: {k: v for k, v in run.data.metrics.items() if k.startswith((TEST, BEST, EXTERNAL))}
            for fold, run in sorted(children.items())}
    return pd.DataFrame.from_dict(rows, orient="index").sort_index(axis=1)


def aggregate(client: MlflowClient, experiment_id: str, parent_id: str, n_splits: int) -> bool:
    """Aggregates and figures of the finished folds on the parent; True when every fold has finished.

    A partial study shows what is known: `cv/folds_finished`, the aggregates over the finished folds and the
    tag `leukexp.study=incomplete`. The pooled figures (mean confusion matrix, every fold's ROC) are drawn from two
    finished folds on: of one fold they would repeat that fold run's own. The parent stays RUNNING while a fold
    runs, and is FINISHED otherwise.
    """
    children = fold_runs(client, experiment_id, parent_id)
    complete = len(children) >= n_splits
    if children:
        table = fold_table(children)
        metrics = aggregate_metrics(table) | {FOLDS_FINISHED_METRIC: float(len(children))}
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp)
            predictions = {}
            for fold, run in sorted(children.items()) if len(children) > 1 else ():
                folder = out / f"download-{fold}"
                folder.mkdir()
                try:
                    downloaded = client.download_artifacts(run.info.run_id, PREDICTIONS_FILE, str(folder))
                except MlflowException:
                    log.warning("fold %s (run %s) has no %s: left out of the parent's figures", fold,
                                run.info.run_id, PREDICTIONS_FILE)
                    continue
                predictions[fold] = read_predictions(Path(downloaded))
            for path in write_cv_artifacts(out, table, predictions, metrics):
                client.log_artifact(parent_id, str(path))
        client.log_batch(parent_id, metrics=[_metric(k, v) for k, v in metrics.items()])
        parent = client.get_run(parent_id)
        client.set_tag(parent_id, NOTE_CONTENT, parent_description(
            parent.data.tags.get(NAME_TAG, parent.info.run_name), parent.data.tags.get(CV_GROUP_TAG, ""), table,
            metrics, n_splits, {fold: run.info.run_id for fold, run in children.items()}))
        client.set_tag(parent_id, RESULT_TAG, result_summary(metrics, len(children), n_splits))
    client.set_tag(parent_id, FOLDS_FINISHED_TAG, str(len(children)))
    client.set_tag(parent_id, STUDY_TAG, "complete" if complete else f"incomplete ({len(children)}/{n_splits} folds)")
    if running_runs(client, experiment_id, parent_id):
        client.update_run(parent_id, status="RUNNING")
    else:
        client.set_terminated(parent_id, status="FINISHED")
    return complete


def is_up_to_date(client: MlflowClient, parent_id: str, finished: int) -> bool:
    """Whether the parent's aggregates already cover `finished` folds and nothing is running."""
    parent = client.get_run(parent_id)
    return parent.info.status != "RUNNING" and parent.data.tags.get(FOLDS_FINISHED_TAG) == str(finished)


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
        self.params: dict[str, str] = {}
        # the run's dataset input (name, source, digest; the manifest is its profile), kept for `leukexp-sync`
        self.dataset: dict[str, str] | None = None

    def log_dataset(self, manifest: pd.DataFrame, name: str, source: str, digest: str) -> None:
        """Record the run's data as its MLflow dataset input (and keep what it was for a later upload)."""
        self.dataset = {"name": name, "source": source, "digest": digest}
        self.logger.log_dataset(manifest, name, source, digest)
        if self.parent_id is not None:  # the parent's lineage: the same input (a fold's split is in its manifest)
            parent = self.logger.client.get_run(self.parent_id)
            given = parent.inputs.dataset_inputs if parent.inputs is not None else []
            if not any(i.dataset.digest == digest and i.dataset.name == name for i in given):
                self.logger.log_dataset(manifest, name, source, digest, run_id=self.parent_id)

    def _locked(self) -> AbstractContextManager[None]:
        return store_lock(self.lock_dir, self.logger.tracking_uri, self.logger.experiment_id)

    def open(self, resume: bool, params: dict[str, str], parent_params: dict[str, str] | None = None) -> (
            Run | str | None):
        """Find or create the parent and, under the store lock, claim this fold by creating its run.

        With `resume`: an earlier FINISHED run of this fold is returned (to skip); a fold RUNNING in another
        live process returns that process's owner tag (to skip); runs of processes that are gone are marked
        KILLED. Otherwise the fold run is created (None is returned). `parent_params` go on a parent this call
        creates (the settings its folds share).
        """
        client, experiment, fold = self.logger.client, self.logger.experiment_id, self.tags[FOLD_TAG]
        with self._locked():
            self.parent_id = get_or_create_parent(client, experiment, self.tags, parent_params)
            # runs of this configuration whose process is gone (killed, a machine that went down) end KILLED
            # whether or not this run resumes: otherwise they, and so their parent, would stay RUNNING for good
            close_stale_runs(client, experiment, self.parent_id, None)
            if resume:
                done = finished_fold(client, experiment, self.parent_id, fold)
                if done is not None:
                    finished = len(fold_runs(client, experiment, self.parent_id))
                    if not is_up_to_date(client, self.parent_id, finished):
                        aggregate(client, experiment, self.parent_id, self.n_splits)
                    return done
                elsewhere = running_runs(client, experiment, self.parent_id, fold)
                if elsewhere:
                    return elsewhere[0].data.tags.get(OWNER_TAG, "another process")
            parent_name = client.get_run(self.parent_id).data.tags.get(NAME_TAG, self.tags.get(NAME_TAG, ""))
            tags = self.tags | {OWNER_TAG: this_process(), NAME_TAG: parent_name}
            run_id = self.logger.start(FOLD_NAME_SEPARATOR.join(p for p in (parent_name, fold) if p), tags,
                                       parent_run_id=self.parent_id)
            if resume and (earlier := earlier_claim(client, experiment, self.parent_id, fold, run_id)) is not None:
                client.delete_run(run_id)  # another machine claimed this fold first (no shared lock file there)
                self.logger.run_id = None
                return earlier
            if client.get_run(self.parent_id).info.status != "RUNNING":
                client.update_run(self.parent_id, status="RUNNING")
        self.params = params
        self.logger.log_params(params)
        return None

    def finish(self, history: pd.DataFrame, metrics: dict[str, float], artifacts: list[Path]) -> bool:
        """Log per-epoch history, test metrics and artifacts, close the run; aggregate the finished folds.

        Returns True when this fold completed the study (every fold finished).
        """
        epochs = [(int(row[EPOCH]), {k: v for k, v in row.items() if k != EPOCH and v == v})
                  for row in history.to_dict("records")]
        self.logger.log_steps([*epochs, (0, metrics)])
        self.logger.log_artifacts(artifacts)
        self.logger.end("FINISHED")
        if self.parent_id is None:
            raise ValueError("a fold run finishes under its CV parent: open it first")
        with self._locked():
            return aggregate(self.logger.client, self.logger.experiment_id, self.parent_id, self.n_splits)

    def fail(self) -> None:
        """Mark the run FAILED (the sweep goes on; a resumed sweep re-runs it); the parent stops RUNNING if idle."""
        self._close("FAILED", "FINISHED")

    def kill(self) -> None:
        """A stop signal: the run ends KILLED at once, and so does its parent when no other fold is running."""
        self._close("KILLED", "KILLED")

    def abandon(self) -> None:
        """`fail`, as far as a store that may have stopped answering allows (it never raises)."""
        try:
            self.fail()
        except Exception as error:  # the store is gone: a later `leukexp-sync` or resumed sweep closes the run
            log.warning("could not mark run %s FAILED (%s)", self.logger.run_id, type(error).__name__)

    def _close(self, status: str, parent_status: str) -> None:
        if self.logger.run_id is None:
            return
        self.logger.end(status)
        if self.parent_id is not None:
            with self._locked():
                client = self.logger.client
                if not running_runs(client, self.logger.experiment_id, self.parent_id):
                    client.set_terminated(self.parent_id, status=parent_status)
