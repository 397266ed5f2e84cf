"""A search in MLflow: its run (kind `search`), the trial parents tagged under it, its counts and trial table."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from leukexp.sweeps.journal import counted
from leukexp.sweeps.space import override_value
from leukexp.vocabulary import (
    KIND_FOLD,
    KIND_SEARCH,
    KIND_TAG,
    NAME_TAG,
    NOTE_CONTENT,
    PARENT_TAG,
    SEARCH_STORAGE_TAG,
    SEARCH_TAG,
    TRIAL_STATE_TAG,
    TRIAL_TAG,
    quote_filter,
)


class SearchTracker:
    """The search's MLflow run (kind `search`): trial parents sit under it, tagged with their trial and state."""

    def __init__(self, client: Any, experiment_id: str, run_id: str, name: str) -> None:
        self.client, self.experiment_id, self.run_id, self.name = client, experiment_id, run_id, name

    @classmethod
    def open(cls, config: DictConfig, name: str, storage: Path, resume: bool = True) -> SearchTracker | None:
        """The search run of this study, created on first use (None when MLflow is off); an existing one is set
        RUNNING again only when trials are left to run (`resume`): a finished search run again stays FINISHED."""
        if not config.mlflow.enabled:
            return None
        from mlflow.tracking import MlflowClient

        from leukexp.tracking.store import artifact_root, ensure_experiment

        uri = str(config.mlflow.tracking_uri)
        client = MlflowClient(uri)
        experiment = ensure_experiment(client, str(config.mlflow.experiment_name),
                                       artifact_root(uri, config.mlflow.get("artifact_location")))
        query = f"tags.`{KIND_TAG}` = '{KIND_SEARCH}' and tags.`{SEARCH_TAG}` = {quote_filter(name)}"
        found = client.search_runs([experiment], query, max_results=1)
        if found:
            run_id = found[0].info.run_id
            if resume:
                client.update_run(run_id, status="RUNNING")
        else:
            run_id = client.create_run(experiment, run_name=f"search {name}", tags={
                KIND_TAG: KIND_SEARCH, SEARCH_TAG: name, SEARCH_STORAGE_TAG: str(storage), NAME_TAG: name}).info.run_id
        return cls(client, experiment, run_id, name)

    def end(self, status: str) -> None:
        """Mark the search run ended (`FAILED`, `KILLED`) when the search stops early: its workers are stopped first,
        then its trials' parents and folds they left RUNNING are KILLED."""
        import contextlib

        from leukexp.runtime.signals import reap_children
        from leukexp.tracking.cv import close_stopped

        reap_children()  # a worker stopped half-way may not have closed its runs
        with contextlib.suppress(Exception):  # the store may be what failed: the original error is the one to see
            query = f"tags.`{PARENT_TAG}` = {quote_filter(self.run_id)} and attributes.status = 'RUNNING'"
            running = self.client.search_runs([self.experiment_id], query, max_results=10000)
            close_stopped(self.client, self.experiment_id, [r.info.run_id for r in running])
        with contextlib.suppress(Exception):
            self.client.set_terminated(self.run_id, status)

    def record(self, study: Any, number: int, state: str) -> None:
        """Tag the trial's parent with its number and state; the search run's counts, best value and trial table."""
        import time

        from mlflow.entities import Metric

        query = f"tags.`{SEARCH_TAG}` = {quote_filter(self.name)} and tags.`{TRIAL_TAG}` = '{number}'"
        parents = {r.data.tags.get(PARENT_TAG) for r in self.client.search_runs([self.experiment_id], query)
                   if r.data.tags.get(KIND_TAG) == KIND_FOLD}
        for parent in filter(None, parents):
            self.client.set_tag(parent, TRIAL_TAG, str(number))
            self.client.set_tag(parent, TRIAL_STATE_TAG, state)
        trials = counted(study)
        counts = {s: sum(t.state.name.lower() == s for t in trials) for s in ("complete", "pruned", "fail")}
        metrics = {f"search/trials_{s}": float(n) for s, n in counts.items()}
        complete = [t for t in trials if t.state.name == "COMPLETE"]
        if complete:
            metrics["search/best_value"] = float(study.best_value)
        stamp = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, v, stamp, len(trials)) for k, v in metrics.items()])
        self.client.set_tag(self.run_id, NOTE_CONTENT, trial_table(study))
        self.client.set_terminated(self.run_id, "FINISHED")


def trial_table(study: Any) -> str:
    """The search run's description: every finished trial, best first, as markdown."""
    trials = counted(study)
    keys = sorted({k for t in trials for k in t.params})
    reverse = study.direction.name == "MAXIMIZE"
    ordered = sorted(trials, key=lambda t: (t.value is None, -(t.value or 0) if reverse else (t.value or 0)))
    lines = [f"### search {study.study_name}", "", f"{len(trials)} trials. Objective: the fold mean.", "",
             "| trial | state | value | " + " | ".join(keys) + " |", "|---|---|---|" + "---|" * len(keys)]
    for t in ordered:
        value = f"{t.value:.4f}" if t.value is not None else "-"
        cells = [override_value(t.params[k]) if k in t.params else "-" for k in keys]
        lines.append(f"| {t.number} | {t.state.name.lower()} | {value} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
