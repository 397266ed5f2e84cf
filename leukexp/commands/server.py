"""`leukexp-server start|stop|status FOLDER`: a tracking server a lab can share (MLflow on PostgreSQL).

`start` creates (once) and starts a PostgreSQL cluster under FOLDER, then `mlflow server` on it with the artifacts
proxied into FOLDER/artifacts; `--auth` adds MLflow's basic-auth app (accounts and permissions per experiment, the
first administrator from MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD). A second `start` on the same folder
reuses its data; `stop` stops every process the server started and the cluster.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from leukexp.errors import user_errors
from leukexp.runtime.process import prepare_process


def main(argv: list[str] | None = None) -> int:
    """Command line entry of `leukexp-server`."""
    parser = argparse.ArgumentParser(prog="leukexp-server", description=__doc__.splitlines()[0].split(": ", 1)[-1])
    parser.add_argument("action", choices=("start", "stop", "status"))
    parser.add_argument("folder", type=Path, help="where the server keeps its database, artifacts and logs")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    parser.add_argument("--port", type=int, default=5000)
    parser.add_argument("--auth", action="store_true", help="accounts and permissions (MLflow's basic-auth app)")
    parser.add_argument("--database-uri", default=None,
                        help="an existing PostgreSQL database instead of a cluster in FOLDER (its password from"
                             " ~/.pgpass or PGPASSWORD, not in the URI)")
    args = parser.parse_args(argv)
    prepare_process()
    with user_errors("leukexp-server"):
        from leukexp.tracking import server

        if args.action == "start":
            state = server.start(args.folder, args.host, args.port, args.auth, args.database_uri)
            print(f"tracking server on {state['uri']} ({'accounts on' if state['auth'] else 'no accounts'}; data in"
                  f" {args.folder.resolve()})")
            print(f"use it with: export MLFLOW_TRACKING_URI={state['uri']}")
            print(f"stop it with: leukexp-server stop {args.folder}")
        elif args.action == "stop":
            stopped = server.stop(args.folder)
            print(f"stopped the server of {args.folder}" if stopped else f"no server was running for {args.folder}")
        else:
            state = server.status(args.folder)
            print(f"running on {state['uri']}" if state["running"] else f"not running ({args.folder})")
            return 0 if state["running"] else 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
