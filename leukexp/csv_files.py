"""CSV files leukexp writes and reads: cells are data, never formulas; a user's key -> value rows are read strictly.

A spreadsheet runs a cell that starts with `=`, `+`, `-`, `@`, a tab or a carriage return as a formula (OWASP's
CSV injection), and a file or folder name is anyone's to choose: `=cmd|' /C calc'!A0.png` is a valid image name. Every
CSV leukexp writes goes through `write_csv`, which puts a `'` before such a text cell (and before a text cell that
starts with `'`, so the quote is never ambiguous); `read_csv` takes that quote off again, so leukexp reads back
exactly what it wrote. Numbers are written as numbers.
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import pandas as pd

from leukexp.errors import LeukexpError

log = logging.getLogger(__name__)

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
QUOTE = "'"


def neutral_cell(value: Any) -> Any:
    """A text cell that a spreadsheet cannot run: `'` before a formula's first character (or a leading `'`)."""
    if isinstance(value, str) and value.startswith((*FORMULA_STARTS, QUOTE)):
        return QUOTE + value
    return value


def plain_cell(value: Any) -> Any:
    """`neutral_cell` undone: the text as it was before it was written."""
    if isinstance(value, str) and value.startswith(QUOTE) and value[1:].startswith((*FORMULA_STARTS, QUOTE)):
        return value[1:]
    return value


def _is_text(values: pd.Series | pd.Index) -> bool:
    """Whether a column (or index) holds text: object or string dtype."""
    return pd.api.types.is_object_dtype(values.dtype) or pd.api.types.is_string_dtype(values.dtype)


def map_text(frame: pd.DataFrame, cell: Callable[[Any], Any]) -> pd.DataFrame:
    """A copy with `cell` applied to every text cell, column name and text index label; numbers stay numbers."""
    frame = frame.copy()
    for column in frame.columns:
        if _is_text(frame[column]):
            frame[column] = frame[column].map(cell)
    frame.columns = [cell(c) for c in frame.columns]
    if _is_text(frame.index):
        frame.index = frame.index.map(cell)
    return frame


def neutral_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """A copy whose text cells, index and column names are neutral (`neutral_cell`)."""
    return map_text(frame, neutral_cell)


def write_csv(frame: pd.DataFrame, path: str | Path | IO[str], index: bool = False, **kwargs: Any) -> None:
    """`frame.to_csv`, with every text cell neutral (the one way leukexp writes a CSV); text holding a carriage
    return is quoted (a reader would take it for the end of a line)."""
    neutral = neutral_frame(frame)
    texts = [neutral[c] for c in neutral.columns if _is_text(neutral[c])]
    if any(column.astype(str).str.contains("\r", regex=False).any() for column in texts):
        kwargs.setdefault("quoting", csv.QUOTE_NONNUMERIC)
    neutral.to_csv(path, index=index, **kwargs)


def read_csv(path: str | Path, **kwargs: Any) -> pd.DataFrame:
    """A CSV leukexp wrote (`write_csv`), with the text as it was before it was written."""
    return map_text(pd.read_csv(path, **kwargs), plain_cell)


def unique_rows(table: pd.DataFrame, key: str, value: str, path: Path) -> dict[str, str]:
    """`key` -> `value` of a user's CSV: a key listed twice with two values is one line naming both rows (which
    would win is a guess); listed twice with the same value, one warning naming the repeated rows."""
    keys, values = table[key].astype(str).str.strip(), table[value].astype(str).str.strip()
    repeated = keys[keys.duplicated(keep=False)]
    for name, rows in repeated.groupby(repeated, sort=False).groups.items():
        found = values.loc[rows]
        if found.nunique() > 1:
            first, second = (int(r) + 2 for r in found.index[:2])  # CSV lines: the header is line 1
            raise LeukexpError(f"{path}: {key} {name!r} is listed twice with two {value}s ({found.iloc[0]!r} on line"
                               f" {first}, {found.iloc[1]!r} on line {second}); keep one row per {key}")
    if len(repeated):
        lines = [str(int(r) + 2) for r in repeated.index[repeated.duplicated()]]
        log.warning("%s: %d repeated row(s) (line %s) say what an earlier row says; each is read once", path,
                    len(lines), ", ".join(lines[:10]))
    return dict(zip(keys, values, strict=True))
