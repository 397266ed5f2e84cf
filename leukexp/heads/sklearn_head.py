"""The adapter for scikit-learn heads: any classifier named by `_target_` (SVM, logistic regression, kNN...)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, clone
from sklearn.calibration import CalibratedClassifierCV
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC, LinearSVC

from leukexp.errors import LeukexpError
from leukexp.heads.base import Head, HeadContext, Split, accuracy, head_threads, history_frame
from leukexp.vocabulary import EPOCH, TRAIN_ACC, VAL_ACC

WEIGHTS = "head.skops"
# What a saved head may hold, by skops node kind: the estimators leukexp's heads write, arrays, plain containers
# and values. No function, method or partial node of any module (a `FunctionTransformer(func=builtins.exec)` is
# made of "trusted" types, and its function is the payload), no class outside this list.
_VALUES = {"builtins.str", "builtins.int", "builtins.float", "builtins.bool", "builtins.NoneType"}
_NUMPY = {f"numpy.{name}" for name in ("ndarray", "float64", "float32", "float16", "int64", "int32", "int16", "int8",
                                       "uint8", "bool_", "str_", "dtype")}
SAFE_ESTIMATORS = {
    "sklearn.pipeline.Pipeline", "sklearn.preprocessing._data.StandardScaler",
    "sklearn.linear_model._logistic.LogisticRegression", "sklearn.svm._classes.LinearSVC", "sklearn.svm._classes.SVC",
    "sklearn.calibration.CalibratedClassifierCV", "sklearn.calibration._CalibratedClassifier",
    "sklearn.calibration._SigmoidCalibration", "sklearn.isotonic.IsotonicRegression",
    "sklearn.neighbors._classification.KNeighborsClassifier", "sklearn.neighbors._kd_tree.KDTree",
    "sklearn.neighbors._ball_tree.BallTree",
}
SAFE_NODES: dict[str, set[str]] = {
    "ObjectNode": SAFE_ESTIMATORS | {f"numpy.dtypes.{t}DType" for t in ("Float64", "Float32", "Int64", "Int32")},
    "NdArrayNode": _NUMPY, "DictNode": {"builtins.dict"}, "ListNode": {"builtins.list"},
    "TupleNode": {"builtins.tuple"}, "JsonNode": _VALUES, "TypeNode": _VALUES | _NUMPY,
}


def stored_types(path: Path) -> set[tuple[str, str]]:
    """Every (skops node kind, `module.Class`) a skops file would build, read from its schema without loading it."""
    import json
    import zipfile

    with zipfile.ZipFile(path) as archive:
        schema = json.loads(archive.read("schema.json"))
    found: set[tuple[str, str]] = set()
    stack: list[object] = [schema]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            if "__class__" in node or "__loader__" in node:
                found.add((str(node.get("__loader__")), f"{node.get('__module__')}.{node.get('__class__')}"))
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return found


def refused_types(types: set[tuple[str, str]]) -> list[str]:
    """The stored types outside `SAFE_NODES` (`module.Class (node kind)`)."""
    return sorted(f"{name} ({loader})" for loader, name in types if name not in SAFE_NODES.get(loader, set()))


class SklearnHead(Head, kind="sklearn"):
    """A scikit-learn classifier on (optionally standardized) features; fitted once, no epochs.

    Args:
        context: the problem's shape (scikit-learn heads always give one probability per class).
        estimator: any classifier with `fit` and `predict_proba`, e.g. `sklearn.linear_model.LogisticRegression`.
        standardize: put a `StandardScaler` in front of it.
    """

    best_epoch = None  # fitted at once: no epochs

    def __init__(self, context: HeadContext, estimator: BaseEstimator, standardize: bool = True) -> None:
        if not hasattr(estimator, "predict_proba"):
            raise LeukexpError(f"head.estimator {type(estimator).__name__} has no predict_proba; use a classifier"
                               " that gives probabilities (e.g. SVC(probability=True))")
        check_estimator(estimator)
        self.num_classes = context.num_classes
        # scikit-learn heads' matrices are small: `auto` is one BLAS thread (parallel work is joblib's `n_jobs`)
        self.cpu_threads = head_threads(context.training.cpu_threads, 0, 1)
        self.pipeline: Pipeline | BaseEstimator = (make_pipeline(StandardScaler(), clone(estimator)) if standardize
                                                   else clone(estimator))

    def fit(self, train: Split, val: Split) -> pd.DataFrame:
        """Fit on the training features; the history is one row of train and val accuracy."""
        if train.features is None:
            raise LeukexpError("a scikit-learn head needs cached training features: not augmentation=online")
        from threadpoolctl import threadpool_limits

        check_calibration_folds(self.pipeline, train.labels)
        with threadpool_limits(limits=self.cpu_threads):  # BLAS threads, as `training.head_threads` (None: as is)
            self.pipeline.fit(train.features, train.labels)
        row = {EPOCH: 0.0, TRAIN_ACC: accuracy(self.predict_proba(train.features), train.labels)}
        if val.features is not None and len(val.labels):
            row[VAL_ACC] = accuracy(self.predict_proba(val.features), val.labels)
        return history_frame([row])

    def predict_proba(self, features: np.ndarray) -> np.ndarray:
        """Class probabilities (N, classes); a class absent from training gets probability 0."""
        probs = self.pipeline.predict_proba(features)
        full = np.zeros((len(features), self.num_classes))
        full[:, np.asarray(self.pipeline.classes_).astype(int)] = probs
        return full

    def class_scores(self) -> Any | None:
        """For linear estimators (logistic regression, a calibrated linear SVM): their decision function,
        standardization folded in, as a torch linear layer. None for other estimators."""
        weights = linear_weights(self.pipeline, self.num_classes)
        if weights is None:
            return None
        import torch

        matrix, bias = weights
        layer = torch.nn.Linear(matrix.shape[1], matrix.shape[0])
        with torch.no_grad():
            layer.weight.copy_(torch.as_tensor(matrix, dtype=torch.float32))
            layer.bias.copy_(torch.as_tensor(bias, dtype=torch.float32))
        return layer.eval()

    def save(self, folder: Path) -> dict[str, Any]:
        """The fitted estimator in skops format (loads without running code)."""
        import skops.io

        folder.mkdir(parents=True, exist_ok=True)
        skops.io.dump(self.pipeline, folder / WEIGHTS)
        return {"kind": self.kind, "weights": WEIGHTS, "num_classes": self.num_classes}

    @classmethod
    def load(cls, folder: Path, spec: dict[str, Any]) -> SklearnHead:
        """Load the estimator if every object in the file is one `SAFE_NODES` allows (checked before loading)."""
        import skops.io

        path = folder / str(spec["weights"])
        try:
            refused = refused_types(stored_types(path))
            untrusted = skops.io.get_untrusted_types(file=path)
        except Exception as error:  # not a skops file
            raise LeukexpError(f"{path}: not a saved scikit-learn head ({type(error).__name__})") from error
        if refused:
            raise LeukexpError(f"{path}: refused: holds {', '.join(refused[:4])}; leukexp loads only the estimators"
                               " and arrays its own heads write (no functions, no other classes)")
        head = cls.__new__(cls)
        head.num_classes = int(spec["num_classes"])
        head.cpu_threads = None
        head.pipeline = skops.io.load(path, trusted=untrusted)
        head.best_epoch = None
        return head


def linear_weights(model: Any, num_classes: int) -> tuple[np.ndarray, np.ndarray] | None:
    """(W, b) with scores = features @ W.T + b for a (scaled) linear classifier, one row per class."""
    steps = [step for _, step in model.steps] if isinstance(model, Pipeline) else [model]
    scaler = steps[0] if isinstance(steps[0], StandardScaler) else None
    estimator = steps[-1]
    if hasattr(estimator, "coef_"):
        coef, intercept = np.asarray(estimator.coef_), np.asarray(estimator.intercept_)
    elif isinstance(estimator, CalibratedClassifierCV) and all(
            hasattr(c.estimator, "coef_") for c in estimator.calibrated_classifiers_):
        coef = np.mean([c.estimator.coef_ for c in estimator.calibrated_classifiers_], axis=0)
        intercept = np.mean([c.estimator.intercept_ for c in estimator.calibrated_classifiers_], axis=0)
    else:
        return None
    if coef.shape[0] == 1:  # binary: one decision function for the second class
        coef, intercept = np.vstack([-coef, coef]), np.concatenate([-intercept, intercept])
    matrix = np.zeros((num_classes, coef.shape[1]))
    bias = np.full(num_classes, -1e3)  # a class never seen in training scores low
    present = np.asarray(estimator.classes_).astype(int)
    matrix[present], bias[present] = coef, intercept
    if scaler is not None:
        scale = np.where(scaler.scale_ == 0, 1.0, scaler.scale_)
        matrix = matrix / scale
        bias = bias - matrix @ scaler.mean_
    return matrix, bias


def check_estimator(estimator: BaseEstimator) -> None:
    """scikit-learn's own parameter checks on the estimator and every estimator inside it, before fitting."""
    nested = [v for v in estimator.get_params(deep=True).values() if isinstance(v, BaseEstimator)]
    for part in (estimator, *nested):
        validate = getattr(part, "_validate_params", None)
        if validate is None:
            continue
        try:
            validate()
        except (ValueError, TypeError) as error:
            raise LeukexpError(f"head: {str(error).splitlines()[0]}") from error


