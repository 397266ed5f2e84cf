"""The MLflow warm-up: begun once, waited for by the step that needs it, its failures left to that step."""

import threading
import time

import pytest

from leukexp.tracking import warmup


@pytest.fixture(autouse=True)
def no_parts(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(warmup, "_parts", {})


def test_a_step_waits_for_its_part_and_a_part_begins_once(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    release = threading.Event()

    def slow_map() -> None:
        release.wait(5)
        calls.append("map")

    monkeypatch.setattr(warmup, "_distribution_map", slow_map)
    warmup.begin(None)
    warmup.begin(None)  # already begun: not again
    assert warmup.STORE not in warmup._parts, "tracking off: no store to open"
    started = time.perf_counter()
    threading.Timer(0.3, release.set).start()
    assert warmup.wait(warmup.MODEL_SAVING) is True, "begun and done"
    assert calls == ["map"] and time.perf_counter() - started >= 0.25, "waited until the part was done"
    warmup.wait(warmup.MODEL_SAVING)
    assert calls == ["map"], "the map is made once per process"


def test_a_failing_store_part_is_left_to_the_steps_own_call(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    opened: list[str] = []

    def failing_open(uri: str, *args: object) -> None:
        opened.append(uri)
        raise RuntimeError("the store is down")

    monkeypatch.setattr(warmup, "_open_store", failing_open)
    monkeypatch.setattr(warmup, "_distribution_map", lambda: None)
    warmup.begin("http://127.0.0.1:9", project_root=tmp_path)
    assert warmup.wait(warmup.STORE) is False, "no error here: the run's own prepare_store raises it"
    assert opened == ["http://127.0.0.1:9"]
    assert warmup.STORE not in warmup._parts, "taken: the next run in this process opens its own store"
    assert warmup.wait(warmup.STORE) is False, "nothing begun: at once"
