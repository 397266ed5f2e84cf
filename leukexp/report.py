"""`leukexp-report`: the study's tables and charts from an MLflow store, without a notebook.

    leukexp-report --experiment quickstart [--filter "tags.task='binary'"] [--compare head=mlp1 head=svm] --out DIR
"""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from leukexp.errors import LeukexpError, user_errors
from leukexp.evaluation import classification_metrics
from leukexp.stats import paired_difference, spread, t_interval, wilson_interval
from leukexp.tracking import configure_http, is_sqlite_file, probe_server, resolve_tracking_uri, sqlite_path
from leukexp.vocabulary import (
    CAM_DIR,
    CV_GROUP_TAG,
    DATA_HASH_TAG,
    FOLD_TAG,
    KIND_FOLD,
    KIND_SEARCH,
    LABEL_TAGS,
    PREDICTIONS_FILE,
    SEARCH_STORAGE_TAG,
    SEARCH_TAG,
    Predictions,
    kind_filter,
)

log = logging.getLogger("leukexp")

# the thesis's per-fold rows (Tables 4.1-4.3) and where each comes from
FOLD_ROWS = {"test_acc": "test/acc", "val_acc": "best/val/acc", "trn_acc": "best/train/acc",
             "test_loss": "test/loss", "val_loss": "best/val/loss", "trn_loss": "best/train/loss"}


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
        names = [k.removeprefix("test/f1/") for k in run.data.metrics if k.startswith("test/f1/")]
        classes.setdefault(tags.get(CV_GROUP_TAG, "?"), names)
    table = pd.DataFrame(rows)
    if table.empty:
        where = f" {filter_string}" if filter_string else ""
        raise LeukexpError(f"--experiment {experiment}: no fold runs match{where}")
    finished = table[table["status"] == "FINISHED"].drop_duplicates(["cv_group", "data_hash", "fold"])
    unfinished = table[table["status"] != "FINISHED"]
    finished = finished.assign(config=configuration_labels(finished["cv_group"]))
    return StudyRuns(finished.sort_values(["config", "fold"]).reset_index(drop=True),
                     unfinished.reset_index(drop=True), classes)


def configuration_labels(groups: pd.Series) -> pd.Series:
    """Short names: the parts of each `cv_group` that differ between configurations."""
    tokens = {g: set(g.split()) for g in groups.unique()}
    common = set.intersection(*tokens.values()) if tokens else set()
    labels = {g: " ".join(sorted(t - common)) or "(single configuration)" for g, t in tokens.items()}
    return groups.map(labels)