def sklearn_head(context: HeadContext, estimator: BaseEstimator, standardize: bool = True,
                 C: float | None = None) -> SklearnHead:  # noqa: N803
    """Any scikit-learn classifier as a head (`head=logreg`, `head=knn`, or your own YAML).

    `C` (when given) sets the estimator's own `C`: `head.C` then names the regularization of `head=logreg` and
    `head=svm` alike (one search dimension over both).
    """
    if C is not None:
        if "C" not in estimator.get_params():
            raise LeukexpError(f"head.C={C!r}: {type(estimator).__name__} has no C parameter")
        estimator = clone(estimator).set_params(C=C)
    return SklearnHead(context, estimator, standardize)


def check_calibration_folds(pipeline: Pipeline | BaseEstimator, labels: np.ndarray) -> None:
    """A calibrated estimator's folds must fit the smallest class of the training split: one line naming the key and
    what would do, instead of scikit-learn's error."""
    estimator = pipeline.steps[-1][1] if isinstance(pipeline, Pipeline) else pipeline
    folds = getattr(estimator, "cv", None) if isinstance(estimator, CalibratedClassifierCV) else None
    if not isinstance(folds, int) or not len(labels):
        return
    present = np.bincount(labels)
    fewest = int(present[present > 0].min())
    if fewest < folds:
        raise LeukexpError(f"head.calibration_folds={folds}: a class has {fewest} training image(s) in this fold, too"
                           f" few to calibrate in {folds} folds; use head.calibration_folds={max(2, fewest)} (at"
                           " least 2), add images or lower fold.n_splits" if fewest >= 2 else
                           f"head.calibration_folds={folds}: a class has {fewest} training image(s) in this fold;"
                           " calibration needs 2: add images or lower fold.n_splits")


