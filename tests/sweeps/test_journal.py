"""The search journal: a write cut short by a kill is recovered, any other damage is one line."""

import os
import time
from pathlib import Path

import pytest

from leukexp.errors import LeukexpError
from leukexp.sweeps import journal as journal_module


def small_journal(path: Path) -> int:
    """A journal of a finished 3-trial study, and its line count."""
    import optuna

    study = optuna.create_study(study_name="s", storage=journal_module.journal(path))
    study.optimize(lambda trial: trial.suggest_float("x", 0, 1), n_trials=3)
    return len(path.read_bytes().splitlines())


def test_a_journal_cut_short_by_a_kill_is_recovered_and_a_damaged_one_is_one_line(tmp_path: Path) -> None:
    import optuna

    path = tmp_path / "s.journal"
    lines = small_journal(path)
    whole = path.read_bytes()
    path.write_bytes(whole[:-7])  # the last write was killed half-way
    os.utime(path, (time.time() - 60, time.time() - 60))
    journal_module.check_journal(path)
    assert (tmp_path / "s.journal.damaged").read_bytes() == whole[:-7]
    assert len(path.read_bytes().splitlines()) == lines - 1
    study = optuna.load_study(study_name="s", storage=journal_module.journal(path))
    assert len(study.trials) == 3, "the readable trials are all there"
    for damage, why in ((b"garbage that is not json\n", "line 2 is not a journal entry"),
                        (b"\xff\xfe\x00\x01\n", "line 2 is bytes that are not UTF-8")):
        first, rest = whole.split(b"\n", 1)
        path.write_bytes(first + b"\n" + damage + rest)
        with pytest.raises(LeukexpError, match=rf"hydra\.sweeper\.storage: .*s\.journal: {why}; remove that line"):
            journal_module.check_journal(path)
