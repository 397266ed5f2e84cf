"""What a fold run writes: optional artifacts never cost the run."""

from pathlib import Path


def test_an_optional_artifact_that_fails_is_one_warning(tmp_path: Path, caplog) -> None:
    import errno

    import pytest

    from leukexp.run.artifacts import optional

    def broken() -> Path:
        raise ValueError("all input arrays must have the same shape")

    assert optional("the activation-map panel (cam/panel.png)", "Make maps later with: ...", broken) is None
    (record,) = caplog.records
    assert record.levelname == "WARNING" and "Make maps later with" in record.message
    assert "the activation-map panel (cam/panel.png) not written (ValueError: all" in record.message
    assert optional("x", "", lambda: tmp_path) == tmp_path

    def full() -> Path:
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "roc.png"))

    with pytest.raises(OSError):
        optional("roc.png", "", full)  # a full disk is the run's failure, reported as one line by the CLI
