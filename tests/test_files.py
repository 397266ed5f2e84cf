"""Atomic writes of files and folders."""

from pathlib import Path

import pytest

from leukexp.files import atomic_path


def test_file_appears_whole_or_not_at_all(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "out.csv"
    with atomic_path(target) as staging:
        staging.write_text("a,b\n")
        assert not target.exists()
    assert target.read_text() == "a,b\n"
    with pytest.raises(RuntimeError), atomic_path(target) as staging:
        staging.write_text("half")
        raise RuntimeError("killed")
    assert target.read_text() == "a,b\n" and sorted(p.name for p in target.parent.iterdir()) == ["out.csv"]


def test_folder_written_by_another_process_first_is_kept(tmp_path: Path) -> None:
    target = tmp_path / "images"
    with atomic_path(target, folder=True) as staging:
        (staging / "a.png").write_bytes(b"1")
    with atomic_path(target, folder=True) as staging:
        (staging / "b.png").write_bytes(b"2")
    assert sorted(p.name for p in target.iterdir()) == ["a.png"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["images"], "no staging folder left behind"
