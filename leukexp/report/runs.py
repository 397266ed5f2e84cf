"""A study's runs read back from an MLflow store: finished fold runs, those not counted, their predictions."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from leukexp.csv_files import read_csv
from leukexp.errors import LeukexpError
from leukexp.tracking.reach import probe_server
from leukexp.vocabulary import (
    CV_GROUP_TAG,
    DATA_HASH_TAG,
    FOLD_TAG,
    KIND_FOLD,
    LABEL_TAGS,
    PREDICTIONS_FILE,
    Predictions,
    kind_filter,
)


@dataclass
class StudyRuns:
    """Finished fold runs (one row per configuration and fold) and the runs not counted."""

    folds: pd.DataFrame
    unfinished: pd.DataFrame
    classes: dict[str, list[str]]


def open_client(uri: str) -> MlflowClient:
    """A client on the store, checked to answer (one line when it does not)."""
    probe_server(uri, "--tracking-uri ")
    try:
        client = MlflowClient(uri)
        client.search_experiments(max_results=1)
    except Exception as error:  # unknown scheme, refused connection, a broken database alike
        raise LeukexpError(f"--tracking-uri {uri}: the store does not answer ({type(error).__name__});"
                           " start the server or fix the URI") from error
    return client


def configuration_labels(groups: pd.Series) -> pd.Series:
    """Short names: the parts of each `cv_group` that differ between configurations."""
    tokens = {g: set(g.split()) for g in groups.unique()}
    common = set.intersection(*tokens.values()) if tokens else set()
    labels = {g: " ".join(sorted(t - common)) or "(single configuration)" for g, t in tokens.items()}
    return groups.map(labels)


def load_runs(client: MlflowClient, experiment: str, filter_string: str | None = None) -> StudyRuns:
    """Fold runs of an experiment: the newest FINISHED run per configuration and fold; the rest listed apart."""
    found = client.get_experiment_by_name(experiment)
    if found is None:
        names = ", ".join(e.name for e in client.search_experiments()) or "none"
        raise LeukexpError(f"--experiment {experiment}: not in this store (experiments: {names})")
    query = kind_filter(KIND_FOLD) + (f" and {filter_string}" if filter_string else "")
    try:
        runs = client.search_runs([found.experiment_id], query, max_results=50000,
                                  order_by=["attributes.start_time DESC"])
    except MlflowException as error:
        raise LeukexpError(f"--filter {filter_string!r}: {error.message.splitlines()[0]}") from error
    rows = []
    classes: dict[str, list[str]] = {}
    for run in runs:
        tags = run.data.tags
        rows.append({"run_id": run.info.run_id, "status": run.info.status, "start": run.info.start_time,
                     "cv_group": tags.get(CV_GROUP_TAG, "?"), "data_hash": tags.get(DATA_HASH_TAG, ""),
                     "fold": tags.get(FOLD_TAG, "?"), **{t: tags.get(t, "") for t in LABEL_TAGS},
                     **run.data.metrics})
        named = [k.removeprefix("test/f1/") for k in run.data.metrics if k.startswith("test/f1/")]
        classes.setdefault(tags.get(CV_GROUP_TAG, "?"), named)
    table = pd.DataFrame(rows)
    if table.empty:
        where = f" {filter_string}" if filter_string else ""
        raise LeukexpError(f"--experiment {experiment}: no fold runs match{where}")
    finished = table[table["status"] == "FINISHED"].drop_duplicates(["cv_group", "data_hash", "fold"])
    unfinished = table[table["status"] != "FINISHED"]
    finished = finished.assign(config=configuration_labels(finished["cv_group"]))
    return StudyRuns(finished.sort_values(["config", "fold"]).reset_index(drop=True),
                     unfinished.reset_index(drop=True), classes)


def download_table(client: MlflowClient, run_id: str, name: str, out: Path) -> pd.DataFrame:
    """A fold run's CSV artifact `name`, fetched from the store through a temporary folder in `out`."""
    import tempfile

    with tempfile.TemporaryDirectory(dir=out) as tmp:
        return read_csv(client.download_artifacts(run_id, name, tmp))


def download_predictions(client: MlflowClient, run_id: str, out: Path) -> Predictions:
    """A fold run's `predictions.csv`, fetched from the store through a temporary folder in `out`."""
    return Predictions.from_frame(download_table(client, run_id, PREDICTIONS_FILE, out))
