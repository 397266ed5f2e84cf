"""scripts/benchmark.py: the parts that read and present measurements (the measuring itself is the script's run)."""

import importlib.util
import json
import sys
from dataclasses import asdict
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "benchmark.py"


@pytest.fixture(scope="module")
def benchmark():
    spec = importlib.util.spec_from_file_location("benchmark", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["benchmark"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_the_run_time_is_read_from_the_last_done_line(benchmark) -> None:
    output = "x\ndone in 7.1 s (data 0.2, head 3.0); outputs: a\nmore\ndone in 12.5 s (data 0.1); outputs: b\n"
    assert benchmark.done_seconds(output) == 12.5
    assert benchmark.done_seconds("Error: data.root=... no such folder") is None


def test_the_differential_job_is_set_against_its_bare_loop_by_its_head_phase(benchmark) -> None:
    line = "done in 9.8 s (data 2.1, backbone 0.6, MLflow 0.4, features 1.5, head 0.06, artifacts 3.1); outputs: a"
    phases = {f"{n}_s": float(v) for n, v in benchmark.PHASE.findall(line.split("(", 1)[-1])}
    assert phases == {"data_s": 2.1, "backbone_s": 0.6, "MLflow_s": 0.4, "features_s": 1.5, "head_s": 0.06,
                      "artifacts_s": 3.1}
    result = benchmark.Result(jobs={"differential": {"run_s": 9.8, "wall_s": 15.0, **phases}},
                              differential_loop={"seconds": 0.04, "cells": 900, "bags": 36})
    assert "head phase 0.06 s: 1.50x the bare differential loop, 0.040 s" in benchmark.table(result)


def test_the_team_server_job_is_set_against_the_same_bare_loop(benchmark) -> None:
    result = benchmark.Result(head_loop={"seconds": 7.0, "steps": 4375, "epochs": 25},
                              jobs={"mlp1": {"run_s": 21.0, "wall_s": 40.0}},
                              team_server={"mlp1": {"run_s": 24.5, "wall_s": 45.0, "MLflow_s": 2.4}})
    lines = benchmark.table(result).splitlines()
    (server,) = [line for line in lines if "on the team server" in line]
    assert "24.5 s in run (MLflow 2.4 s)" in server and "(3.50x the bare head loop)" in server
    assert "team_server" not in benchmark.DEFAULT_MEASURES, "it needs PostgreSQL: only when asked for"


def test_every_view_of_every_image_once(benchmark) -> None:
    samples = benchmark.all_views(3, 4)
    assert len(samples) == 12 and not samples.duplicated(["source", "view"]).any()
    assert samples["source"].tolist()[:5] == [0, 0, 0, 0, 1]


def test_the_table_states_the_ratios_against_the_raw_limit(benchmark) -> None:
    result = benchmark.Result(machine={"cpu": "test"}, raw={"images_per_s": 50.0, "batch_size": 16},
                              extraction={"views": 8778.0, "seconds": 180.0, "images_per_s": 45.0,
                                          "peak_rss_mb": 1300.0},
                              jobs={"mlp1": {"run_s": 7.0, "wall_s": 14.0, "peak_rss_mb": 1600.0}},
                              load={"mlp1": {"run_s": 14.7, "wall_s": 25.0, "peak_rss_mb": 1600.0}},
                              sweep={"wall_s": 270.0, "run_s": 5.0, "peak_rss_mb": 1700.0},
                              cold_sweep={"wall_s": 470.0, "run_s": 5.0, "peak_rss_mb": 1700.0,
                                          "ratio_to_pass_plus_warm": 470.0 / 450.0})
    text = benchmark.table(result)
    assert "ratio 0.90" in text and "(2.10x)" in text and "(1.50x one extraction pass)" in text
    assert "1.04x one pass + warm sweep" in text
    assert json.loads(json.dumps(asdict(result)))["jobs"]["mlp1"]["run_s"] == 7.0


def test_scale_sizes_growth_and_table(benchmark) -> None:
    counts = benchmark.scale_counts(5_000)
    assert set(counts) == set(benchmark.SCALE_CLASSES) and sum(counts.values()) * 33 >= 5_000
    assert sum(counts.values()) * 33 < 5_000 + 33 * 5, "no more than a few images over the size"
    assert benchmark.growth_exponent([1e3, 1e4, 1e5], [2.0, 20.0, 200.0]) == pytest.approx(1.0)
    assert benchmark.growth_exponent([1e3, 1e4, 1e5], [1.0, 1.0, 1.0]) == pytest.approx(0.0, abs=1e-9)
    row = {"views": 5115.0, "images": 155.0, "cold_s": 4.0, "cold_views_per_s": 1278.0, "cold_to_raw": 0.09,
           "files": 4.0, "files_per_100k": 78.2, "job_rows": 3323.0, "job_bytes": 3.4e6, "job_read_s": 0.03,
           "np_load_s": 0.003, "read_speed_vs_np_load": 0.1, "rss_over_bytes_gb": 0.94}
    text = benchmark.scale_table([row, row | {"views": 51150.0, "cold_s": 40.0, "job_read_s": 0.3}])
    assert "| 5,115 | 155 | 1,278 (0.09) | 4 (78.2) |" in text and "0.10x" in text
    assert "cold extraction 1.00, warm job read 1.00" in text
