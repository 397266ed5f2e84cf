"""The differential head: cell types learned in the fold, each bag described by its differential, a bag classifier."""

import itertools
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from leukexp.errors import LeukexpError
from leukexp.heads.base import HeadContext, Split
from leukexp.heads.differential import differential, surest, type_shares
from leukexp.heads.kinds import load_head

TYPES = np.array(["lymphoblast", "lymphocyte", "neutrophil"])


def patients(n_bags: int, seed: int, share: float = 0.05, size: int = 60, width: int = 8):
    """Bags of cells of three types (clusters in feature space); a leukemic bag (label 0) holds round(share * size)
    lymphoblasts among the normal cells, a healthy one (label 1) none. Every cell carries its own type."""
    centers = np.random.default_rng(99).normal(0, 3, (3, width))  # the cell types: the same in every data set
    rng = np.random.default_rng(seed)
    labels = np.arange(n_bags) % 2
    rows, types = [], []
    for label in labels:
        blasts = max(1, round(share * size)) if label == 0 else 0
        kinds = np.concatenate([np.zeros(blasts, int), rng.integers(1, 3, size - blasts)])
        rows.append(centers[kinds] + rng.normal(0, 1.0, (size, width)) + rng.normal(0, 0.5, width))
        types.append(TYPES[kinds])
    bags = np.arange(0, (n_bags + 1) * size, size)
    return np.concatenate(rows).astype(np.float32), labels, bags, np.concatenate(types).astype(object)


def fitted(features: str = "soft", topk: int = 0):
    x, y, bags, types = patients(40, 0)
    vx, vy, vbags, vtypes = patients(10, 1)
    head = differential(HeadContext(8, 2), features=features, topk=topk)
    head.fit(Split(y, x, bags=bags, instance_types=types), Split(vy, vx, bags=vbags, instance_types=vtypes))
    return head


def test_counted_and_soft_shares_and_the_surest_cells_per_type() -> None:
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.4, 0.6], [0.7, 0.3]])
    soft, counted = type_shares(probs, np.array([0, 3, 4]))
    assert np.allclose(soft[0], [0.5, 0.5]) and np.allclose(counted[0], [1 / 3, 2 / 3])
    assert np.allclose(counted[1], [1, 0])
    assert np.allclose(surest(probs, np.array([0, 3, 4]), 1)[0], [0.9, 0.8])


@pytest.mark.parametrize(("features", "topk"), [("soft", 0), ("counted", 3)])
def test_five_percent_blasts_are_found_through_the_differential(features: str, topk: int) -> None:
    head = fitted(features, topk)
    assert head.types == sorted(TYPES)
    x, y, bags, _ = patients(40, 2)
    probs = head.predict_proba(x, bags)
    assert roc_auc_score(y == 0, probs[:, 0]) >= 0.98
    table = head.differential(x, bags)
    blasts = table[table["type"] == "lymphoblast"]
    assert blasts["percent"].to_numpy()[y == 0].mean() == pytest.approx(5, abs=2), "3 of 60 cells: 5 %"
    assert blasts["percent"].to_numpy()[y == 1].mean() < 1
    assert np.allclose(table.groupby("bag_index")["percent"].sum(), 100)
    weights = head.attention(x, bags)
    assert np.allclose([weights[a:b].sum() for a, b in itertools.pairwise(bags)], 1)
    first = weights[bags[0]:bags[1]]
    assert first[:3].min() > first[3:].max(), "a leukemic bag's weight lies on its blasts"


def test_a_saved_differential_gives_the_same_probabilities(tmp_path: Path) -> None:
    head = fitted(topk=2)
    spec = head.save(tmp_path / "head")
    again = load_head(tmp_path / "head", spec)
    x, _, bags, _ = patients(6, 3)
    assert np.allclose(again.predict_proba(x, bags), head.predict_proba(x, bags))
    assert again.differential(x, bags).equals(head.differential(x, bags))


def test_bad_differential_settings_are_one_line() -> None:
    context = HeadContext(8, 2)
    with pytest.raises(LeukexpError, match=r"^head\.features='nope': expected soft"):
        differential(context, features="nope")
    with pytest.raises(LeukexpError, match=r"^head\.topk=-1"):
        differential(context, topk=-1)
    with pytest.raises(LeukexpError, match=r"^head\.bag=abmil: an aggregator"):
        differential(context, bag="abmil")
    x, y, bags, types = patients(6, 0, size=10)
    with pytest.raises(LeukexpError, match=r"^head\.topk=50: larger than every training bag \(the largest holds 10"):
        differential(context, topk=50).fit(Split(y, x, bags=bags, instance_types=types),
                                           Split(y, x, bags=bags, instance_types=types))
    blank = np.full(len(x), "", dtype=object)
    with pytest.raises(LeukexpError, match=r"head\.cells=own: the training bags' instances carry 0 cell type"):
        differential(context).fit(Split(y, x, bags=bags, instance_types=blank),
                                  Split(y, x, bags=bags, instance_types=blank))


def test_a_cell_study_classifier_is_used_as_it_is_and_types_each_bag_once() -> None:
    from sklearn.linear_model import LogisticRegression

    from leukexp.heads.sklearn_head import sklearn_head

    atlas, _, _, atlas_types = patients(20, 5)  # labeled cells of no bag below
    index = {t: i for i, t in enumerate(TYPES)}
    cells = sklearn_head(HeadContext(8, 3), LogisticRegression())
    cells.fit(Split(np.array([index[t] for t in atlas_types]), atlas),
              Split(np.array([index[t] for t in atlas_types]), atlas))
    calls = []
    original = cells.predict_proba
    cells.predict_proba = lambda features: calls.append(len(features)) or original(features)
    head = differential(HeadContext(8, 2), cells="models:/atlas@champion", topk=2)
    x, y, bags, _ = patients(20, 0)
    blank = np.full(len(x), "", dtype=object)  # the bags carry no cell labels: the study's types are used
    with pytest.raises(LeukexpError, match=r"^head\.cells=models:/atlas@champion: the cell study was not loaded"):
        head.fit(Split(y, x, bags=bags, instance_types=blank), Split(y, x, bags=bags, instance_types=blank))
    head.use_cells(cells, list(TYPES))
    head.fit(Split(y, x, bags=bags, instance_types=blank), Split(y, x, bags=bags, instance_types=blank))
    assert head.cells is cells and head.types == list(TYPES)
    tx, ty, tbags, _ = patients(20, 4)
    calls.clear()
    probs, weights, table = head.predict_proba(tx, tbags), head.attention(tx, tbags), head.differential(tx, tbags)
    assert calls == [len(tx)], "the bags' cells typed once for the probabilities, weights and counts"
    assert roc_auc_score(ty == 0, probs[:, 0]) >= 0.95 and len(weights) == len(tx)
    assert set(table["type"]) == set(TYPES)
