"""The run stopwatch: phases add up in order of first use."""

import re
import time

from leukexp.timing import Stopwatch


def test_phases_accumulate_in_first_use_order() -> None:
    clock = Stopwatch()
    with clock.phase("features"):
        time.sleep(0.02)
    with clock.phase("head"):
        pass
    with clock.phase("features"):
        time.sleep(0.02)
    assert list(clock.phases) == ["features", "head"]
    assert clock.phases["features"] >= 0.04 > clock.phases["head"]
    assert clock.total >= sum(clock.phases.values())
    assert re.fullmatch(r"\d+\.\d s \(features 0\.\d, head 0\.0\)", clock.summary())


def test_a_failing_phase_is_still_counted() -> None:
    clock = Stopwatch()
    try:
        with clock.phase("data"):
            raise ValueError("bad input")
    except ValueError:
        pass
    assert "data" in clock.phases
