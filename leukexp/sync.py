"""`leukexp-sync RUN_DIR`: upload a finished run that its tracking server could not take when it ended.

When the server stops answering after a run has trained, the run's results stay in its folder (metrics,
predictions, model, figures) with `mlflow_pending.json`; this command logs them to the server later,
to the same run when it still exists, else to a new run under the configuration's CV parent.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from leukexp.errors import LeukexpError, user_errors
from leukexp.vocabulary import HISTORY_FILE

if TYPE_CHECKING:
    from leukexp.cv import FoldRun

PENDING_FILE = "mlflow_pending.json"


def save_pending(out: Path, fold_run: FoldRun, metrics: dict[str, float], artifacts: list[Path]) -> Path:
    """Write what the upload needs beside the run's results."""
    logger = fold_run.logger
    pending = {
        "tracking_uri": logger.tracking_uri, "experiment_name": logger.experiment_name,
        "artifact_location": logger.artifact_location, "run_id": logger.run_id, "tags": fold_run.tags,
        "params": fold_run.params, "metrics": metrics, "lock_dir": str(fold_run.lock_dir),
        "artifacts": [str(Path(a).resolve()) for a in artifacts],
    }
    path = out / PENDING_FILE
    path.write_text(json.dumps(pending, indent=2))
    return path


def upload(folder: Path, tracking_uri: str | None = None) -> str:
    """Log a pending run folder to its store (or `tracking_uri`); return the run id it went to."""
    from leukexp.cv import FoldRun
    from leukexp.tracking import RunLogger

    path = folder / PENDING_FILE
    if not path.is_file():
        raise LeukexpError(f"{folder}: no {PENDING_FILE}; nothing to upload (give the folder a failed upload named)")
    pending = json.loads(path.read_text())
    logger = RunLogger(tracking_uri or pending["tracking_uri"], pending["experiment_name"],
                       pending["artifact_location"])
    fold_run = FoldRun(logger, pending["tags"], Path(pending["lock_dir"]))
    run = _existing_run(logger, pending.get("run_id"))
    if run is not None and run.info.status == "RUNNING":
        logger.run_id = run.info.run_id
        fold_run.parent_id = run.data.tags.get("mlflow.parentRunId")
        fold_run.params = pending["params"]
    else:
        fold_run.open(resume=False, params=pending["params"])
    history_file = folder / HISTORY_FILE
    history = pd.read_csv(history_file) if history_file.is_file() else pd.DataFrame()
    fold_run.finish(history, pending["metrics"], [Path(a) for a in pending["artifacts"]])
    path.unlink()
    return str(logger.run_id)


def _existing_run(logger: object, run_id: str | None) -> object | None:
    if not run_id:
        return None
    try:
        return logger.client.get_run(run_id)  # type: ignore[attr-defined]
    except Exception:  # not on this store (e.g. uploading to another server)
        return None


def main(argv: list[str] | None = None) -> int:
    """Command line entry of `leukexp-sync`: 0 when every folder was uploaded."""
    parser = argparse.ArgumentParser(prog="leukexp-sync", description=__doc__.splitlines()[0])
    parser.add_argument("folders", nargs="+", type=Path, help="run folders holding mlflow_pending.json")
    parser.add_argument("--tracking-uri", default=None, help="upload to this store instead of the run's own")
    args = parser.parse_args(argv)
    with user_errors("leukexp-sync"):
        for folder in args.folders:
            run_id = upload(folder, args.tracking_uri)
            print(f"uploaded {folder} to MLflow run {run_id}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
