"""MLflow tracking: experiment set-up on a SQLite (or remote) store, run tags, params and artifacts."""

from __future__ import annotations

import contextlib
import logging
import os
import time
import warnings
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import mlflow
from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from leukexp.errors import LeukexpError
from leukexp.files import file_lock
from leukexp.runtime.secrets import redact
from leukexp.tracking.reach import account_refusal, probe_server
from leukexp.vocabulary import (
    DATASET_CONTEXT_TAG,
    EXPERIMENT_KIND_TAG,
    MODEL_TRAINING,
    NOTE_CONTENT,
    PARENT_TAG,
    TRAINING_CONTEXT,
    mlflow_key,
)

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)
PARAM_LIMIT = 6000


def flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested config -> {"a.b.c": "value"} (lists as their text); keys as MLflow accepts them (`mlflow_key`),
    credentials in URIs redacted (`secrets.redact`)."""
    flat: dict[str, str] = {}
    for key, value in config.items():
        name = f"{prefix}{mlflow_key(str(key))}"
        if isinstance(value, Mapping) and value:
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = redact(str(value))[:PARAM_LIMIT]
    return flat


def resolve_tracking_uri(explicit: str | None = None) -> str:
    """The store to read: the given URI, else `$MLFLOW_TRACKING_URI`, else the store `leukexp-train` writes by
    default from this folder (or `$LEUKEXP_ROOT`)."""
    if explicit:
        return explicit
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    root = Path(os.environ.get("LEUKEXP_ROOT", Path.cwd())).resolve()
    return f"sqlite:///{root}/mlruns/mlflow.db"


def local_store_dir(tracking_uri: str) -> Path | None:
    """The folder of a store on this file system (a SQLite file's folder, a `file:` store), None for a server."""
    database = sqlite_path(tracking_uri)
    if database is not None:
        return database.parent
    if tracking_uri.startswith("file:"):
        return Path(tracking_uri.removeprefix("file://").removeprefix("file:"))
    if tracking_uri.startswith("/"):
        return Path(tracking_uri)
    return None


def sqlite_path(tracking_uri: str) -> Path | None:
    """The database file of a `sqlite:///` URI (None for other stores)."""
    if not tracking_uri.startswith("sqlite:///"):
        return None
    return Path(tracking_uri.removeprefix("sqlite:///").split("?")[0])


def prepare_store(tracking_uri: str, create_folder: bool = False, project_root: str | Path | None = None) -> None:
    """Check the store answers and, for a local SQLite store, create its schema once under a file lock.

    Two sweeps started together on a new store would otherwise both run MLflow's schema migration. A SQLite
    store's folder is created when it lies under the project root (`project_root`: `paths.root_dir`, by default
    `$LEUKEXP_ROOT` or the current folder), or with
    `create_folder` (`mlflow.create_store_folder=true`); elsewhere a missing folder is one line, not a new folder
    at some unexpected place (a typo in the URI would otherwise create `/data/mlrun/` silently).
    """
    database = sqlite_path(tracking_uri)
    if database is not None:
        if not database.parent.is_dir():
            if not (create_folder or _under_project(database.parent, project_root)):
                raise LeukexpError(f"mlflow.tracking_uri={tracking_uri}: the folder {database.parent} does not exist;"
                                   " create it, fix the URI, or set mlflow.create_store_folder=true")
            database.parent.mkdir(parents=True, exist_ok=True)
        if database.is_file() and database.stat().st_size and not is_sqlite_file(database):
            raise LeukexpError(f"mlflow.tracking_uri={tracking_uri}: {database} is not a SQLite database;"
                               " point at an MLflow store or a new file name")
        with file_lock(database.with_name(f".{database.name}.lock")):
            _answer(tracking_uri)
    else:
        _answer(tracking_uri)


def _under_project(folder: Path, project_root: str | Path | None = None) -> bool:
    root = Path(project_root or os.environ.get("LEUKEXP_ROOT") or Path.cwd()).resolve()
    return folder.resolve().is_relative_to(root)


@contextlib.contextmanager
def account_checked(where: str) -> Iterator[None]:
    """Turn a tracking server's 401/403 inside the block into `account_refusal`'s line about `where`."""
    try:
        yield
    except MlflowException as error:
        status = error.get_http_status_code()
        if status not in (401, 403):
            raise
        raise account_refusal(status, where) from error


def is_sqlite_file(path: Path) -> bool:
    """Whether the file starts with SQLite's header."""
    with open(path, "rb") as handle:
        return handle.read(16).startswith(b"SQLite format")


def _answer(tracking_uri: str) -> None:
    probe_server(tracking_uri, "mlflow.tracking_uri=")
    try:
        MlflowClient(tracking_uri).search_experiments(max_results=1)
    except MlflowException as error:
        raise LeukexpError(f"mlflow.tracking_uri={tracking_uri}: cannot open the store"
                           f" ({error.message.splitlines()[0][:200]})") from error
    except Exception as error:  # connection refused, DNS, unknown scheme, a broken database file
        raise LeukexpError(f"mlflow.tracking_uri={tracking_uri}: the store does not answer"
                           f" ({type(error).__name__}); start the server or fix the URI") from error


def artifact_root(tracking_uri: str, configured: str | None) -> str | None:
    """Where a new experiment's artifacts go: `mlflow.artifact_location` for a local store; for a tracking server,
    the server's own choice (None): a local path would send a server's artifacts to this machine's disk."""
    return configured if tracking_uri.startswith(("sqlite:", "file:", "/")) else None


def ensure_experiment(client: MlflowClient, name: str, artifact_location: str | None) -> str:
    """The experiment's id, created if needed (safe when parallel jobs race to create it).

    It is marked as a model-training experiment, so the MLflow 3 UI opens on its runs, not the GenAI overview.
    On a tracking server an existing experiment's tag is written again, so an account that may only read it is one
    line here, before any work, not a refusal after a fold has trained.
    """
    with account_checked(f"mlflow.experiment_name={name} on {redact(client.tracking_uri)}"):
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            with contextlib.suppress(MlflowException):  # another job may have created it a moment ago
                client.create_experiment(name, artifact_location=artifact_location,
                                         tags={EXPERIMENT_KIND_TAG: MODEL_TRAINING})
            experiment = client.get_experiment_by_name(name)
            if experiment is None:
                raise LeukexpError(f"mlflow.experiment_name={name}: the experiment could not be created")
        elif EXPERIMENT_KIND_TAG not in experiment.tags or local_store_dir(client.tracking_uri) is None:
            client.set_experiment_tag(experiment.experiment_id, EXPERIMENT_KIND_TAG, MODEL_TRAINING)
    return experiment.experiment_id


def describe_experiment(client: MlflowClient, experiment_id: str, text: str) -> None:
    """Set the experiment's description (markdown, shown at the top of its page in the UI)."""
    client.set_experiment_tag(experiment_id, NOTE_CONTENT, text)


def log_params(client: MlflowClient, run_id: str, params: Mapping[str, str]) -> None:
    """Log params on a run in batches of 100 (MLflow's limit)."""
    items = [Param(k, v) for k, v in params.items()]
    for start in range(0, len(items), 100):
        client.log_batch(run_id, params=items[start:start + 100])


class RunLogger:
    """Logs one run of a study configuration to an MLflow run through the client (no global active-run state).

    Args:
        tracking_uri: `sqlite:///.../mlruns/mlflow.db` by default, or `http://host:port`.
        experiment_name: MLflow experiment.
        artifact_location: where a new experiment stores artifacts (local stores: `mlruns/artifacts`).
        create_folder: create a SQLite store's folder even outside `project_root` (`paths.root_dir`).
        prepared: the store was already checked (and a SQLite store's schema made) in this process.
    """

    def __init__(self, tracking_uri: str, experiment_name: str, artifact_location: str | None = None,
                 create_folder: bool = False, project_root: str | Path | None = None, prepared: bool = False) -> None:
        if prepared:  # the schema and the store's answer were checked; a server may have gone since: one line
            probe_server(tracking_uri)
        else:
            prepare_store(tracking_uri, create_folder, project_root)
        if redact(tracking_uri) != tracking_uri:  # MLflow prints "View run ... at: <URI>", credentials included
            os.environ["MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"] = "true"
        self.client = MlflowClient(tracking_uri)
        self.tracking_uri = tracking_uri
        self.experiment_name = experiment_name
        self.artifact_location = artifact_location
        self.experiment_id = ensure_experiment(self.client, experiment_name,
                                               artifact_root(tracking_uri, artifact_location))
        self.run_id: str | None = None

    def start(self, run_name: str, tags: Mapping[str, str], parent_run_id: str | None = None) -> str:
        """Create the run and return its id."""
        all_tags = dict(tags)
        if parent_run_id:
            all_tags[PARENT_TAG] = parent_run_id
        run = self.client.create_run(self.experiment_id, run_name=run_name, tags=all_tags)
        self.run_id = run.info.run_id
        return self.run_id

    @property
    def active_run(self) -> str:
        """The id of the run this logger writes to (logging before a run is started or resumed is a bug)."""
        if self.run_id is None:
            raise ValueError("no run started or resumed to log to")
        return self.run_id

    def log_dataset(self, frame: pd.DataFrame, name: str, source: str, digest: str, run_id: str | None = None) -> None:
        """The run's data as an MLflow dataset input (training context): `frame` is its profile and schema (the
        manifest), `digest` what identifies it (the data hash), `source` where it lives (the data root); `run_id`:
        another run than this logger's (its CV parent)."""
        from mlflow.data.pandas_dataset import from_pandas
        from mlflow.entities import DatasetInput, InputTag

        # a local folder matches two of MLflow's source kinds, and the schema's integer columns (a bag's number of
        # instances) draw a hint about missing values: the manifest has none; MLflow says both as warnings
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            dataset = from_pandas(frame, source=source, name=name, digest=digest)
            entity = dataset._to_mlflow_entity()
        self.client.log_inputs(run_id or self.active_run, datasets=[DatasetInput(
            entity, tags=[InputTag(DATASET_CONTEXT_TAG, TRAINING_CONTEXT)])])

    def log_params(self, params: Mapping[str, str]) -> None:
        """Log params in batches of 100 (MLflow's limit)."""
        log_params(self.client, self.active_run, params)

    def log_steps(self, steps: Iterable[tuple[int, Mapping[str, float]]]) -> None:
        """Log metrics of many steps (per-epoch history, final values) in as few requests as MLflow allows."""
        stamp = int(time.time() * 1000)
        items = [Metric(k, float(v), stamp, step) for step, metrics in steps for k, v in metrics.items()]
        for start in range(0, len(items), 1000):
            self.client.log_batch(self.active_run, metrics=items[start:start + 1000])

    def set_tags(self, tags: Mapping[str, str]) -> None:
        """Add or change tags."""
        self.client.log_batch(self.active_run, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_artifacts(self, paths: Iterable[Path], artifact_path: str | None = None) -> None:
        """Upload files (or folders) as artifacts."""
        for path in paths:
            if path.is_dir():
                self.client.log_artifacts(self.active_run, str(path), artifact_path=path.name)
            else:
                self.client.log_artifact(self.active_run, str(path), artifact_path=artifact_path)

    def end(self, status: str = "FINISHED") -> None:
        """Close the run as FINISHED, FAILED or KILLED."""
        if self.run_id:
            self.client.set_terminated(self.run_id, status=status)

    def ui_hint(self) -> str:
        """How to open the MLflow UI on this store: a server's own address, or the command for a local store."""
        if self.tracking_uri.startswith(("http://", "https://")):
            return f"open {redact(self.tracking_uri)} in a browser"
        return f"mlflow ui --backend-store-uri {redact(self.tracking_uri)}"


__all__ = ["RunLogger", "flatten", "mlflow", "prepare_store"]
