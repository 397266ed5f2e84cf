"""Saved heads load by their kind only."""

from pathlib import Path

import pytest

from leukexp.errors import LeukexpError
from leukexp.heads.base import Head
from leukexp.heads.kinds import load_head


def test_known_kinds_are_the_two_adapters() -> None:
    assert set(Head.kinds()) == {"torch", "sklearn", "bag", "vote", "differential"}


def test_an_unknown_kind_is_refused(tmp_path: Path) -> None:
    with pytest.raises(LeukexpError, match=r"unknown kind 'os\.system' \(known: bag, differential, sklearn, torch,"
                                           r" vote\)"):
        load_head(tmp_path, {"kind": "os.system"})
