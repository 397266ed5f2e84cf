"""`leukexp-report`: the study's tables and charts from an MLflow store, without a notebook.

    leukexp-report --experiment quickstart [--filter "tags.task='binary'"] [--compare head=mlp1 head=svm] --out DIR
"""

from __future__ import annotations

import argparse
from pathlib import Path

from leukexp.errors import LeukexpError, user_errors
from leukexp.report.runs import load_runs, open_client
from leukexp.report.sections import write_report
from leukexp.runtime.process import prepare_process
from leukexp.tracking.reach import configure_http
from leukexp.tracking.store import is_sqlite_file, resolve_tracking_uri, sqlite_path
from leukexp.vocabulary import CHAMPION_ALIAS, CV_GROUP_TAG, TEST, TEST_ACC


def check_out_folder(out: Path) -> None:
    """`--out` must be a folder or a path where one can be made: one line naming the file in the way."""
    for place in (out, *out.parents):
        if place.exists():
            if not place.is_dir():
                what = "is a file" if place == out else f"lies under {place}, which is a file"
                raise LeukexpError(f"--out {out}: {what}; give a folder (e.g. --out reports/NAME)")
            return


def main(argv: list[str] | None = None) -> int:
    """Command line entry of `leukexp-report`: 0 when the report was written."""
    parser = argparse.ArgumentParser(prog="leukexp-report", description="The study's tables from an MLflow store.")
    parser.add_argument("--experiment", required=True, help="MLflow experiment name (mlflow.experiment_name)")
    parser.add_argument("--tracking-uri", default=None,
                        help="store or server (default: $MLFLOW_TRACKING_URI, else ./mlruns/mlflow.db)")
    parser.add_argument("--filter", default=None, help="MLflow filter, e.g. \"tags.task='binary'\"")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: reports/EXPERIMENT)")
    parser.add_argument("--metric", default=TEST_ACC, help=f"metric compared (default {TEST_ACC})")
    parser.add_argument("--ensemble", nargs="+", action="append", metavar="CONFIG", default=None,
                        help="average the probabilities of these configurations (each named by key=value tokens,"
                             " e.g. --ensemble model=efficientnet_lite0 model=efficientnet_lite2); repeatable")
    parser.add_argument("--register", metavar="NAME", default=None,
                        help="register the best configuration's model (its fold closest to the mean) as NAME")
    parser.add_argument("--compare", nargs=2, action="append", metavar=("A", "B"),
                        help="paired comparison of two configurations, each named by key=value tokens of its "
                             "cv_group, e.g. --compare head=mlp1 head=svm (repeatable)")
    args = parser.parse_args(argv)
    prepare_process()
    with user_errors("leukexp-report"):
        uri = resolve_tracking_uri(args.tracking_uri)
        database = sqlite_path(uri)
        if database is not None and not database.is_file():
            raise LeukexpError(f"--tracking-uri {uri}: no such store; run leukexp-train first or point at the store")
        if database is not None and not is_sqlite_file(database):
            raise LeukexpError(f"--tracking-uri {uri}: {database} is not a SQLite database")
        configure_http()
        client = open_client(uri)
        runs = load_runs(client, args.experiment, args.filter)
        if args.metric not in runs.folds.columns:
            known = ", ".join(sorted(c for c in runs.folds.columns if c.count("/") == 1 and c.startswith(TEST)))
            raise LeukexpError(f"--metric {args.metric}: not logged by these runs (test metrics: {known})")
        out = args.out or Path("reports") / args.experiment
        check_out_folder(out)
        path = write_report(runs, out, args.experiment, [tuple(c) for c in args.compare or []], args.metric, client,
                            args.ensemble)
        print(f"wrote {path} ({runs.folds['config'].nunique()} configurations, {len(runs.folds)} fold runs,"
              f" {len(runs.unfinished)} not counted)")
        if args.register:
            from leukexp.tracking.model_registry import register

            experiment = client.get_experiment_by_name(args.experiment)
            if experiment is None:
                raise LeukexpError(f"--experiment {args.experiment}: no such experiment in {uri}")
            experiment_id = experiment.experiment_id
            version, selection = register(client, experiment_id, args.register, args.metric)
            print(f"registered models:/{args.register}/{version} (also models:/{args.register}@{CHAMPION_ALIAS}):"
                  f" {selection.run.data.tags.get(CV_GROUP_TAG, '')}; {selection.reason}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
