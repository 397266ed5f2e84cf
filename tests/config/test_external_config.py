"""`evaluation.external` resolved at the run's door: a data config name, a folder or a mapping of data keys."""

from pathlib import Path

import pytest

from leukexp.config.compose import build
from leukexp.config.external import external_config
from leukexp.data.external import scan_external
from leukexp.data.synthetic import SyntheticSource
from leukexp.errors import LeukexpError


def task_of(cfg):
    return build(cfg.task, "task", _convert_="all")


def test_no_external_set_by_default(compose_cfg) -> None:
    cfg = compose_cfg()
    assert external_config(cfg) is None and scan_external(external_config(cfg), task_of(cfg), ["ALL"]) is None


def test_a_data_config_name_resolves_against_the_runs_folders(compose_cfg, tmp_path: Path) -> None:
    cfg = compose_cfg("evaluation.external=synthetic_b")
    config = external_config(cfg)
    assert config["domain"] == "B" and config["name"] == "synthetic_b"
    assert config["cache_dir"] == str(tmp_path / "cache" / "synthetic"), "the run's cache, not the default one"


def test_a_changed_data_config_and_its_unknown_keys(compose_cfg) -> None:
    cfg = compose_cfg("evaluation.external={config: synthetic_b, counts: {ALL: 2, HLT: 2}, image_size: 40}")
    source = build(external_config(cfg), "x", _convert_="all")
    assert isinstance(source, SyntheticSource) and source.domain == "B" and source.counts == {"ALL": 2, "HLT": 2}
    cfg = compose_cfg("evaluation.external={config: synthetic_b, sizes: 3}")
    with pytest.raises(LeukexpError, match=r"evaluation\.external\.sizes: not a key of data config synthetic_b"):
        external_config(cfg)
