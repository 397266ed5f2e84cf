"""Every experiment config composes, and its sweep names only options that exist."""

import re

import pytest
from hydra.utils import instantiate

from leukexp.config.compose import config_dir
from leukexp.vocabulary import BEST, VAL_ACC, cv_metric

EXPERIMENTS = sorted(p.stem for p in (config_dir() / "experiment").glob("*.yaml"))


def test_the_study_experiments_exist() -> None:
    assert {"quickstart", "thesis_binary", "thesis_multiclass", "thesis_heads", "thesis_heads_binary",
            "protocol_leakage"} <= set(EXPERIMENTS)


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_experiment_composes_and_its_sweep_is_valid(compose_cfg, experiment: str) -> None:
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        raw = compose("train", overrides=[f"experiment={experiment}"], return_hydra_config=True)
    params = dict(raw.hydra.sweeper.params)
    assert raw.mlflow.experiment_name != "leukexp", "each study logs to its own experiment"
    if "leukexp_search" in str(raw.hydra.sweeper._target_):  # a search runs every fold of each trial itself
        from leukexp.sweeps.space import parse_space

        space = parse_space(params, [], raw)
        assert len(space.distributions) >= 2 and raw.hydra.sweeper.objective == cv_metric(BEST + VAL_ACC, "mean")
        first = {k: d.low if hasattr(d, "low") else d.choices[-1] for k, d in space.distributions.items()}
        cfg = compose_cfg(f"experiment={experiment}", *space.overrides(first), "model.pretrained=false")
        assert instantiate(cfg.task).name == cfg.task.name
        return
    assert "fold" in params, "every study sweeps the folds"
    # every value of every swept key composes (each once: the grid's cells combine values that each compose)
    for key, values in params.items():
        for value in str(values).split(","):
            cfg = compose_cfg(f"experiment={experiment}", f"{key}={value}", "model.pretrained=false")
            assert cfg.fold.name in {"f0", "f1", "f2", "f3", "f4"}
            assert instantiate(cfg.task).name == cfg.task.name
    text = (config_dir() / "experiment" / f"{experiment}.yaml").read_text()
    assert text.startswith("# @package _global_")
    assert re.search(r"Table|README|docs/\w", text), "each file says what it reproduces"
