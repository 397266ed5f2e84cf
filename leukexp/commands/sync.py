"""`leukexp-sync FOLDER...`: upload run folders that a run kept when the store stopped answering."""

from __future__ import annotations

import argparse
from pathlib import Path

from leukexp.errors import user_errors
from leukexp.runtime.process import prepare_process
from leukexp.tracking.sync import upload


def main(argv: list[str] | None = None) -> int:
    """Command line entry of `leukexp-sync`: 0 when every folder was uploaded."""
    parser = argparse.ArgumentParser(prog="leukexp-sync", description=__doc__.splitlines()[0].split(': ', 1)[-1])
    parser.add_argument("folders", nargs="+", type=Path, help="run folders holding mlflow_pending.json")
    parser.add_argument("--tracking-uri", default=None, help="upload to this store instead of the run's own")
    args = parser.parse_args(argv)
    prepare_process()
    with user_errors("leukexp-sync"):
        from leukexp.tracking.store import configure_http

        configure_http()  # the deadline and retries of leukexp-train: a dead server is one line in about 10 s
        for folder in args.folders:
            run_id = upload(folder, args.tracking_uri)
            print(f"uploaded {folder} to MLflow run {run_id}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
