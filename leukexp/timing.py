"""Wall time of a run's phases, for the closing line of `leukexp-train` and for the benchmark."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager


class Stopwatch:
    """Seconds spent per named phase, in the order the phases first ran."""

    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.phases: dict[str, float] = {}

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Add the time spent inside the block to phase `name`."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self.phases[name] = self.phases.get(name, 0.0) + time.perf_counter() - start

    @property
    def total(self) -> float:
        """Seconds since the stopwatch was made."""
        return time.perf_counter() - self.started

    def summary(self) -> str:
        """`6.2 s (data 0.4, features 0.3, head 3.1, ...)`: the total and each phase, in seconds."""
        parts = ", ".join(f"{name} {seconds:.1f}" for name, seconds in self.phases.items())
        return f"{self.total:.1f} s ({parts})" if parts else f"{self.total:.1f} s"