def svm(context: HeadContext, C: float = 1.0, kernel: str = "linear", calibration_folds: int = 3,  # noqa: N803
        dual: bool = True, max_iter: int = 1000, seed: int = 0, n_jobs: int | None = None) -> SklearnHead:
    """The study's SVM head: standardized features -> (Linear)SVC -> probability calibration.

    Args:
        context: the problem's shape.
        C: regularization strength (inverse).
        kernel: `linear` uses LinearSVC inside CalibratedClassifierCV (the study's choice);
            `rbf`, `poly` or `sigmoid` use SVC inside it.
        calibration_folds: cross-validation folds of the probability calibration.
        dual: solve LinearSVC's dual problem; on standardized deep features it is 10-15x faster than the
            primal that scikit-learn's `auto` picks when there are more samples than features.
        max_iter: LinearSVC's iteration cap (1,000: the study's `LinearSVC()`, scikit-learn's default); kernel SVMs
            (libsvm) run until they converge.
        seed: random state.
        n_jobs: calibration folds fitted in parallel (joblib; -1: every core, None: one at a time).
    """
    if kernel not in ("linear", "rbf", "poly", "sigmoid"):
        raise LeukexpError(f"head.kernel={kernel!r}: expected linear, rbf, poly or sigmoid")
    if isinstance(calibration_folds, bool) or not isinstance(calibration_folds, int) or calibration_folds < 2:
        raise LeukexpError(f"head.calibration_folds={calibration_folds!r}: expected a whole number >= 2")
    machine = (LinearSVC(C=C, dual=dual, max_iter=max_iter, random_state=seed) if kernel == "linear"
               else SVC(C=C, kernel=kernel, random_state=seed))
    return SklearnHead(context, CalibratedClassifierCV(machine, cv=calibration_folds, n_jobs=n_jobs), standardize=True)


class KNNHead(SklearnHead):
    """k nearest neighbours; k is capped at the number of training samples (small studies, tests)."""

    def fit(self, train: Split, val: Split) -> pd.DataFrame:
        """Fit with k = min(k, training samples)."""
        estimator = self.pipeline.steps[-1][1] if isinstance(self.pipeline, Pipeline) else self.pipeline
        if train.features is not None and estimator.n_neighbors > len(train.labels):
            estimator.set_params(n_neighbors=len(train.labels))
        return super().fit(train, val)


def knn(context: HeadContext, k: int = 20, metric: str = "cosine", weights: str = "distance",
        standardize: bool = False) -> SklearnHead:
    """kNN on frozen features (`head=knn head.k=20`): the other probe foundation-model papers report."""
    from sklearn.neighbors import KNeighborsClassifier

    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise LeukexpError(f"head.k={k!r}: expected a whole number of neighbours >= 1")
    algorithm = "brute" if metric == "cosine" else "auto"
    return KNNHead(context, KNeighborsClassifier(n_neighbors=k, metric=metric, weights=weights,
                                                 algorithm=algorithm), standardize)
