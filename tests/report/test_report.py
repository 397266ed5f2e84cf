"""The report's sections on in-memory runs, and `leukexp-report` on a real store."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from leukexp.commands.report import main
from leukexp.errors import LeukexpError
from leukexp.report.runs import StudyRuns, configuration_labels
from leukexp.report.sections import SECTIONS, write_report
from leukexp.report.tables import (
    bootstrap_table,
    external_table,
    paired_comparison,
    per_class_table,
    per_fold_tables,
    pick_configuration,
    pooled_accuracy_table,
    summary_table,
)
from leukexp.tracking.store import RunLogger
from leukexp.vocabulary import (
    BEST,
    EXTERNAL,
    KIND_TAG,
    TEST_ACC,
    TEST_AUC_MACRO,
    TEST_COUNT,
    TEST_LOSS,
    VAL_ACC,
    Predictions,
)


def folds() -> pd.DataFrame:
    rows = []
    for group, accuracies in {"head=mlp1 model=m": [0.8, 0.9, 0.85], "head=svm model=m": [0.9, 1.0, 0.95]}.items():
        for i, acc in enumerate(accuracies):
            rows.append({"cv_group": group, "fold": f"f{i}", TEST_ACC: acc, TEST_COUNT: 20, TEST_LOSS: 1 - acc,
                         "test/f1_macro": acc, TEST_AUC_MACRO: acc, "test/f1/ALL": acc, "test/precision/ALL": acc,
                         "test/recall/ALL": acc, BEST + VAL_ACC: 0.7})
    frame = pd.DataFrame(rows)
    return frame.assign(config=configuration_labels(frame["cv_group"]))


def test_labels_keep_only_what_differs() -> None:
    assert sorted(folds()["config"].unique()) == ["head=mlp1", "head=svm"]


def test_summary_pooled_and_per_fold_tables() -> None:
    table = summary_table(folds())
    assert list(table["configuration"]) == ["head=svm", "head=mlp1"]
    assert table.loc[0, "mean"] == pytest.approx(0.95) and table.loc[0, "ci95_high"] > 1.0
    pooled = pooled_accuracy_table(folds()).set_index("configuration")
    assert pooled.loc["head=svm", "correct"] == 57 and pooled.loc["head=svm", "samples"] == 60
    assert pooled.loc["head=svm", "wilson_high"] <= 1.0
    per_fold = per_fold_tables(folds())["head=mlp1"]
    assert per_fold.loc["test_acc", "Average"] == pytest.approx(0.85)
    assert per_class_table(folds()).set_index("configuration").loc["head=svm", "f1"] == pytest.approx(0.95)


def test_external_table_pairs_internal_and_external_over_folds() -> None:
    table = folds()
    table[EXTERNAL + "acc"] = table[TEST_ACC] - np.array([0.2, 0.25, 0.3] * 2)
    rows = external_table(table).set_index("configuration")
    assert rows.loc["head=svm", "internal"] == pytest.approx(0.95)
    assert rows.loc["head=svm", "external"] == pytest.approx(0.7)
    assert rows.loc["head=svm", "difference"] == pytest.approx(-0.25)
    assert rows.loc["head=svm", "ci95_high"] < 0 and rows.loc["head=svm", "p_value"] < 0.05
    assert external_table(folds()).empty, "runs without an external set have no such table"


def bootstrap_runs(groups: dict[str, str] | None) -> tuple[pd.DataFrame, dict[str, Predictions], pd.DataFrame]:
    """Two folds of 40 test images, 30 right; with `groups`, images belong to 8 patients."""
    rng = np.random.default_rng(0)
    predictions, files = {}, []
    for fold in ("a", "b"):
        names = [f"{fold}{i}.png" for i in range(40)]
        files += names
        labels = rng.integers(0, 2, 40)
        called = np.where(np.arange(40) < 30, labels, 1 - labels)
        predictions[fold] = Predictions(np.array(names), np.zeros(40, int), labels, np.eye(2)[called], ["x", "y"])
    manifest = pd.DataFrame({"file": files, "group": [groups.get(f, f) for f in files] if groups else files})
    table = pd.DataFrame({"config": ["c", "c"], "fold": ["f0", "f1"], "run_id": ["a", "b"], TEST_ACC: [0.75, 0.75]})
    return table, predictions, manifest


def test_bootstrap_table_resamples_images_or_patients() -> None:
    table, predictions, manifest = bootstrap_runs(None)
    by_image = bootstrap_table(table, predictions.__getitem__, lambda run_id: manifest, lambda run_id: False,
                               resamples=500).iloc[0]
    assert by_image["acc"] == pytest.approx(0.75) and by_image["resampled"] == "images" and by_image["units"] == 80
    assert by_image["acc_boot_low"] < 0.75 < by_image["acc_boot_high"]
    # 8 patients of 10 images each, each patient all right or all wrong: far fewer independent units, wider interval
    files = list(manifest["file"])
    patients = {f: f"p{i // 10}" for i, f in enumerate(files[:30] + files[40:70] + files[30:40] + files[70:])}
    table, predictions, manifest = bootstrap_runs(patients)
    by_patient = bootstrap_table(table, predictions.__getitem__, lambda run_id: manifest, lambda run_id: True,
                                 resamples=500).iloc[0]
    assert by_patient["resampled"] == "patients" and by_patient["units"] == 8
    width = by_patient["acc_boot_high"] - by_patient["acc_boot_low"]
    assert width > 1.5 * (by_image["acc_boot_high"] - by_image["acc_boot_low"])


def test_comparison_and_selection() -> None:
    result = paired_comparison(folds(), "head=svm", "head=mlp1")
    assert result["mean_difference"] == pytest.approx(0.1) and result["shared_folds"] == 3
    assert pick_configuration(folds(), "head=svm") == "head=svm"
    with pytest.raises(LeukexpError, match="matches 2 configurations"):
        pick_configuration(folds(), "model=m")


def test_report_has_every_section(tmp_path: Path) -> None:
    runs = StudyRuns(folds(), pd.DataFrame(), {})
    path = write_report(runs, tmp_path, "demo", compare=[("head=svm", "head=mlp1")])
    text = path.read_text()
    for heading in ("## Summary", "## Accuracy over the pooled", "## Accuracy and loss per fold",
                    "## Average precision", "## Paired comparisons"):
        assert heading in text
    assert len(SECTIONS) == 12  # the search, bag and differential sections show only for experiments that hold them
    assert "## Bags" not in text, "no bag runs: no bag section"
    assert {"summary.csv", "pooled_accuracy.csv", "comparisons.csv", "comparison.png"} <= {
        p.name for p in tmp_path.iterdir()}


def test_bag_runs_get_a_section_on_what_decided(tmp_path: Path) -> None:
    frame = folds()
    frame["instance/witness_auc"] = np.where(frame["config"] == "head=svm", 0.5, 0.9)
    text = write_report(StudyRuns(frame, pd.DataFrame(), {}), tmp_path, "demo").read_text()
    section = text.split("## Bags: what decided", 1)[1]
    assert "| head=svm | 0.9500 | 0.5000 | 3 |" in section and "| head=mlp1 | 0.8500 | 0.9000 | 3 |" in section


def test_differential_runs_get_the_odds_ratio_of_each_cell_type(tmp_path: Path) -> None:
    from mlflow.exceptions import MlflowException

    from leukexp.csv_files import write_csv
    from leukexp.report.sections import ReportContext, differential_section

    frame = folds()
    frame["run_id"] = frame["config"].str.removeprefix("head=") + "-" + frame["fold"]
    ratios = {fold: pd.DataFrame({"type": ["blast", "neutrophil"], "odds_of": "ALL", "odds_ratio": [1.2 + d, 0.9],
                                  "ci_low": [1.1 + d, 0.8], "ci_high": [1.4 + d, 1.0], "rounds": 200})
              for fold, d in (("f0", 0.0), ("f1", 0.1), ("f2", 0.2))}

    class Store:  # the svm runs are not differential runs: no odds_ratios.csv
        def download_artifacts(self, run_id: str, name: str, dst: str) -> str:
            head, fold = run_id.split("-")
            if head == "svm":
                raise MlflowException(f"{name}: no such artifact")
            write_csv(ratios[fold], Path(dst) / name)
            return str(Path(dst) / name)

    lines = differential_section(ReportContext(StudyRuns(frame, pd.DataFrame(), {}), tmp_path, client=Store()))
    text = "\n".join(lines)
    assert text.startswith("## Which cell types drive the diagnosis") and "head=svm" not in text
    assert "| blast | ALL | 1.3 [1.2, 1.5] | 3 |" in text and "| neutrophil | ALL | 0.9 [0.8, 1] | 3 |" in text
    assert differential_section(ReportContext(StudyRuns(frame, pd.DataFrame(), {}), tmp_path)) == [], "no store"


def test_cli_exits_0_and_honours_mlflow_tracking_uri(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture) -> None:
    uri = f"sqlite:///{tmp_path}/store.db"
    logger = RunLogger(uri, "demo", str(tmp_path / "artifacts"))
    for fold, acc in (("f0", 0.8), ("f1", 0.9)):
        logger.start(fold, {KIND_TAG: "fold", "fold": fold, "cv_group": "head=mlp1", "head": "mlp1"})
        logger.log_steps([(0, {TEST_ACC: acc, TEST_COUNT: 10.0})])
        logger.end()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.chdir(tmp_path)
    assert main(["--experiment", "demo", "--out", str(tmp_path / "report")]) == 0
    assert "1 configurations, 2 fold runs" in capsys.readouterr().out
    assert (tmp_path / "report" / "report.md").is_file()
    with pytest.raises(SystemExit) as exit_info:
        main(["--experiment", "nope"])
    assert exit_info.value.code == 2 and "not in this store" in capsys.readouterr().err
    assert np.isclose(pd.read_csv(tmp_path / "report" / "summary.csv").loc[0, "mean"], 0.85)


def test_an_ensemble_averages_its_members_per_fold() -> None:
    from leukexp.report.tables import ensemble_folds
    from leukexp.vocabulary import Predictions

    frame = folds()
    frame["run_id"] = [f"{c}-{f}" for c, f in zip(frame["config"], frame["fold"], strict=True)]
    labels = np.array([0, 1, 1])
    made = {"head=mlp1": np.array([[0.9, 0.1], [0.6, 0.4], [0.2, 0.8]]),
            "head=svm": np.array([[0.7, 0.3], [0.2, 0.8], [0.6, 0.4]])}

    def predictions(run_id: str) -> Predictions:
        config = run_id.rsplit("-", 1)[0]
        return Predictions(np.array(["a", "b", "c"]), np.zeros(3, int), labels, made[config], ["ALL", "HLT"])

    rows = ensemble_folds(frame, ["head=mlp1", "head=svm"], predictions)
    assert list(rows["fold"]) == ["f0", "f1", "f2"] and rows["config"].iloc[0] == "ensemble(head=mlp1 + head=svm)"
    # mean probabilities [[.8,.2],[.4,.6],[.4,.6]] -> all three right; each member alone gets two of three
    assert rows[TEST_ACC].tolist() == [1.0, 1.0, 1.0]
    both = pd.concat([frame, rows], ignore_index=True)
    assert pick_configuration(both, "head=svm") == "head=svm", "a member's selector does not match the ensemble"

    def mismatched(run_id: str) -> Predictions:
        p = predictions(run_id)
        return Predictions(p.files[::-1] if "svm" in run_id else p.files, p.views, p.labels, p.probs, p.classes)

    with pytest.raises(LeukexpError, match="did not test the same samples"):
        ensemble_folds(frame, ["head=mlp1", "head=svm"], mismatched)


@pytest.mark.parametrize("where", ["file", "under_file"])
def test_out_naming_a_file_is_one_line(tmp_path: Path, where: str) -> None:
    from leukexp.commands.report import check_out_folder

    (tmp_path / "notes.txt").write_text("mine")
    out = tmp_path / "notes.txt" if where == "file" else tmp_path / "notes.txt" / "report"
    with pytest.raises(LeukexpError, match=r"--out .*notes\.txt.*(is a file|which is a file); give a folder"):
        check_out_folder(out)
    assert (tmp_path / "notes.txt").read_text() == "mine"
    check_out_folder(tmp_path / "new" / "report")  # a folder that can be made is fine


def test_a_failing_section_is_a_note_not_a_failed_report(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from leukexp.report.sections import guarded

    def broken(context: object) -> list[str]:
        raise ValueError("all input arrays must have the same shape")

    lines = guarded(broken, None)  # type: ignore[arg-type]
    assert lines[0] == "## Broken" and "could not be made (ValueError" in lines[2]
    assert "report section 'broken' left out" in caplog.text
