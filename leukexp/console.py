"""Terminal output with rich (tables, progress bars; quiet when not on a terminal or in CI) and a run's phase times."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import pandas as pd
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

if TYPE_CHECKING:
    from leukexp.data.fold_data import FoldData

console = Console(highlight=False, soft_wrap=True)
log = logging.getLogger("leukexp.phase")


def quiet() -> bool:
    """True in CI or when output is not a terminal: progress bars are then left out."""
    return bool(os.environ.get("CI")) or not console.is_terminal


def progress_bar() -> Progress:
    """A transient progress bar (description, bar, n of total, time left), off in CI and without a terminal."""
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                    console=console, disable=quiet(), transient=True)


def print_frame(frame: pd.DataFrame, title: str, index_name: str = "") -> None:
    """Print a small DataFrame as a rich table."""
    table = Table(title=title, title_justify="left")
    table.add_column(index_name or (frame.index.name or ""), style="bold")
    for column in frame.columns:
        table.add_column(str(column), justify="right")
    for index, row in frame.iterrows():
        table.add_row(str(index), *(_fmt(v) for v in row.tolist()))
    console.print(table)


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def describe_fold(fold_data: FoldData) -> None:
    """Print the fold's split (source images), the samples the protocol makes of it, skipped and duplicate images."""
    catalog = fold_data.catalog
    console.print(
        f"[bold]data[/] {catalog.root}  [bold]task[/] {fold_data.task.name} ({', '.join(fold_data.classes)})"
        f"  [bold]fold[/] {fold_data.fold.index + 1}/{fold_data.fold.n_splits}"
        f"  [bold]protocol[/] {fold_data.protocol.name}"
        f"  [bold]augmentation[/] {fold_data.augmentation.name} ({fold_data.augmentation.n_views} views)"
    )
    print_frame(fold_data.split_summary(), "source images per split", "class")
    print_frame(fold_data.samples.counts(fold_data.classes), "samples per split (views, after balancing)", "class")
    if catalog.skipped:
        console.print(f"[yellow]left out {len(catalog.skipped)} bad image(s) or folder(s):[/]")
        for message in catalog.skipped:
            console.print(f"  {message}")
    if catalog.duplicates:
        shown = catalog.duplicates[:5]
        console.print(f"[yellow]{len(catalog.duplicates)} set(s) of identical images, each kept in one split"
                      f" (all listed in the manifest's group column):[/]")
        for files in shown:
            console.print("  " + " = ".join(files))
        if len(catalog.duplicates) > len(shown):
            console.print(f"  ... and {len(catalog.duplicates) - len(shown)} more")


class Stopwatch:
    """Seconds spent per named phase, in the order the phases first ran."""

    def __init__(self, clock: Callable[[], float] = time.perf_counter) -> None:
        self.clock = clock
        self.started = clock()
        self.phases: dict[str, float] = {}

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Add the time spent inside the block to phase `name` (its start is a debug line: `phase NAME`)."""
        log.debug("phase %s", name)
        start = self.clock()
        try:
            yield
        finally:
            self.phases[name] = self.phases.get(name, 0.0) + self.clock() - start

    @property
    def total(self) -> float:
        """Seconds since the stopwatch was made."""
        return self.clock() - self.started

    def summary(self) -> str:
        """`6.2 s (data 0.4, features 0.3, head 0.06, ...)`: the total and each phase, in seconds (a phase under a
        second to two decimals: a head fitted at once is not rounded to nothing)."""
        parts = ", ".join(f"{name} {seconds:.{2 if seconds < 1 else 1}f}" for name, seconds in self.phases.items())
        return f"{self.total:.1f} s ({parts})" if parts else f"{self.total:.1f} s"
