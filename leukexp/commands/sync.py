"""`leukexp-sync FOLDER...`: upload run folders that a run kept when the store stopped answering;
`leukexp-sync --from STORE`: copy a store's studies (runs, histories, artifacts, registered versions) to another."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from leukexp.errors import user_errors
from leukexp.runtime.process import prepare_process
from leukexp.runtime.secrets import redact
from leukexp.tracking.sync import upload


def main(argv: list[str] | None = None) -> int:
    """Command line entry of `leukexp-sync`: 0 when every folder was uploaded."""
    parser = argparse.ArgumentParser(prog="leukexp-sync", description=__doc__.splitlines()[0].split(': ', 1)[-1])
    parser.add_argument("folders", nargs="*", type=Path, help="run folders holding mlflow_pending.json")
    parser.add_argument("--tracking-uri", default=None,
                        help="upload (or copy) to this store instead of the run's own ($MLFLOW_TRACKING_URI, else"
                             " ./mlruns for --from)")
    parser.add_argument("--from", dest="source", default=None, metavar="STORE",
                        help="copy this store's studies to the target, e.g. sqlite:///old/mlruns/mlflow.db")
    parser.add_argument("--experiment", action="append", default=None,
                        help="with --from: only this experiment (repeat for more; default: every one)")
    args = parser.parse_args(argv)
    if not args.folders and not args.source:
        parser.error("name run folders to upload, or --from STORE to copy a store")
    if args.experiment and not args.source:
        parser.error("--experiment goes with --from STORE")
    prepare_process()
    with user_errors("leukexp-sync"):
        from leukexp.tracking.reach import configure_http

        configure_http()  # the deadline and retries of leukexp-train: a dead server is one line in about 10 s
        if args.source:
            from leukexp.tracking.move import move_store
            from leukexp.tracking.store import resolve_tracking_uri

            os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")  # no "View run" line per copy
            target = resolve_tracking_uri(args.tracking_uri)
            report = move_store(args.source, target, args.experiment)
            print(f"copied to {redact(target)}: {report.summary()}")
        for folder in args.folders:
            run_id = upload(folder, args.tracking_uri)
            print(f"uploaded {folder} to MLflow run {run_id}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
