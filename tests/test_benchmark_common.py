"""benchmarks.common: reading a run's `done in` line, every view of every image once."""

from benchmarks.common import PHASE, all_views, done_seconds


def test_the_run_time_is_read_from_the_last_done_line() -> None:
    output = "x\ndone in 7.1 s (data 0.2, head 3.0); outputs: a\nmore\ndone in 12.5 s (data 0.1); outputs: b\n"
    assert done_seconds(output) == 12.5
    assert done_seconds("Error: data.root=... no such folder") is None


def test_every_view_of_every_image_once() -> None:
    samples = all_views(3, 4)
    assert len(samples) == 12 and not samples.duplicated(["source", "view"]).any()
    assert samples["source"].tolist()[:5] == [0, 0, 0, 0, 1]


def test_the_phases_of_a_done_line_are_read_by_name() -> None:
    line = "done in 9.8 s (data 2.1, backbone 0.6, MLflow 0.4, features 1.5, head 0.06, artifacts 3.1); outputs: a"
    phases = {f"{n}_s": float(v) for n, v in PHASE.findall(line.split("(", 1)[-1])}
    assert phases == {"data_s": 2.1, "backbone_s": 0.6, "MLflow_s": 0.4, "features_s": 1.5, "head_s": 0.06,
                      "artifacts_s": 3.1}
