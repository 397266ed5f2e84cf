"""Console output: rich tables and the study description a run prints first."""

import pandas as pd

from conftest import TINY_DATA
from leukexp.console import console, describe_study, print_frame
from leukexp.data.study import build_study


def test_print_frame_shows_rows_and_formats_floats() -> None:
    with console.capture() as captured:
        print_frame(pd.DataFrame({"value": [0.123456, 2]}, index=["acc", "n"]), "metrics", "metric")
    text = captured.get()
    assert "metrics" in text and "0.1235" in text and "acc" in text


def test_describe_study_prints_the_split(compose_cfg) -> None:
    study = build_study(compose_cfg(*TINY_DATA, "task=binary", "augmentation=none"))
    with console.capture() as captured:
        describe_study(study)
    text = captured.get()
    assert "task binary (ALL, HLT)" in text and "fold 1/5" in text and "source images per split" in text
