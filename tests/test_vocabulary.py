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
