"""The search space: Hydra's syntax as Optuna distributions, impossible spaces as one line, objectives checked."""

import optuna.distributions as dist
import pytest
from omegaconf import OmegaConf

from leukexp.errors import LeukexpError
from leukexp.sweeps.space import fold_metric, override_value, parse_space
from leukexp.vocabulary import BEST, TEST_ACC, TEST_LOSS, VAL_ACC, cv_metric

CONFIG = OmegaConf.create({"hydra": {"runtime": {"choices": {"head": "logreg", "model": "efficientnet_lite0"}}},
                           "optimizer": {"lr": 0.001}, "head": {"C": None, "hidden": [128], "dropout": 0.0},
                           "fold": {"index": 0}, "seed": 42})


def test_hydra_syntax_becomes_optuna_distributions() -> None:
    space = parse_space({"optimizer.lr": "tag(log, interval(1e-4, 1e-2))", "head.dropout": "interval(0.0, 0.5)",
                         "head.hidden": "choice([128], [256, 64])", "seed": "range(1, 4)", "head": "logreg,svm"},
                        ["model=efficientnet_lite2", "task=binary"], CONFIG)
    d = space.distributions
    assert d["optimizer.lr"] == dist.FloatDistribution(1e-4, 1e-2, log=True)
    assert d["head.dropout"] == dist.FloatDistribution(0.0, 0.5)
    assert d["seed"] == dist.CategoricalDistribution([1, 2, 3])
    assert d["head"] == dist.CategoricalDistribution(["logreg", "svm"])
    assert space.fixed == ["model=efficientnet_lite2", "task=binary"]
    assert space.overrides({"head.hidden": d["head.hidden"].choices[1], "optimizer.lr": 0.000316227766}) == [
        "head.hidden=[256,64]", "optimizer.lr=0.000316228"]
    assert override_value(3) == "3" and override_value([1, 2]) == "[1,2]"


@pytest.mark.parametrize(("params", "says"), [
    ({"head.nope": "interval(0, 1)"}, r"hydra\.sweeper\.params\.head\.nope: no such config key"),
    ({"optimizer.lr": "interval(0.1, 0.01)"}, r"interval\(0\.1, 0\.01\) is empty; give low < high"),
    ({"optimizer.lr": "tag(log, interval(0, 0.1))"}, r"a log interval needs low > 0"),
    ({"fold.index": "range(0, 5)"}, r"a search varies what a run computes, not fold\.index"),
    ({"optimizer.lr": "0.1"}, r"no search dimension"),
    ({"optimizer.lr": "interval(0.1"}, r"hydra\.sweeper\.params: "),
    ({"head": "interval(0, 1)"}, r"params\.head: head is a config group, its values are option names; search them"
                                 r" with choice\(\.\.\.\), e\.g\. head='choice\(logreg, \.\.\.\)'"),
    ({"model": "range(0, 3)"}, r"params\.model: model is a config group"),
])
def test_an_impossible_space_is_one_line(params: dict[str, str], says: str) -> None:
    with pytest.raises(LeukexpError, match=says):
        parse_space(params, [], CONFIG)


def test_objectives_are_fold_means_of_fold_metrics() -> None:
    assert fold_metric(cv_metric(BEST + VAL_ACC, "mean")) == BEST + VAL_ACC
    assert fold_metric(cv_metric(TEST_LOSS, "mean")) == TEST_LOSS
    with pytest.raises(LeukexpError, match=r"hydra\.sweeper\.objective='test/acc'"):
        fold_metric(TEST_ACC)
    for fine in ("cv/external/f1/ALL_mean", "cv/test/ece_raw_mean", "cv/test/sensitivity_ci95_low_mean",
                 "cv/val/loss_mean", "cv/best/epoch_mean", "cv/instance/auc_macro_mean"):
        assert fold_metric(fine) == fine[3:-5]
    for nope in ("cv/nope_mean", "cv/test/acuracy_mean", "cv/tset/acc_mean", "cv/test/f2/ALL_mean"):
        with pytest.raises(LeukexpError, match=rf"objective='{nope}': expected the fold mean of a metric fold runs"):
            fold_metric(nope)
