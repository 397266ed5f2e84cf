"""`leukexp-sync --from STORE`: copy a store's studies to another store (a SQLite file's runs to a lab's server).

Each experiment is copied with its tags (description, saved view, kind); each run with its name, times, status, tags,
params, every metric's whole history, dataset inputs and artifacts; each registered model version whose run was
copied, with its tags and aliases. A tag whose value is a copied run's id (a CV parent, a search run, a registered
version's parent) is rewritten to the copy's id, so folds still sit under their parents. Copies say where they came
from (`leukexp.moved_from`) and are marked complete last: a second move skips what is complete and redoes what an
interrupted one left half-copied, so moving twice never duplicates a run.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from mlflow.entities import Experiment, Metric, Run, RunTag, ViewType
from mlflow.tracking import MlflowClient

from leukexp.errors import LeukexpError
from leukexp.tracking.store import account_checked, artifact_root, ensure_experiment, log_params, prepare_store
from leukexp.vocabulary import MODEL_DIR, MOVE_STATE_TAG, MOVED_FROM_TAG, quote_filter

BATCH = 1000  # MLflow's log_batch limit on metrics
COMPLETE = "complete"


@dataclass
class MoveReport:
    """What a move did, per kind: copied now, already there (skipped)."""

    experiments: list[str] = field(default_factory=list)
    runs_copied: int = 0
    runs_skipped: int = 0
    versions_copied: int = 0
    versions_skipped: int = 0

    def summary(self) -> str:
        """One line of counts."""
        return (f"{len(self.experiments)} experiment(s) ({', '.join(self.experiments) or 'none'}): {self.runs_copied}"
                f" run(s) copied, {self.runs_skipped} already there; {self.versions_copied} registered model"
                f" version(s) copied, {self.versions_skipped} already there")


def move_store(source_uri: str, target_uri: str, experiments: Iterable[str] | None = None) -> MoveReport:
    """Copy the named experiments (all active ones when None) and their registered versions from one store to
    another; return what was done."""
    if source_uri.rstrip("/") == target_uri.rstrip("/"):
        raise LeukexpError(f"--from {source_uri}: the same store as the target; name another with --tracking-uri")
    prepare_store(source_uri)
    prepare_store(target_uri, create_folder=True)
    source = MlflowClient(source_uri, registry_uri=source_uri)
    target = MlflowClient(target_uri, registry_uri=target_uri)
    names = list(experiments) if experiments else [e.name for e in source.search_experiments()]
    report, new_ids = MoveReport(), dict[str, str]()
    for name in names:
        found = source.get_experiment_by_name(name)
        if found is None:
            known = ", ".join(e.name for e in source.search_experiments()) or "none"
            raise LeukexpError(f"--experiment {name}: not in {source_uri} (it has: {known})")
        with account_checked(f"--tracking-uri {target_uri} (experiment {name})"):
            new_ids |= _move_experiment(source, target, found, target_uri, report)
        report.experiments.append(name)
    with account_checked(f"--tracking-uri {target_uri} (registered models)"):
        _move_versions(source, target, new_ids, report)
    return report


def _move_experiment(source: MlflowClient, target: MlflowClient, experiment: Experiment, target_uri: str,
                     report: MoveReport) -> dict[str, str]:
    """Copy one experiment's runs (parents first); the map of source run ids to their copies."""
    experiment_id = ensure_experiment(target, experiment.name, artifact_root(target_uri, None))
    runs = sorted(_all_runs(source, experiment.experiment_id),
                  key=lambda r: (r.info.start_time or 0, r.info.run_id))
    copies = {r.data.tags[MOVED_FROM_TAG]: r for r in _all_runs(target, experiment_id)
              if MOVED_FROM_TAG in r.data.tags}
    new_ids = {old: copy.info.run_id for old, copy in copies.items() if copy.data.tags.get(MOVE_STATE_TAG) == COMPLETE}
    for run in runs:
        if run.info.run_id in new_ids:
            report.runs_skipped += 1
            continue
        if run.info.run_id in copies:  # a move stopped half-way through this run: copied again from the start
            target.delete_run(copies[run.info.run_id].info.run_id)
        new_ids[run.info.run_id] = _copy_run(source, target, run, experiment_id, new_ids)
        report.runs_copied += 1
    for key, value in experiment.tags.items():
        target.set_experiment_tag(experiment_id, key, _remapped(value, new_ids))
    return new_ids