def per_fold_tables(folds: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """Tables 4.1-4.3: accuracy and loss per fold with the average, one table per configuration."""
    tables = {}
    for config, runs in folds.groupby("config", sort=True):
        runs = runs.sort_values("fold")
        table = pd.DataFrame({
            f"Fold {i + 1} ({fold})": [run.get(m, np.nan) for m in FOLD_ROWS.values()]
            for i, (fold, run) in enumerate(zip(runs["fold"], runs.to_dict("records"), strict=True))
        }, index=list(FOLD_ROWS))
        table["Average"] = table.mean(axis=1)
        tables[config] = table
    return tables


def per_class_table(folds: pd.DataFrame) -> pd.DataFrame:
    """Table 4.28: average precision, recall and F1 per class and configuration."""
    rows = []
    for config, runs in folds.groupby("config", sort=True):
        classes = sorted({c.removeprefix("test/f1/") for c in runs.columns if c.startswith("test/f1/")
                          and runs[c].notna().any()})
        for name in classes:
            rows.append({"configuration": config, "class": name,
                         **{m: runs[f"test/{m}/{name}"].mean() for m in ("precision", "recall", "f1")}})
    return pd.DataFrame(rows)


def summary_table(folds: pd.DataFrame, metric: str = "test/acc") -> pd.DataFrame:
    """Every configuration: folds, mean +- std and 95% t interval of the metric over folds, macro F1, AUC, loss."""
    rows = []
    for config, runs in folds.groupby("config", sort=True):
        values = runs[metric].dropna().to_numpy(dtype=float)
        interval = t_interval(values)
        rows.append({"configuration": config, "folds": len(values), "mean": interval.mean, "std": spread(values),
                     "ci95_low": interval.low, "ci95_high": interval.high,
                     "f1_macro": runs.get("test/f1_macro", pd.Series(dtype=float)).mean(),
                     "auc_macro": runs.get("test/auc_macro", pd.Series(dtype=float)).mean(),
                     "loss": runs.get("test/loss", pd.Series(dtype=float)).mean()})
    return pd.DataFrame(rows).sort_values("mean", ascending=False).reset_index(drop=True)


def pooled_accuracy_table(folds: pd.DataFrame) -> pd.DataFrame:
    """Accuracy over the pooled test predictions of all folds with its Wilson interval (stays inside [0, 1]).

    The pooled count of correct predictions is recovered from each fold's accuracy and test-set size
    (`test/n`); configurations whose runs do not record the size are left out.
    """
    if "test/n" not in folds:
        return pd.DataFrame(columns=["configuration", "correct", "samples", "accuracy", "wilson_low", "wilson_high"])
    rows = []
    for config, runs in folds.groupby("config", sort=True):
        known = runs.dropna(subset=["test/acc", "test/n"])
        if known.empty:
            continue
        correct = round(float((known["test/acc"] * known["test/n"]).sum()))
        samples = int(known["test/n"].sum())
        interval = wilson_interval(correct, samples)
        rows.append({"configuration": config, "correct": correct, "samples": samples, "accuracy": interval.mean,
                     "wilson_low": interval.low, "wilson_high": interval.high})
    return pd.DataFrame(rows)


def pick_configuration(folds: pd.DataFrame, selector: str) -> str:
    """The one configuration whose cv_group holds every `key=value` token of the selector."""
    wanted = set(selector.split())
    matches = sorted({c for g, c in zip(folds["cv_group"], folds["config"], strict=True) if wanted <= set(g.split())})
    if len(matches) != 1:
        known = "; ".join(sorted(folds["config"].unique()))
        what = "no configuration" if not matches else f"{len(matches)} configurations ({'; '.join(matches)})"
        raise LeukexpError(f"--compare {selector!r} matches {what}; configurations: {known}")
    return matches[0]


def paired_comparison(folds: pd.DataFrame, first: str, second: str, metric: str = "test/acc") -> dict[str, object]:
    """Difference of two configurations over their shared folds: mean, 95% CI, paired t-test, verdict."""
    a = folds[folds["config"] == first].set_index("fold")[metric]
    b = folds[folds["config"] == second].set_index("fold")[metric]
    result = paired_difference(a, b)
    return {"first": first, "second": second, "metric": metric, "shared_folds": len(result.shared_folds),
            "folds": ", ".join(result.shared_folds), "mean_difference": result.mean_difference,
            "ci95_low": result.ci95_low, "ci95_high": result.ci95_high, "p_value": result.p_value,
            "verdict": result.verdict}


def ensemble_folds(folds: pd.DataFrame, members: list[str], predictions: Callable[[str], Predictions]
                   ) -> pd.DataFrame:
    """Fold rows of the ensemble of `members` (configuration labels): the mean of their class probabilities
    over the same folds and test samples, scored per fold. `predictions(run_id)` reads a run's predictions.csv."""
    name = "ensemble(" + " + ".join(members) + ")"
    token = "ensemble=" + "+".join(m.replace(" ", ",") for m in members)  # one token: member selectors miss it
    by_member = {m: folds[folds["config"] == m].set_index("fold") for m in members}
    shared = sorted(set.intersection(*(set(table.index) for table in by_member.values())))
    rows = []
    for fold in shared:
        parts = [predictions(str(by_member[m].loc[fold, "run_id"])) for m in members]
        keys = [list(zip(p.files, p.views, strict=True)) for p in parts]
        if any(k != keys[0] for k in keys[1:]):
            raise LeukexpError(f"--ensemble: {', '.join(members)} did not test the same samples in fold {fold}"
                               " (different data or protocol); ensemble configurations of one study")
        probs = np.mean([p.probs for p in parts], axis=0)
        rows.append({"cv_group": token, "config": name, "fold": fold, "run_id": "", "status": "FINISHED",
                     **classification_metrics(parts[0].labels, probs, parts[0].classes)})
    if not rows:
        raise LeukexpError(f"--ensemble: {', '.join(members)} share no finished fold")
    return pd.DataFrame(rows)


def markdown(table: pd.DataFrame, percent: tuple[str, ...] = (), index: bool = True) -> str:
    """A GitHub markdown table; columns or rows named in `percent` as percentages."""
    frame = table.copy()
    header = ([frame.index.name or ""] if index else []) + [str(c) for c in frame.columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for key, row in frame.iterrows():
        cells = [str(key)] if index else []
        for column, value in row.items():
            as_percent = any(p in str(column) or p in str(key) for p in percent)
            cells.append(_cell(value, as_percent))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _cell(value: object, as_percent: bool) -> str:
    if isinstance(value, float | np.floating):
        if np.isnan(value):
            return "-"
        return f"{value * 100:.2f}%" if as_percent else f"{value:.4f}"
    return str(value)


@dataclass
class ReportContext:
    """What every report section reads: the runs, where files go, the metric and the requested comparisons."""

    runs: StudyRuns
    out: Path
    metric: str = "test/acc"
    compare: list[tuple[str, str]] = field(default_factory=list)
    client: MlflowClient | None = None
    # comparisons between configuration labels already resolved (an ensemble against its best member)
    pairs: list[tuple[str, str]] = field(default_factory=list)
    experiment: str = ""

    @property
    def folds(self) -> pd.DataFrame:
        """The finished fold runs, one row per configuration and fold."""
        return self.runs.folds


Section = Callable[[ReportContext], list[str]]


def summary_section(context: ReportContext) -> list[str]:
    """One table of every configuration (mean, std, t interval over folds) and a bar chart."""
    from leukexp.plots import bar_chart

    summary = summary_table(context.folds, context.metric)
    summary.to_csv(context.out / "summary.csv", index=False)
    bar_chart(summary["configuration"], summary["mean"], summary["ci95_low"], summary["ci95_high"],
              context.out / "comparison.png", f"{context.metric} (mean and 95% CI over folds)")
    return ["## Summary of every configuration", "",
            markdown(summary, ("mean", "std", "ci95", "f1", "auc"), index=False), "",
            "![comparison](comparison.png)", ""]


def pooled_section(context: ReportContext) -> list[str]:
    """Accuracy over all folds' pooled test predictions with a Wilson interval (inside [0, 1])."""
    pooled = pooled_accuracy_table(context.folds)
    if pooled.empty:
        return []
    pooled.to_csv(context.out / "pooled_accuracy.csv", index=False)
    return ["## Accuracy over the pooled test predictions", "",
            "All folds' test samples together; 95% Wilson interval (it stays inside [0, 1], unlike the t interval"
            " over a few folds).", "", markdown(pooled, ("accuracy", "wilson"), index=False), ""]


def per_fold_section(context: ReportContext) -> list[str]:
    """Tables 4.1-4.3: accuracy and loss per fold with their average, one table per configuration."""
    lines = ["## Accuracy and loss per fold", ""]
    for i, (config, table) in enumerate(per_fold_tables(context.folds).items(), start=1):
        table.index.name = "metric"
        table.to_csv(context.out / f"folds_{i:02d}.csv")
        lines += [f"### {config}", "", markdown(table, ("acc",)), ""]
    return lines


def per_class_section(context: ReportContext) -> list[str]:
    """Table 4.28: average precision, recall and F1 per class and configuration, and a per-class F1 chart."""
    from leukexp.plots import grouped_bars

    classes = per_class_table(context.folds)
    classes.to_csv(context.out / "per_class.csv", index=False)
    lines = ["## Average precision, recall and F1 per class", ""]
    if classes.empty:
        return lines
    grouped_bars(classes.pivot(index="class", columns="configuration", values="f1"),
                 context.out / "per_class_f1.png", "mean test F1 per class")
    return [*lines, markdown(classes, ("precision", "recall", "f1"), index=False), "",
            "![per-class F1](per_class_f1.png)", ""]


def comparison_section(context: ReportContext) -> list[str]:
    """Each requested paired comparison over the shared folds."""
    folds = context.folds
    pairs = [(pick_configuration(folds, a), pick_configuration(folds, b)) for a, b in context.compare]
    pairs += context.pairs
    if not pairs:
        return []
    results = pd.DataFrame([paired_comparison(folds, a, b, context.metric) for a, b in pairs])
    results.to_csv(context.out / "comparisons.csv", index=False)
    return ["## Paired comparisons over shared folds", "", markdown(results, ("mean_difference", "ci95"), index=False),
            ""]


def activation_map_section(context: ReportContext) -> list[str]:
    """The activation-map panel of the best configuration's fold closest to its mean (when runs logged one)."""
    if context.client is None or context.folds.empty:
        return []
    best = summary_table(context.folds, context.metric).loc[0]
    runs = context.folds[context.folds["config"] == best["configuration"]]
    run = runs.loc[(runs[context.metric] - best["mean"]).abs().sort_values(kind="stable").index[0]]
    try:
        downloaded = context.client.download_artifacts(run["run_id"], f"{CAM_DIR}/panel.png", str(context.out))
    except MlflowException:
        return []
    target = context.out / "best_activation_maps.png"
    Path(downloaded).replace(target)
    return ["## What the best configuration looked at", "",
            f"{best['configuration']}, fold {run['fold']} ({context.metric} {run[context.metric]:.4f}, the fold closest"
            " to the configuration's mean): Grad-CAM maps of the predicted class over the backbone's last stage,"
            " a few correct and wrong test images per class (title: true -> predicted (probability)).", "",
            "![activation maps](best_activation_maps.png)", ""]


def search_section(context: ReportContext) -> list[str]:
    """Each search of the experiment (`hydra/sweeper=optuna`): its best trials, the objective over trials and
    Optuna's parameter importances, read from the study's journal beside the store."""
    if context.client is None or not context.experiment:
        return []
    experiment = context.client.get_experiment_by_name(context.experiment)
    if experiment is None:
        return []
    searches = context.client.search_runs([experiment.experiment_id], kind_filter(KIND_SEARCH), max_results=100)
    lines: list[str] = []
    for run in searches:
        lines += search_lines(run.data.tags.get(SEARCH_TAG, ""), Path(run.data.tags.get(SEARCH_STORAGE_TAG, "")),
                              context.out)
    return lines


def search_lines(name: str, storage: Path, out: Path) -> list[str]:
    """The report's lines for one study: a table of the best trials and two figures."""
    import optuna

    from leukexp.plots import bar_chart, search_progress
    from leukexp.search import counted, journal, override_value

    if not storage.is_file():
        return [f"## Search {name}", "", f"_The study's journal {storage} is not on this machine._", ""]
    study = optuna.load_study(study_name=name, storage=journal(storage))
    trials = counted(study)
    complete = [t for t in trials if t.state.name == "COMPLETE"]
    maximize = study.direction.name == "MAXIMIZE"
    best = sorted(complete, key=lambda t: -t.value if maximize else t.value)[:10]
    table = pd.DataFrame([{"trial": t.number, "value": t.value, **{k: override_value(v) for k, v in t.params.items()}}
                          for t in best])
    slug = name.replace("/", "_")
    table.to_csv(out / f"search_{slug}.csv", index=False)
    counts = {s: sum(t.state.name == s for t in trials) for s in ("COMPLETE", "PRUNED", "FAIL")}
    summary = f"{counts['COMPLETE']} complete, {counts['PRUNED']} pruned, {counts['FAIL']} failed"
    lines = [f"## Search {name}", "",
             f"{len(trials)} trials ({summary}); objective: the fold mean ({'higher' if maximize else 'lower'} is"
             " better). Best trials:", "", markdown(table, index=False), ""]
    progress = search_progress([(t.number, t.value, t.state.name.lower()) for t in trials], maximize,
                               out / f"search_{slug}_trials.png", f"search {name}: objective per trial")
    lines += [f"![objective per trial]({progress.name})", ""]
    if len(complete) >= 2 and len({k for t in complete for k in t.params}) >= 1:
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Optuna warns when few trials make every importance equal
            importances = optuna.importance.get_param_importances(study)
        chart = bar_chart(list(importances), list(importances.values()), list(importances.values()),
                          list(importances.values()), out / f"search_{slug}_importance.png",
                          "parameter importance (Optuna's default evaluator)")
        lines += ["Parameter importances (Optuna's `get_param_importances` over the complete trials):", "",
                  markdown(pd.DataFrame({"parameter": list(importances), "importance": list(importances.values())}),
                           index=False), "", f"![parameter importances]({chart.name})", ""]
    return lines


def unfinished_section(context: ReportContext) -> list[str]:
    """The runs left out of every table (unfinished or failed)."""
    if context.runs.unfinished.empty:
        return []
    return ["## Runs not counted (unfinished or failed)", "",
            markdown(context.runs.unfinished[["run_id", "status", "cv_group", "fold"]], index=False), ""]


# the report, in order: a new table is one function here
SECTIONS: list[Section] = [summary_section, pooled_section, per_fold_section, per_class_section, comparison_section,
                           activation_map_section, search_section, unfinished_section]


def guarded(section: Section, context: ReportContext) -> list[str]:
    """A section's lines; a section that fails is a warning and a note in the report, never a failed report."""
    try:
        return section(context)
    except (MlflowException, ValueError, KeyError, TypeError, IndexError, OSError, RuntimeError) as error:
        if isinstance(error, OSError) and error.errno == 28:  # no space: the report itself cannot be written
            raise
        name = section.__name__.removesuffix("_section").replace("_", " ")
        detail = f"{type(error).__name__}: {str(error).splitlines()[0][:200]}" if str(error) else type(error).__name__
        log.warning("report section '%s' left out (%s)", name, detail)
        return [f"## {name.capitalize()}", "", f"_Left out: this section could not be made ({detail})._", ""]


def check_out_folder(out: Path) -> None:
    """`--out` must be a folder or a path where one can be made: one line naming the file in the way."""
    for place in (out, *out.parents):
        if place.exists():
            if not place.is_dir():
                what = "is a file" if place == out else f"lies under {place}, which is a file"
                raise LeukexpError(f"--out {out}: {what}; give a folder (e.g. --out reports/NAME)")
            return


def write_report(runs: StudyRuns, out: Path, experiment: str, compare: list[tuple[str, str]] | None = None,
                 metric: str = "test/acc", client: MlflowClient | None = None,
                 ensembles: list[list[str]] | None = None) -> Path:
    """Write report.md, one CSV per table and the PNG charts into `out` (figures from the store with `client`).

    Each of `ensembles` (a list of configuration selectors) adds a configuration: the mean of its members'
    probabilities per fold, compared with its best member.
    """
    out.mkdir(parents=True, exist_ok=True)
    pairs = []
    for selectors in ensembles or []:
        if client is None:
            raise LeukexpError("--ensemble needs the store's predictions (a client)")
        members = [pick_configuration(runs.folds, s) for s in selectors]
        rows = ensemble_folds(runs.folds, members, lambda run_id: _download_predictions(client, run_id, out))
        best = summary_table(runs.folds[runs.folds["config"].isin(members)], metric).loc[0, "configuration"]
        runs = StudyRuns(pd.concat([runs.folds, rows], ignore_index=True), runs.unfinished, runs.classes)
        pairs.append((rows["config"].iloc[0], best))
    context = ReportContext(runs, out, metric, list(compare or []), client, pairs, experiment)
    folds = runs.folds
    lines = [f"# leukexp report: {experiment}", "",
             f"{folds['config'].nunique()} configuration(s), {len(folds)} finished fold run(s)."
             f" Metric: `{metric}`; 95% CI: Student t over folds.", ""]
    for section in SECTIONS:
        lines += guarded(section, context)
    path = out / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def _download_predictions(client: MlflowClient, run_id: str, out: Path) -> Predictions:
    import tempfile

    with tempfile.TemporaryDirectory(dir=out) as tmp:
        return Predictions.from_frame(pd.read_csv(client.download_artifacts(run_id, PREDICTIONS_FILE, tmp)))


def main(argv: list[str] | None = None) -> int:
    """Command line entry of `leukexp-report`: 0 when the report was written."""
    parser = argparse.ArgumentParser(prog="leukexp-report", description="The study's tables from an MLflow store.")
    parser.add_argument("--experiment", required=True, help="MLflow experiment name (mlflow.experiment_name)")
    parser.add_argument("--tracking-uri", default=None,
                        help="store or server (default: $MLFLOW_TRACKING_URI, else ./mlruns/mlflow.db)")
    parser.add_argument("--filter", default=None, help="MLflow filter, e.g. \"tags.task='binary'\"")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: reports/EXPERIMENT)")
    parser.add_argument("--metric", default="test/acc", help="metric compared (default test/acc)")
    parser.add_argument("--ensemble", nargs="+", action="append", metavar="CONFIG", default=None,
                        help="average the probabilities of these configurations (each named by key=value tokens,"
                             " e.g. --ensemble model=efficientnet_lite0 model=efficientnet_lite2); repeatable")
    parser.add_argument("--register", metavar="NAME", default=None,
                        help="register the best configuration's model (its fold closest to the mean) as NAME")
    parser.add_argument("--compare", nargs=2, action="append", metavar=("A", "B"),
                        help="paired comparison of two configurations, each named by key=value tokens of its "
                             "cv_group, e.g. --compare head=mlp1 head=svm (repeatable)")
    args = parser.parse_args(argv)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
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
            known = ", ".join(sorted(c for c in runs.folds.columns if c.count("/") == 1 and c.startswith("test/")))
            raise LeukexpError(f"--metric {args.metric}: not logged by these runs (test metrics: {known})")
        out = args.out or Path("reports") / args.experiment
        check_out_folder(out)
        path = write_report(runs, out, args.experiment, [tuple(c) for c in args.compare or []], args.metric, client,
                            args.ensemble)
        print(f"wrote {path} ({runs.folds['config'].nunique()} configurations, {len(runs.folds)} fold runs,"
              f" {len(runs.unfinished)} not counted)")
        if args.register:
            from leukexp.registry import register

            experiment_id = client.get_experiment_by_name(args.experiment).experiment_id
            version, selection = register(client, experiment_id, args.register, args.metric)
            print(f"registered models:/{args.register}/{version}: {selection.run.data.tags.get('cv_group', '')};"
                  f" {selection.reason}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
