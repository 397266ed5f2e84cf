"""The steps after fitting: one interface, an ordered list, each step applying only where the plan asks for it."""

from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LogisticRegression

from conftest import PerImage, blobs
from leukexp.data.protocol import Samples
from leukexp.features.embed import Features
from leukexp.heads.base import HeadContext
from leukexp.heads.sklearn_head import SklearnHead
from leukexp.run.fit import fit_head
from leukexp.run.steps import (
    POST_FIT_STEPS,
    Calibrate,
    ChooseOperatingPoint,
    ExplainBags,
    MeasureTestSet,
    Outcome,
    PostFitStep,
    ScoreExternal,
    ScoreTestViews,
    WriteArtifacts,
    WriteDifferential,
)
from leukexp.vocabulary import RAW, TEMPERATURE, TEST_ACC, TEST_ECE, THRESHOLD


def outcome(calibration: str = "none", positive: str | None = None, classes: int = 3) -> Outcome:
    x, y = blobs(60, classes)
    vx, vy = blobs(30, classes, seed=1)
    tx, ty = blobs(30, classes, seed=2)
    frame = lambda labels: pd.DataFrame({"source": range(len(labels)), "view": 0, "label_index": labels})  # noqa: E731
    samples = Samples(train=frame(y), val=frame(vy), test=frame(ty))
    names = ["ALL", "HLT", "AML"][:classes]
    fold_data = PerImage(samples, names, positive)
    result = fit_head(SklearnHead(HeadContext(8, classes), LogisticRegression(C=0.05)), fold_data,
                      Features(x, vx, tx))
    plan = SimpleNamespace(evaluation=SimpleNamespace(calibrate=calibration == "temperature",
                                                      target_sensitivity=0.9))
    return Outcome(plan, fold_data, backbone=None, embeds=[], caches=[], result=result,  # type: ignore[arg-type]
                   raw_test_probs=result.test_probs)


def test_the_steps_are_one_interface_in_their_order() -> None:
    assert [type(step) for step in POST_FIT_STEPS] == [Calibrate, ChooseOperatingPoint, ScoreTestViews,
                                                       MeasureTestSet, ScoreExternal, WriteDifferential,
                                                       WriteArtifacts, ExplainBags]
    assert all(isinstance(step, PostFitStep) for step in POST_FIT_STEPS)


def test_steps_the_plan_does_not_ask_for_do_not_apply() -> None:
    state = outcome()
    assert not Calibrate().applies(state) and not ScoreTestViews().applies(state)
    assert not ScoreExternal().applies(state) and MeasureTestSet().applies(state)
    assert not ExplainBags().applies(state), "no bags: no attention"


def test_calibration_scales_val_and_test_and_the_metrics_keep_the_raw_values() -> None:
    state = outcome("temperature")
    raw = state.result.test_probs.copy()
    assert Calibrate().applies(state)
    Calibrate().run(state)
    assert state.result.temperature != 1.0
    assert not np.allclose(state.result.test_probs, raw) and np.allclose(state.raw_test_probs, raw)
    assert np.array_equal(state.result.test_probs.argmax(1), raw.argmax(1)), "a temperature keeps the ranking"
    MeasureTestSet().run(state)
    assert state.metrics[TEMPERATURE] == pytest.approx(state.result.temperature)
    assert TEST_ECE + RAW in state.metrics and TEST_ECE in state.metrics


def test_the_operating_point_is_chosen_for_a_task_with_a_positive_class_only() -> None:
    binary = outcome(positive="ALL", classes=2)
    ChooseOperatingPoint().run(binary)
    MeasureTestSet().run(binary)
    assert binary.result.operating_point is not None and THRESHOLD in binary.metrics
    several = outcome()
    ChooseOperatingPoint().run(several)
    MeasureTestSet().run(several)
    assert several.result.operating_point is None and THRESHOLD not in several.metrics
    assert several.metrics[TEST_ACC] == (several.result.test_probs.argmax(1) == several.fold_data.samples.test[
        "label_index"].to_numpy()).mean()
