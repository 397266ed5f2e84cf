"""The run vocabulary: the predictions.csv schema written and read by the same code."""

import numpy as np
import pandas as pd

from leukexp.vocabulary import KIND_CV, Predictions, cv_metric, kind_filter


def test_predictions_round_trip_through_csv(tmp_path) -> None:
    probs = np.array([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]])
    written = Predictions(np.array(["a.png", "b.png"]), np.array([0, 3]), np.array([0, 1]), probs,
                          ["ALL", "AML", "HLT"])
    frame = written.to_frame()
    assert list(frame.columns) == ["file", "view", "label", "predicted", "p_ALL", "p_AML", "p_HLT"]
    assert list(frame["predicted"]) == ["ALL", "HLT"] and list(frame["label"]) == ["ALL", "AML"]
    frame.to_csv(tmp_path / "p.csv", index=False)
    read = Predictions.from_frame(pd.read_csv(tmp_path / "p.csv"))
    assert read.classes == written.classes and np.array_equal(read.labels, [0, 1]) and np.allclose(read.probs, probs)
    assert list(read.views) == [0, 3]


def test_names() -> None:
    assert kind_filter(KIND_CV) == "tags.`leukexp.kind` = 'cv'"
    assert cv_metric("test/acc", "mean") == "cv/test/acc_mean"


def test_the_names_users_see_are_pinned() -> None:
    """What the MLflow UI, filters, reports and saved searches show: the rest of the suite uses the constants, so a
    change of a name shows here, once, as the breaking change it is."""
    from leukexp import vocabulary as v

    assert (v.TEST_ACC, v.TEST_LOSS, v.TEST_COUNT, v.TEST_F1_MACRO, v.TEST_AUC_MACRO) == (
        "test/acc", "test/loss", "test/n", "test/f1_macro", "test/auc_macro")
    assert v.HISTORY_METRICS == ("train/loss", "train/acc", "val/loss", "val/acc") and v.EPOCH == "epoch"
    assert (v.BEST + v.SELECTION_METRIC, v.BEST_EPOCH, v.FOLDS_FINISHED_METRIC) == (
        "best/val/acc", "best/epoch", "cv/folds_finished")
    assert (v.KIND_TAG, v.NAME_TAG, v.PARENT_TAG, v.CV_GROUP_TAG, v.CLASSES_TAG) == (
        "leukexp.kind", "leukexp.name", "mlflow.parentRunId", "cv_group", "leukexp.classes")
    assert (v.REGISTRY_PARENT_TAG, v.REGISTRY_METRIC_TAG, v.REGISTRY_SELECTION_TAG) == (
        "leukexp.cv_parent", "leukexp.metric", "leukexp.selection")
    assert v.LABEL_TAGS == ("model", "head", "task", "protocol", "augmentation", "data")


def test_class_names_of_any_spelling_become_keys_mlflow_accepts() -> None:
    from mlflow.utils.validation import _validate_metric_name

    from leukexp.vocabulary import class_key_parts, metric_key_part, mlflow_key

    names = ["Band (BNE)+", "ig+", "a$", "{x}", "..", "Blast/Promyelocyte", "Ünï cödé", "ok"]
    parts = class_key_parts(names)
    assert parts[0] == "Band _BNE__" and parts[-1] == "ok" and parts[6] == "Ünï cödé"
    assert len(set(parts)) == len(parts), "distinct names stay distinct"
    for part in parts:
        _validate_metric_name(f"test/f1/{part}")  # raises for a key MLflow refuses
    assert class_key_parts(["a+", "a$"]) == ["a_", "a__2"]
    assert metric_key_part("") == "_" and mlflow_key("task.mapping.Band (BNE)+") == "task.mapping.Band _BNE__"
    assert mlflow_key("test/precision_macro") == "test/precision_macro", "ordinary keys are unchanged"
