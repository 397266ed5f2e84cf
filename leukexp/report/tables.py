"""The report's tables from finished fold runs: per configuration, per fold, per class, pooled, paired, ensembles."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd

from leukexp.errors import LeukexpError
from leukexp.evaluation.metrics import classification_metrics
from leukexp.evaluation.stats import (
    BOOTSTRAP_MEASURES,
    cluster_bootstrap,
    paired_difference,
    spread,
    t_interval,
    wilson_interval,
)
from leukexp.vocabulary import (
    BEST,
    EXTERNAL,
    TEST,
    TEST_ACC,
    TEST_AUC_MACRO,
    TEST_COUNT,
    TEST_F1_MACRO,
    TEST_LOSS,
    TRAIN_ACC,
    TRAIN_LOSS,
    VAL_ACC,
    VAL_LOSS,
    Predictions,
)

# the thesis's per-fold rows (Tables 4.1-4.3) and where each comes from
FOLD_ROWS = {"test_acc": TEST_ACC, "val_acc": BEST + VAL_ACC, "trn_acc": BEST + TRAIN_ACC,
             "test_loss": TEST_LOSS, "val_loss": BEST + VAL_LOSS, "trn_loss": BEST + TRAIN_LOSS}


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


def summary_table(folds: pd.DataFrame, metric: str = TEST_ACC) -> pd.DataFrame:
    """Every configuration: folds, mean +- std and 95% t interval of the metric over folds, macro F1, AUC, loss."""
    rows = []
    for config, runs in folds.groupby("config", sort=True):
        values = runs[metric].dropna().to_numpy(dtype=float)
        interval = t_interval(values)
        rows.append({"configuration": config, "folds": len(values), "mean": interval.mean, "std": spread(values),
                     "ci95_low": interval.low, "ci95_high": interval.high,
                     "f1_macro": runs.get(TEST_F1_MACRO, pd.Series(dtype=float)).mean(),
                     "auc_macro": runs.get(TEST_AUC_MACRO, pd.Series(dtype=float)).mean(),
                     "loss": runs.get(TEST_LOSS, pd.Series(dtype=float)).mean()})
    return pd.DataFrame(rows).sort_values("mean", ascending=False).reset_index(drop=True)


def pooled_accuracy_table(folds: pd.DataFrame) -> pd.DataFrame:
    """Accuracy over the pooled test predictions of all folds with its Wilson interval (stays inside [0, 1]).

    The pooled count of correct predictions is recovered from each fold's accuracy and test-set size
    (`test/n`); configurations whose runs do not record the size are left out.
    """
    if TEST_COUNT not in folds:
        return pd.DataFrame(columns=["configuration", "correct", "samples", "accuracy", "wilson_low", "wilson_high"])
    rows = []
    for config, runs in folds.groupby("config", sort=True):
        known = runs.dropna(subset=[TEST_ACC, TEST_COUNT])
        if known.empty:
            continue
        correct = round(float((known[TEST_ACC] * known[TEST_COUNT]).sum()))
        samples = int(known[TEST_COUNT].sum())
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


def paired_comparison(folds: pd.DataFrame, first: str, second: str, metric: str = TEST_ACC) -> dict[str, object]:
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


def bootstrap_table(folds: pd.DataFrame, predictions: Callable[[str], Predictions],
                    manifest: Callable[[str], pd.DataFrame], by_patient: Callable[[str], bool],
                    resamples: int = 2000) -> pd.DataFrame:
    """Per configuration: accuracy, balanced accuracy and macro F1 over all folds' pooled test predictions with
    percentile bootstrap intervals, resampling the manifest's groups: patients where the run named them
    (`by_patient(run_id)`: it had `data.groups_csv`), bags where the runs scored bags (`bags=images|tiles`), else
    images (copies of one image stay together); the t interval over folds beside them.

    `predictions(run_id)` and `manifest(run_id)` read a fold run's `predictions.csv` and `manifest.csv`.
    """
    rows = []
    for config, runs in folds.groupby("config", sort=True):
        if not all(runs["run_id"].astype(str).str.len() > 0):  # an ensemble row has no run of its own
            continue
        labels: list[np.ndarray] = []
        predicted: list[np.ndarray] = []
        clusters: list[np.ndarray] = []
        patients, bags = False, False
        for run_id in runs["run_id"]:
            table, split = predictions(str(run_id)), manifest(str(run_id))
            groups = dict(zip(split["file"], split["group"].astype(str), strict=True))
            patients |= by_patient(str(run_id))
            bags |= not set(map(str, table.files)) & set(groups)  # a bag run: its predictions name bags
            labels.append(table.labels)
            predicted.append(table.probs.argmax(1))
            clusters.extend(groups.get(f, f) for f in table.files)
            n_classes = len(table.classes)
        intervals = cluster_bootstrap(np.concatenate(labels), np.concatenate(predicted), np.asarray(clusters),
                                      n_classes, resamples)
        t = t_interval(runs[TEST_ACC].dropna().to_numpy(dtype=float))
        row: dict[str, object] = {"configuration": config, "folds": len(runs),
                                  "resampled": "bags" if bags else "patients" if patients else "images",
                                  "units": len(set(clusters))}
        for measure in BOOTSTRAP_MEASURES:
            interval = intervals[measure]
            row |= {measure: interval.mean, f"{measure}_boot_low": interval.low, f"{measure}_boot_high": interval.high}
        row |= {"acc_t_low": t.low, "acc_t_high": t.high}
        rows.append(row)
    return pd.DataFrame(rows)


def external_table(folds: pd.DataFrame, metric: str = TEST_ACC) -> pd.DataFrame:
    """Per configuration with an external set (`evaluation.external`): the metric on the internal test split and on
    the external set, and their difference paired over folds (external - internal, t interval, paired t-test)."""
    external = EXTERNAL + metric.removeprefix(TEST)
    if external not in folds:
        return pd.DataFrame()
    rows = []
    for config, runs in folds.groupby("config", sort=True):
        known = runs.dropna(subset=[metric, external]).set_index("fold")
        if known.empty:
            continue
        result = paired_difference(known[external], known[metric])
        rows.append({"configuration": config, "folds": len(known), "internal": known[metric].mean(),
                     "external": known[external].mean(), "difference": result.mean_difference,
                     "ci95_low": result.ci95_low, "ci95_high": result.ci95_high, "p_value": result.p_value,
                     "verdict": result.verdict})
    return pd.DataFrame(rows)
