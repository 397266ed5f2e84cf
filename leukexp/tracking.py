"""MLflow tracking: experiment set-up on a SQLite (or remote) store, run tags, params and artifacts."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import mlflow
from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from leukexp.errors import LeukexpError

log = logging.getLogger(__name__)
logging.getLogger("mlflow.store.db.utils").setLevel(logging.WARNING)
logging.getLogger("alembic").setLevel(logging.WARNING)
PARAM_LIMIT = 6000


def flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested config -> {"a.b.c": "value"} (lists as their text)."""
    flat: dict[str, str] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = str(value)[:PARAM_LIMIT]
    return flat


def prepare_store(tracking_uri: str) -> None:
    """Make sure a local SQLite store's folder exists and its schema is created (once, before jobs)."""
    if tracking_uri.startswith("sqlite:///"):
        Path(tracking_uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    try:
        MlflowClient(tracking_uri).search_experiments(max_results=1)
    except MlflowException as error:
        raise LeukexpError(
            f"mlflow.tracking_uri={tracking_uri}: cannot open the store ({error.message[:200]})"
        ) from error


def ensure_experiment(client: MlflowClient, name: str, artifact_location: str | None) -> str:
    """The experiment's id, created if needed (safe when parallel jobs race to create it)."""
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    try:
        return client.create_experiment(name, artifact_location=artifact_location)
    except MlflowException:
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            raise
        return experiment.experiment_id


class RunLogger:
    """Logs one study cell to an MLflow run through the client (no global active-run state).

    Args:
        tracking_uri: `sqlite:///.../mlruns/mlflow.db` by default, or `http://host:port`.
        experiment_name: MLflow experiment.
        artifact_location: where a new experiment stores artifacts (local stores: `mlruns/artifacts`).
    """

    def __init__(self, tracking_uri: str, experiment_name: str, artifact_location: str | None = None) -> None:
        prepare_store(tracking_uri)
        self.client = MlflowClient(tracking_uri)
        self.tracking_uri = tracking_uri
        if not tracking_uri.startswith(("sqlite:", "file:", "/")):
            artifact_location = None  # a tracking server decides where artifacts go
        self.experiment_id = ensure_experiment(self.client, experiment_name, artifact_location)
        self.run_id: str | None = None

    def start(self, run_name: str, tags: Mapping[str, str], parent_run_id: str | None = None) -> str:
        """Create the run and return its id."""
        all_tags = dict(tags)
        if parent_run_id:
            all_tags["mlflow.parentRunId"] = parent_run_id
        run = self.client.create_run(self.experiment_id, run_name=run_name, tags=all_tags)
        self.run_id = run.info.run_id
        return self.run_id

    def log_params(self, params: Mapping[str, str]) -> None:
        """Log params in batches of 100 (MLflow's limit)."""
        items = [Param(k, v) for k, v in params.items()]
        for start in range(0, len(items), 100):
            self.client.log_batch(self.run_id, params=items[start:start + 100])

    def log_metrics(self, metrics: Mapping[str, float], step: int = 0) -> None:
        """Log metrics at one step."""
        stamp = int(time.time() * 1000)
        items = [Metric(k, float(v), stamp, step) for k, v in metrics.items()]
        for start in range(0, len(items), 1000):
            self.client.log_batch(self.run_id, metrics=items[start:start + 1000])

    def set_tags(self, tags: Mapping[str, str]) -> None:
        """Add or change tags."""
        self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_artifacts(self, paths: Iterable[Path], artifact_path: str | None = None) -> None:
        """Upload files (or folders) as artifacts."""
        for path in paths:
            if path.is_dir():
                self.client.log_artifacts(self.run_id, str(path), artifact_path=path.name)
            else:
                self.client.log_artifact(self.run_id, str(path), artifact_path=artifact_path)

    def end(self, status: str = "FINISHED") -> None:
        """Close the run as FINISHED, FAILED or KILLED."""
        if self.run_id:
            self.client.set_terminated(self.run_id, status=status)

    def ui_hint(self) -> str:
        """The command that opens the MLflow UI on this store."""
        return f"mlflow ui --backend-store-uri {self.tracking_uri}"


__all__ = ["RunLogger", "flatten", "mlflow", "prepare_store"]
