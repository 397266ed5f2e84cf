"""Terminal output with rich: tables and progress bars, quiet when not on a terminal or in CI."""

from __future__ import annotations

import os

import pandas as pd
from rich.console import Console
from rich.table import Table

console = Console(highlight=False, soft_wrap=True)


def quiet() -> bool:
    """True in CI or when output is not a terminal: progress bars are then left out."""
    return bool(os.environ.get("CI")) or not console.is_terminal


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
