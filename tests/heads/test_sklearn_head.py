"""The scikit-learn head adapter: SVM, logistic regression and kNN from config; safe save and load."""

from pathlib import Path

import numpy as np
import pytest
import skops.io
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline

from conftest import Stub, blobs
from leukexp.errors import LeukexpError
from leukexp.heads.base import HeadContext, Split
from leukexp.heads.sklearn_head import SklearnHead, knn, refused_types, stored_types, svm
from leukexp.run.settings import head_from_plan
from leukexp.vocabulary import TRAIN_ACC, VAL_ACC


@pytest.mark.parametrize("name", ["svm", "logreg", "knn"])
def test_config_heads_learn_and_give_probabilities(compose_plan, name: str) -> None:
    head = head_from_plan(compose_plan(f"head={name}"), Stub(), num_classes=3, class_weights=None)
    assert isinstance(head, SklearnHead)
    x, y = blobs(90)
    vx, vy = blobs(90, seed=1)
    history = head.fit(Split(y, x), Split(vy, vx))
    assert list(history.columns) == ["epoch", TRAIN_ACC, VAL_ACC] and len(history) == 1
    probs = head.predict_proba(vx)
    assert probs.shape == (90, 3) and np.allclose(probs.sum(1), 1.0)
    assert (probs.argmax(1) == vy).mean() > 0.85


def test_knn_k_is_config_and_capped_at_the_training_size(compose_plan) -> None:
    head = head_from_plan(compose_plan("head=knn", "head.k=50"), Stub(), num_classes=3, class_weights=None)
    x, y = blobs(30)
    head.fit(Split(y, x), Split(y, x))
    assert head.pipeline.n_neighbors == 30


def test_a_class_missing_from_training_gets_probability_zero() -> None:
    x, y = blobs(60)
    keep = y != 1
    head = SklearnHead(HeadContext(8, 3), LogisticRegression())
    head.fit(Split(y[keep], x[keep]), Split(y[keep], x[keep]))
    assert head.predict_proba(x)[:, 1].max() == 0.0


def test_online_views_are_refused_with_a_clear_error() -> None:
    with pytest.raises(LeukexpError, match="augmentation=online"):
        SklearnHead(HeadContext(8, 3), LogisticRegression()).fit(Split(np.zeros(3)), Split(np.zeros(3)))


def test_save_and_load_round_trip(compose_plan, tmp_path: Path) -> None:
    head = head_from_plan(compose_plan("head=svm"), Stub(), 3, None)
    x, y = blobs(90)
    head.fit(Split(y, x), Split(y, x))
    spec = head.save(tmp_path)
    assert spec["weights"].endswith(".skops")
    assert np.allclose(SklearnHead.load(tmp_path, spec).predict_proba(x), head.predict_proba(x))


class Sneaky(LogisticRegression):
    """A classifier type from outside scikit-learn: loading must refuse it."""


def test_loading_refuses_types_outside_scikit_learn(tmp_path: Path) -> None:
    x, y = blobs(30)
    skops.io.dump(Sneaky().fit(x, y), tmp_path / "head.skops")
    with pytest.raises(LeukexpError, match=r"refused: holds .*Sneaky"):
        SklearnHead.load(tmp_path, {"kind": "sklearn", "weights": "head.skops", "num_classes": 3})
    (tmp_path / "junk.skops").write_bytes(b"not a zip")
    with pytest.raises(LeukexpError, match="not a saved scikit-learn head"):
        SklearnHead.load(tmp_path, {"kind": "sklearn", "weights": "junk.skops", "num_classes": 3})


def exec_chain(payload: Path) -> Pipeline:
    """A pipeline of scikit-learn and NumPy types only, whose last function is `exec`: running it touches `payload`."""
    from sklearn.preprocessing import FunctionTransformer

    command = f"open({str(payload)!r}, 'w').write('pwned')"
    return Pipeline([
        ("full", FunctionTransformer(np.full_like, kw_args={"fill_value": command, "dtype": object})),
        ("first", FunctionTransformer(np.take, kw_args={"indices": 0})),
        ("run", FunctionTransformer(exec)),
    ])


def test_a_model_of_trusted_types_whose_function_runs_code_is_refused(tmp_path: Path) -> None:
    payload = tmp_path / "payload-ran"
    skops.io.dump(exec_chain(payload), tmp_path / "head.skops")
    with pytest.raises(LeukexpError, match=r"refused: holds .*builtins\.exec"):
        SklearnHead.load(tmp_path, {"kind": "sklearn", "weights": "head.skops", "num_classes": 2})
    assert not payload.exists()


@pytest.mark.parametrize("make", ["logreg", "svm", "svm_rbf", "knn"])
def test_every_head_leukexp_writes_loads_under_the_allow_list(tmp_path: Path, make: str) -> None:
    from sklearn.linear_model import LogisticRegression

    x, y = blobs(60, classes=3)
    context = HeadContext(8, 3)
    head = {"logreg": lambda: SklearnHead(context, LogisticRegression()), "svm": lambda: svm(context),
            "svm_rbf": lambda: svm(context, kernel="rbf"), "knn": lambda: knn(context, k=3)}[make]()
    head.fit(Split(y, x), Split(y, x))
    spec = head.save(tmp_path)
    assert refused_types(stored_types(tmp_path / spec["weights"])) == []
    assert np.allclose(SklearnHead.load(tmp_path, spec).predict_proba(x), head.predict_proba(x))
