"""`leukexp-sync RUN_DIR`: upload a finished run that its tracking server could not take when it ended.

When the server stops answering after a run has trained, the run's results stay in its folder (metrics,
predictions, model, figures) with `mlflow_pending.json`; this command logs them to the server later,
to the same run when it still exists, else to a new run under the configuration's CV parent.
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from leukexp.csv_files import read_csv
from leukexp.errors import LeukexpError
from leukexp.runtime.secrets import REDACTED, redact
from leukexp.vocabulary import HISTORY_FILE, MANIFEST_FILE, PARENT_TAG, UPLOAD_TAG, quote_filter

if TYPE_CHECKING:
    from mlflow.entities import Run

    from leukexp.tracking.cv import FoldRun
    from leukexp.tracking.store import RunLogger

PENDING_FILE = "mlflow_pending.json"


def save_pending(out: Path, fold_run: FoldRun, metrics: dict[str, float], artifacts: list[Path]) -> Path:
    """Write what the upload needs beside the run's results (never the store's credentials), with an upload id that
    makes the upload happen once, from this folder or any copy of it."""
    logger = fold_run.logger
    pending = {
        "upload_id": uuid.uuid4().hex,
        "tracking_uri": redact(logger.tracking_uri), "experiment_name": logger.experiment_name,
        "artifact_location": logger.artifact_location, "run_id": logger.run_id, "tags": fold_run.tags,
        "params": fold_run.params, "metrics": metrics, "lock_dir": str(fold_run.lock_dir),
        "artifacts": [str(Path(a).resolve()) for a in artifacts], "dataset": fold_run.dataset,
    }
    path = out / PENDING_FILE
    path.write_text(json.dumps(pending, indent=2))
    return path


def read_pending(path: Path) -> dict:
    """The pending file's content, or one line saying it is damaged and what to do."""
    try:
        pending = json.loads(path.read_text())
        for key in ("tracking_uri", "experiment_name", "tags", "params", "metrics", "artifacts"):
            pending[key]
        if not isinstance(pending["tags"], dict) or not isinstance(pending["metrics"], dict):
            raise TypeError("tags and metrics must be mappings")
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise LeukexpError(f"{path}: damaged ({type(error).__name__}: {str(error)[:120]}); the run's results are"
                           f" still in {path.parent} (metrics in the run's log, predictions.csv, model/); re-run the"
                           " fold to log it again") from error
    return pending


def store_uri(saved: str, given: str | None) -> str:
    """The store to upload to: `--tracking-uri`, else the saved one; a saved URI whose credentials were redacted
    is completed from `$MLFLOW_TRACKING_URI` when that names the same server."""
    if given:
        return given
    if f"{REDACTED}@" not in saved:
        return saved
    environment = os.environ.get("MLFLOW_TRACKING_URI", "")
    if environment and redact(environment) == saved:
        return environment
    raise LeukexpError(f"the run's store {saved} needs credentials, which are never saved; give them with"
                       " --tracking-uri URI or MLFLOW_TRACKING_URI")


def upload(folder: Path, tracking_uri: str | None = None) -> str:
    """Log a pending run folder to its store (or `tracking_uri`); return the run id it went to."""

    from leukexp.tracking.cv import FoldRun
    from leukexp.tracking.store import RunLogger

    path = folder / PENDING_FILE
    if not path.is_file():
        raise LeukexpError(f"{folder}: no {PENDING_FILE}; nothing to upload (give the folder a failed upload named)")
    pending = read_pending(path)
    logger = RunLogger(store_uri(pending["tracking_uri"], tracking_uri), pending["experiment_name"],
                       pending.get("artifact_location"), create_folder=True)
    upload_id = str(pending.get("upload_id") or "")
    if upload_id and (done := _uploaded(logger, upload_id)) is not None:
        path.unlink()
        return f"{done} (already uploaded)"
    tags = dict(pending["tags"]) | ({UPLOAD_TAG: upload_id} if upload_id else {})
    fold_run = FoldRun(logger, tags, Path(pending.get("lock_dir") or folder))
    run = _existing_run(logger, pending.get("run_id"))
    if run is not None and run.info.status == "RUNNING":
        logger.run_id = run.info.run_id
        fold_run.parent_id = run.data.tags.get(PARENT_TAG)
        fold_run.params = pending["params"]
        if upload_id:
            logger.set_tags({UPLOAD_TAG: upload_id})
    else:
        fold_run.open(resume=False, params=pending["params"])
        dataset, manifest = pending.get("dataset"), folder / MANIFEST_FILE
        if isinstance(dataset, dict) and manifest.is_file():  # the new run says what data it saw, as the first did
            fold_run.log_dataset(read_csv(manifest), **{k: str(dataset[k]) for k in ("name", "source", "digest")})
    history_file = folder / HISTORY_FILE
    history = read_csv(history_file) if history_file.is_file() else pd.DataFrame()
    fold_run.finish(history, pending["metrics"], [Path(a) for a in pending["artifacts"]])
    path.unlink()
    return str(logger.run_id)


def _uploaded(logger: RunLogger, upload_id: str) -> str | None:
    """The id of a FINISHED run that this upload (from this folder or a copy of it) already went to."""
    query = f"tags.`{UPLOAD_TAG}` = {quote_filter(upload_id)} and attributes.status = 'FINISHED'"
    runs = logger.client.search_runs([logger.experiment_id], query, max_results=1)
    return runs[0].info.run_id if runs else None


def _existing_run(logger: RunLogger, run_id: str | None) -> Run | None:
    if not run_id:
        return None
    try:
        return logger.client.get_run(run_id)
    except Exception:  # not on this store (e.g. uploading to another server)
        return None
