"""Console output: rich tables and the study description a run prints first."""

import pandas as pd

from conftest import TINY_DATA
from leukexp.console import Stopwatch, console, describe_fold, print_frame
from leukexp.data.fold_data import build_fold_data


def test_print_frame_shows_rows_and_formats_floats() -> None:
    with console.capture() as captured:
        print_frame(pd.DataFrame({"value": [0.123456, 2]}, index=["acc", "n"]), "metrics", "metric")
    text = captured.get()
    assert "metrics" in text and "0.1235" in text and "acc" in text


def test_describe_study_prints_the_split(compose_plan) -> None:
    fold_data = build_fold_data(compose_plan(*TINY_DATA, "task=binary", "augmentation=none"))
    with console.capture() as captured:
        describe_fold(fold_data)
    text = captured.get()
    assert "task binary (ALL, HLT)" in text and "fold 1/5" in text and "source images per split" in text


class FakeClock:
    """A clock that moves only when told to: phase times are exact, no wall-clock sleeps."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_stopwatch_phases_accumulate_in_first_use_order() -> None:
    tick = FakeClock()
    clock = Stopwatch(tick)
    with clock.phase("features"):
        tick.now += 1.25
    with clock.phase("head"):
        tick.now += 0.5
    with clock.phase("features"):
        tick.now += 2.0
    tick.now += 0.25  # time outside any phase counts in the total only
    assert clock.phases == {"features": 3.25, "head": 0.5}
    assert clock.total == 4.0
    assert clock.summary() == "4.0 s (features 3.2, head 0.50)", "under a second: two decimals"


def test_stopwatch_counts_a_failing_phase_and_reads_bare_without_phases() -> None:
    tick = FakeClock()
    clock = Stopwatch(tick)
    assert clock.summary() == "0.0 s"
    try:
        with clock.phase("data"):
            tick.now += 0.75
            raise ValueError("bad input")
    except ValueError:
        pass
    assert clock.phases == {"data": 0.75}