def _all_runs(client: MlflowClient, experiment_id: str) -> Iterator[Run]:
    page = None
    while True:
        runs = client.search_runs([experiment_id], run_view_type=ViewType.ACTIVE_ONLY, max_results=1000,
                                  page_token=page)
        yield from runs
        page = runs.token
        if not page:
            return


def _remapped(value: str, new_ids: dict[str, str]) -> str:
    """A tag value that names a copied run: the copy's id (any other value as it is)."""
    return new_ids.get(value, value)


def _copy_run(source: MlflowClient, target: MlflowClient, run: Run, experiment_id: str,
              new_ids: dict[str, str]) -> str:
    info, data = run.info, run.data
    tags = {key: _remapped(value, new_ids) for key, value in data.tags.items()} | {MOVED_FROM_TAG: info.run_id}
    copy = target.create_run(experiment_id, start_time=info.start_time, tags=tags, run_name=info.run_name)
    new_id = copy.info.run_id
    log_params(target, new_id, data.params)
    history = [Metric(m.key, m.value, m.timestamp, m.step) for key in data.metrics
               for m in source.get_metric_history(info.run_id, key)]
    for start in range(0, len(history), BATCH):
        target.log_batch(new_id, metrics=history[start:start + BATCH])
    inputs = getattr(run, "inputs", None)
    if inputs is not None and inputs.dataset_inputs:
        target.log_inputs(new_id, datasets=list(inputs.dataset_inputs))
    if source.list_artifacts(info.run_id):
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(source.download_artifacts(info.run_id, "", tmp))
            target.log_artifacts(new_id, str(folder))
    if info.status != "RUNNING":
        target.set_terminated(new_id, info.status, info.end_time)
    target.log_batch(new_id, tags=[RunTag(MOVE_STATE_TAG, COMPLETE)])
    return new_id


def _move_versions(source: MlflowClient, target: MlflowClient, new_ids: dict[str, str], report: MoveReport) -> None:
    """Registered model versions whose runs were copied: the same name, tags, description and aliases, the source
    pointing into the copied run."""
    for model in source.search_registered_models():
        versions = [v for v in source.search_model_versions(f"name = {quote_filter(model.name)}")
                    if v.run_id in new_ids]
        if not versions:
            continue
        if not target.search_registered_models(f"name = {quote_filter(model.name)}"):
            target.create_registered_model(model.name, tags=model.tags, description=model.description)
        done = {v.tags.get(MOVED_FROM_TAG): v for v in target.search_model_versions(
            f"name = {quote_filter(model.name)}")}
        copied: dict[str, str] = {}  # source version -> its copy's version
        for version in sorted(versions, key=lambda v: int(v.version)):
            origin = f"{model.name}/{version.version}"
            if origin in done:
                copy = done[origin]
                report.versions_skipped += 1
            else:
                run = target.get_run(new_ids[str(version.run_id)])
                marker, source_uri = f"/{version.run_id}/artifacts/", str(version.source or "")
                relative = source_uri.split(marker, 1)[1] if marker in source_uri else MODEL_DIR
                tags = {key: _remapped(value, new_ids) for key, value in version.tags.items()}
                copy = target.create_model_version(model.name, f"{run.info.artifact_uri}/{relative}",
                                                   run_id=run.info.run_id, tags=tags | {MOVED_FROM_TAG: origin},
                                                   description=version.description)
                report.versions_copied += 1
            copied[str(version.version)] = str(copy.version)
        for alias, version_number in dict(getattr(model, "aliases", None) or {}).items():
            if str(version_number) in copied:
                target.set_registered_model_alias(model.name, alias, copied[str(version_number)])
