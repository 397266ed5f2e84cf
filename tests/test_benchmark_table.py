"""benchmarks.table: every measure set against its limit (raw forward, one pass, the bare loops)."""

import json
from dataclasses import asdict

from benchmarks.common import Result
from benchmarks.table import table


def test_the_differential_job_is_set_against_its_bare_loop_by_its_head_phase() -> None:
    phases = {"data_s": 2.1, "backbone_s": 0.6, "MLflow_s": 0.4, "features_s": 1.5, "head_s": 0.06}
    result = Result(jobs={"differential": {"run_s": 9.8, "wall_s": 15.0, **phases}},
                              differential_loop={"seconds": 0.04, "cells": 900, "bags": 36})
    assert "head phase 0.06 s: 1.50x the bare differential loop, 0.040 s" in table(result)


def test_the_team_server_job_is_set_against_the_same_bare_loop() -> None:
    result = Result(head_loop={"seconds": 7.0, "steps": 4375, "epochs": 25},
                              jobs={"mlp1": {"run_s": 21.0, "wall_s": 40.0}},
                              team_server={"mlp1": {"run_s": 24.5, "wall_s": 45.0, "MLflow_s": 2.4}})
    lines = table(result).splitlines()
    (server,) = [line for line in lines if "on the team server" in line]
    assert "24.5 s in run (MLflow 2.4 s)" in server and "(3.50x the bare head loop)" in server


def test_the_table_states_the_ratios_against_the_raw_limit() -> None:
    result = Result(machine={"cpu": "test"}, raw={"images_per_s": 50.0, "batch_size": 16},
                              extraction={"views": 8778.0, "seconds": 180.0, "images_per_s": 45.0,
                                          "peak_rss_mb": 1300.0},
                              jobs={"mlp1": {"run_s": 7.0, "wall_s": 14.0, "peak_rss_mb": 1600.0}},
                              load={"mlp1": {"run_s": 14.7, "wall_s": 25.0, "peak_rss_mb": 1600.0}},
                              sweep={"wall_s": 270.0, "run_s": 5.0, "peak_rss_mb": 1700.0},
                              cold_sweep={"wall_s": 470.0, "run_s": 5.0, "peak_rss_mb": 1700.0,
                                          "ratio_to_pass_plus_warm": 470.0 / 450.0})
    text = table(result)
    assert "ratio 0.90" in text and "(2.10x)" in text and "(1.50x one extraction pass)" in text
    assert "1.04x one pass + warm sweep" in text
    assert json.loads(json.dumps(asdict(result)))["jobs"]["mlp1"]["run_s"] == 7.0
