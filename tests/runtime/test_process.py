"""Process-wide set-up: nothing on import, everything from `prepare_process`, environment values win."""

import os
import subprocess
import sys

import pytest

from leukexp.runtime.process import ENVIRONMENT, quiet_libraries, seed_everything, torch_threads, usable_cores


def run_python(code: str, **env: str) -> str:
    clean = {k: v for k, v in os.environ.items() if k not in ENVIRONMENT}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                            env={**clean, **env})
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout.strip()


def test_importing_leukexp_changes_nothing_and_prepare_process_sets_everything() -> None:
    code = ("import os, signal, leukexp, leukexp.run.pipeline, leukexp.commands.train\n"
            "keys = " + repr(sorted(ENVIRONMENT)) + "\n"
            "print(sum(k in os.environ for k in keys), signal.getsignal(signal.SIGTERM) is signal.SIG_DFL)\n"
            "from leukexp.runtime.process import prepare_process\n"
            "prepare_process()\n"
            "print(os.environ['GOMP_SPINCOUNT'], signal.getsignal(signal.SIGTERM) is signal.SIG_DFL)")
    before, after = run_python(code).splitlines()
    assert before == "0 True", "an import set an environment variable or a signal handler"
    assert after == "20000 False"


def test_a_value_in_the_environment_wins() -> None:
    code = ("from leukexp.runtime.process import prepare_process; import os; prepare_process();"
            " print(os.environ['GOMP_SPINCOUNT'])")
    assert run_python(code, GOMP_SPINCOUNT="5") == "5"


def test_the_known_chatter_is_silenced() -> None:
    import logging
    import warnings

    quiet_libraries()  # prepare_process's part that a test process can take (no signal handlers here)
    assert logging.getLogger("lightning.pytorch.utilities.rank_zero").level == logging.WARNING
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        quiet_libraries()  # filters are inserted again in front of "default"
        warnings.warn("An input example was not provided when logging the model.", UserWarning, stacklevel=1)
    assert caught == []


def test_usable_cores_follow_the_affinity(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 3, 5})
    monkeypatch.setattr(os, "cpu_count", lambda: 64)
    assert usable_cores() == 3


def test_torch_threads_are_restored_after_the_block() -> None:
    import torch

    before = torch.get_num_threads()
    with torch_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    with torch_threads(None):
        assert torch.get_num_threads() == before


def test_seeding_repeats_draws_and_tells_lightning_the_seed() -> None:
    import numpy as np
    import torch

    seed_everything(7)
    first = (np.random.rand(), torch.rand(1).item())
    seed_everything(7)
    assert (np.random.rand(), torch.rand(1).item()) == first
    assert os.environ["PL_GLOBAL_SEED"] == "7" and os.environ["PL_SEED_WORKERS"] == "1"
