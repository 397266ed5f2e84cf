"""Saved heads load by their kind only."""

from pathlib import Path

import pytest

from leukexp.errors import LeukexpError
from leukexp.heads.kinds import HEAD_KINDS, load_head


def test_known_kinds_are_the_two_adapters() -> None:
    assert set(HEAD_KINDS) == {"torch", "sklearn"}


def test_an_unknown_kind_is_refused(tmp_path: Path) -> None:
    with pytest.raises(LeukexpError, match=r"unknown head kind 'os\.system'"):
        load_head(tmp_path, {"kind": "os.system"})
