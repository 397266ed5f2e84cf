"""The report's sections, in order (a new table is one function here), and writing `report.md`."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from leukexp.csv_files import write_csv
from leukexp.errors import LeukexpError
from leukexp.report.runs import StudyRuns, download_predictions, download_table
from leukexp.report.tables import (
    bootstrap_table,
    ensemble_folds,
    external_table,
    markdown,
    paired_comparison,
    per_class_table,
    per_fold_tables,
    pick_configuration,
    pooled_accuracy_table,
    summary_table,
)
from leukexp.vocabulary import (
    ATTENTION_DIR,
    CAM_DIR,
    GROUPS_PARAM,
    INSTANCE,
    KIND_SEARCH,
    MANIFEST_FILE,
    ODDS_RATIOS_FILE,
    SEARCH_STORAGE_TAG,
    SEARCH_TAG,
    TEST_ACC,
    kind_filter,
)

log = logging.getLogger("leukexp")


@dataclass
class ReportContext:
    """What every report section reads: the runs, where files go, the metric and the requested comparisons."""

    runs: StudyRuns
    out: Path
    metric: str = TEST_ACC
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
    from leukexp.evaluation.plots import bar_chart

    summary = summary_table(context.folds, context.metric)
    write_csv(summary, context.out / "summary.csv")
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
    write_csv(pooled, context.out / "pooled_accuracy.csv")
    return ["## Accuracy over the pooled test predictions", "",
            "All folds' test samples together; 95% Wilson interval (it stays inside [0, 1], unlike the t interval"
            " over a few folds).", "", markdown(pooled, ("accuracy", "wilson"), index=False), ""]


def bootstrap_section(context: ReportContext) -> list[str]:
    """Bootstrap intervals over the pooled test predictions (patients resampled where known), beside the t interval."""
    if context.client is None or context.folds.empty:
        return []
    client, out = context.client, context.out
    table = bootstrap_table(context.folds, lambda run_id: download_predictions(client, run_id, out),
                            lambda run_id: download_table(client, run_id, MANIFEST_FILE, out),
                            lambda run_id: client.get_run(run_id).data.params.get(GROUPS_PARAM, "None")
                            not in ("", "None", "null"))
    if table.empty:
        return []
    write_csv(table, out / "bootstrap.csv")
    shown = pd.DataFrame({
        "configuration": table["configuration"], "resampled": table["resampled"], "units": table["units"],
        **{measure: [f"{m:.4f} [{lo:.4f}, {hi:.4f}]" for m, lo, hi in
                     zip(table[measure], table[f"{measure}_boot_low"], table[f"{measure}_boot_high"], strict=True)]
           for measure in ("acc", "balanced_acc", "f1_macro")},
        "acc t interval (folds)": [f"[{lo:.4f}, {hi:.4f}]" for lo, hi in
                                   zip(table["acc_t_low"], table["acc_t_high"], strict=True)]})
    return ["## Bootstrap intervals over the pooled test predictions", "",
            "Every fold's test images (or bags) together; 95% percentile bootstrap (2,000 resamples) of whole"
            " patients where `data.groups_csv` named them, of bags where the runs scored bags, of images otherwise."
            " The Student t interval over folds is beside it.", "",
            markdown(shown, index=False), ""]


def external_section(context: ReportContext) -> list[str]:
    """Internal test split against the external validation set (`evaluation.external`), paired over folds."""
    table = external_table(context.folds, context.metric)
    if table.empty:
        return []
    write_csv(table, context.out / "external.csv")
    return ["## External validation", "",
            f"`{context.metric}` on each fold's internal test split and on the external set, scored by the same"
            " fold model; difference = external - internal, paired over folds (t interval, paired t-test).", "",
            markdown(table, ("internal", "external", "difference", "ci95"), index=False), ""]


def per_fold_section(context: ReportContext) -> list[str]:
    """Tables 4.1-4.3: accuracy and loss per fold with their average, one table per configuration."""
    lines = ["## Accuracy and loss per fold", ""]
    for i, (config, table) in enumerate(per_fold_tables(context.folds).items(), start=1):
        table.index.name = "metric"
        write_csv(table, context.out / f"folds_{i:02d}.csv", index=True)
        lines += [f"### {config}", "", markdown(table, ("acc",)), ""]
    return lines


def per_class_section(context: ReportContext) -> list[str]:
    """Table 4.28: average precision, recall and F1 per class and configuration, and a per-class F1 chart."""
    from leukexp.evaluation.plots import grouped_bars

    classes = per_class_table(context.folds)
    write_csv(classes, context.out / "per_class.csv")
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
    write_csv(results, context.out / "comparisons.csv")
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


def bag_section(context: ReportContext) -> list[str]:
    """Bag runs (aggregators): per configuration, how well its weights find the witness instances, and the attention
    pictures of its fold closest to its mean (compare aggregators with `--compare head=abmil head=meanpool`)."""
    folds = context.folds
    witness = f"{INSTANCE}witness_auc"
    if folds.empty or (witness not in folds and f"{INSTANCE}witness_share" not in folds):
        return []
    summary = summary_table(folds, context.metric)
    rows = []
    lines = ["## Bags: what decided", "",
             "Per configuration: the bag metric, and `instance/witness_auc` (how well the instances' weights rank the"
             " positive-class instances inside positive test bags; 0.5 is no better than chance, uniform weights give"
             " 0.5). Pictures: the fold closest to the configuration's mean; its most and least attended instances of"
             " the surest right and wrong test bags (and, with tiles, the fields with their tiles' attention).", ""]
    pictures = []
    for index, best in summary.iterrows():
        runs = folds[folds["config"] == best["configuration"]]
        values = runs[witness].dropna() if witness in runs else pd.Series(dtype=float)
        rows.append({"configuration": best["configuration"], context.metric: best["mean"],
                     "witness_auc": values.mean() if len(values) else float("nan"), "folds": len(runs)})
        if context.client is None:
            continue
        run = runs.loc[(runs[context.metric] - best["mean"]).abs().sort_values(kind="stable").index[0]]
        for name in ("panel.png", "fields.png"):
            try:
                downloaded = context.client.download_artifacts(run["run_id"], f"{ATTENTION_DIR}/{name}",
                                                               str(context.out))
            except MlflowException:
                continue
            target = context.out / f"attention_{index + 1:02d}_{name}"
            Path(downloaded).replace(target)
            pictures += [f"{best['configuration']}, fold {run['fold']}:", "", f"![attention]({target.name})", ""]
    return [*lines, markdown(pd.DataFrame(rows), (), index=False), "", *pictures]


def differential_section(context: ReportContext) -> list[str]:
    """Differential runs: which cell types drive the diagnosis, per configuration and type the bag classifier's odds
    ratio per +1 % of the type's share (the median over folds of each fold's `odds_ratios.csv`, its bootstrap CI over
    training bags likewise)."""
    if context.client is None or context.folds.empty:
        return []
    blocks = []
    for config, runs in context.folds.groupby("config", sort=True):
        tables = []
        for run_id in runs["run_id"]:
            try:
                tables.append(download_table(context.client, run_id, ODDS_RATIOS_FILE, context.out))
            except (MlflowException, OSError):
                break  # not a differential run (its folds have none either)
        if not tables:
            continue
        pooled = pd.concat(tables).groupby(["type", "odds_of"], sort=False).agg(
            odds_ratio=("odds_ratio", "median"), ci_low=("ci_low", "median"), ci_high=("ci_high", "median"),
            folds=("odds_ratio", "size")).reset_index()
        pooled["per +1 %"] = [f"{r.odds_ratio:.3g} [{r.ci_low:.3g}, {r.ci_high:.3g}]" for r in pooled.itertuples()]
        blocks += [f"{config}:", "", markdown(pooled[["type", "odds_of", "per +1 %", "folds"]], (), index=False), ""]
    if not blocks:
        return []
    return ["## Which cell types drive the diagnosis", "",
            "Per differential configuration and cell type: the bag classifier's odds ratio of `odds_of` per +1 % of"
            " that type's share in a bag (the other shares held), the median over folds, with the median of the folds'"
            " 95 % bootstrap intervals over training bags. Above 1: more of the type, more likely `odds_of`.", "",
            *blocks]


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

    from leukexp.evaluation.plots import bar_chart, search_progress
    from leukexp.sweeps.journal import counted, journal
    from leukexp.sweeps.space import override_value

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
    write_csv(table, out / f"search_{slug}.csv")
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
SECTIONS: list[Section] = [summary_section, pooled_section, bootstrap_section, external_section, per_fold_section,
                           per_class_section, comparison_section, activation_map_section, bag_section,
                           differential_section, search_section, unfinished_section]


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


def write_report(runs: StudyRuns, out: Path, experiment: str, compare: list[tuple[str, str]] | None = None,
                 metric: str = TEST_ACC, client: MlflowClient | None = None,
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
        rows = ensemble_folds(runs.folds, members, lambda run_id: download_predictions(client, run_id, out))
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
