"""CSV files: cells are data, never formulas; leukexp reads back what it wrote; user key -> value rows are strict."""

import logging
import re
from pathlib import Path

import pandas as pd
import pytest

from leukexp.csv_files import neutral_cell, plain_cell, read_csv, unique_rows, write_csv
from leukexp.errors import LeukexpError

HOSTILE = ["=cmd|' /C calc'!A0", "+1+1", "-2+3", "@SUM(A1)", "\tx", "\rx", "'=already quoted", "'plain"]


@pytest.mark.parametrize("text", HOSTILE)
def test_a_cell_that_a_spreadsheet_would_run_is_written_as_text_and_read_back_as_it_was(text: str,
                                                                                      tmp_path: Path) -> None:
    assert neutral_cell(text).startswith("'") and plain_cell(neutral_cell(text)) == text
    frame = pd.DataFrame({"bag": [text, "p1"], "p_ALL": [0.25, -0.5]})
    write_csv(frame, tmp_path / "t.csv")
    raw = pd.read_csv(tmp_path / "t.csv", keep_default_na=False)
    assert not raw["bag"].str.startswith(("=", "+", "-", "@", "\t", "\r")).any(), "no formula cell in the file"
    assert raw["p_ALL"].tolist() == [0.25, -0.5], "numbers stay numbers (a negative one too)"
    back = read_csv(tmp_path / "t.csv", keep_default_na=False)
    assert back["bag"].tolist() == [text, "p1"]


def test_plain_text_is_written_unchanged(tmp_path: Path) -> None:
    write_csv(pd.DataFrame({"file": ["ALL/p1/a.png", "x=1"]}), tmp_path / "t.csv")
    assert (tmp_path / "t.csv").read_text().splitlines() == ["file", "ALL/p1/a.png", "x=1"]


def test_every_csv_the_package_writes_goes_through_write_csv() -> None:
    # a new writer that calls DataFrame.to_csv directly would write names verbatim again
    package = Path(__file__).resolve().parents[1] / "leukexp"
    direct = [f"{path.relative_to(package)}:{n}" for path in package.rglob("*.py") if path.name != "csv_files.py"
              for n, line in enumerate(path.read_text().splitlines(), 1)
              if re.search(r"\.to_csv\((?!index=False\)\.encode)", line)]
    assert direct == []


def test_a_key_listed_twice_with_two_values_is_one_line_naming_both_lines(tmp_path: Path) -> None:
    table = pd.DataFrame({"file": ["a.png", "b.png", "a.png"], "group": ["p1", "p2", "p9"]})
    with pytest.raises(LeukexpError, match=r"file 'a\.png' is listed twice with two groups \('p1' on line 2, 'p9' on"
                                           r" line 4\)"):
        unique_rows(table, "file", "group", tmp_path / "groups.csv")


def test_a_repeated_row_that_agrees_is_read_once_with_a_warning(tmp_path: Path, caplog) -> None:
    table = pd.DataFrame({"file": ["a.png", "b.png", "a.png"], "group": ["p1", "p2", "p1"]})
    with caplog.at_level(logging.WARNING):
        assert unique_rows(table, "file", "group", tmp_path / "groups.csv") == {"a.png": "p1", "b.png": "p2"}
    assert "1 repeated row(s) (line 4)" in caplog.text
