"""A support vector machine on standardized backbone features, calibrated to give probabilities."""

from __future__ import annotations

import numpy as np
from sklearn.calibration import CalibratedClassifierCV
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC, LinearSVC


class SVMHead:
    """scikit-learn SVM head: StandardScaler -> (Linear)SVC -> probability calibration.

    Args:
        in_features: backbone feature width (recorded; the SVM takes any width).
        num_outputs: number of classes (1 is read as a binary task: the SVM always gives both probabilities).
        C: regularization strength (inverse).
        kernel: `linear` uses LinearSVC inside CalibratedClassifierCV (the study's choice);
            `rbf`, `poly` or `sigmoid` use SVC inside it.
        calibration_folds: cross-validation folds of the probability calibration.
        dual: solve LinearSVC's dual problem; on standardized deep features it is 10-15x faster than the
            primal that scikit-learn's `auto` picks when there are more samples than features.
        max_iter: iteration cap of the solver.
        seed: random state.
    """

    def __init__(self, in_features: int, num_outputs: int, C: float = 1.0, kernel: str = "linear",  # noqa: N803
                 calibration_folds: int = 3, dual: bool = True, max_iter: int = 2000, seed: int = 0) -> None:
        self.in_features = in_features
        self.num_outputs = max(2, num_outputs)
        svm = (LinearSVC(C=C, dual=dual, max_iter=max_iter, random_state=seed) if kernel == "linear"
               else SVC(C=C, kernel=kernel, max_iter=max_iter, random_state=seed))
        self.pipeline: Pipeline = make_pipeline(
            StandardScaler(), CalibratedClassifierCV(svm, cv=calibration_folds)
        )

    def fit(self, features: np.ndarray, labels: np.ndarray) -> SVMHead:
        """Fit on training features."""
        self.pipeline.fit(features, labels)
        return self

    def predict_proba(self, features: np.ndarray) -> np.ndarray:
        """Class probabilities (N, classes), columns in class-index order."""
        probs = self.pipeline.predict_proba(features)
        full = np.zeros((len(features), self.num_outputs))
        full[:, self.pipeline.classes_.astype(int)] = probs
        return full
