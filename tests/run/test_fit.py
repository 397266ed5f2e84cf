"""Fitting a head on a study's features: the right samples go to fit, val and test."""

import pandas as pd
from sklearn.linear_model import LogisticRegression

from conftest import PerImage, blobs
from leukexp.data.protocol import Samples
from leukexp.features.embed import Features
from leukexp.heads.base import HeadContext
from leukexp.heads.sklearn_head import SklearnHead
from leukexp.run.fit import fit_head
from leukexp.vocabulary import VAL_ACC


def test_fit_head_predicts_val_and_test() -> None:
    x, y = blobs(60)
    vx, vy = blobs(30, seed=1)
    tx, ty = blobs(15, seed=2)
    frame = lambda labels: pd.DataFrame({"source": range(len(labels)), "view": 0, "label_index": labels})  # noqa: E731
    samples = Samples(train=frame(y), val=frame(vy), test=frame(ty))
    fold_data = PerImage(samples, ["a", "b", "c"], None)
    result = fit_head(SklearnHead(HeadContext(8, 3), LogisticRegression()), fold_data, Features(x, vx, tx))
    assert result.val_probs.shape == (30, 3) and result.test_probs.shape == (15, 3)
    assert (result.test_probs.argmax(1) == ty).mean() > 0.85
    assert result.history.loc[0, VAL_ACC] == (result.val_probs.argmax(1) == vy).mean()
    assert result.best_epoch is None, "a scikit-learn head is fitted at once: no epochs"
