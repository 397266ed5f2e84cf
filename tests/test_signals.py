"""SIGTERM and SIGINT raise `Interrupted` in the main thread; a process's children are reaped."""

import os
import signal
import subprocess
import sys
import time

import pytest

from leukexp.errors import Interrupted
from leukexp.signals import descendants, install_stop_handlers, reap_children


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_stop_signal_raises_interrupted(signum: int) -> None:
    previous = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        assert install_stop_handlers()
        with pytest.raises(Interrupted) as stop:
            os.kill(os.getpid(), signum)
            time.sleep(1)
        assert stop.value.exit_code == 128 + signum
        assert signal.getsignal(signal.SIGTERM) == signal.SIG_IGN, "a second signal cannot interrupt the clean-up"
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def test_children_and_grandchildren_are_reaped() -> None:
    # a child that starts a grandchild, both sleeping (as a worker pool would) and ignoring SIGTERM
    code = ("import signal, subprocess, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN);"
            "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); time.sleep(60)")
    child = subprocess.Popen([sys.executable, "-c", code])
    deadline = time.time() + 20
    while len(descendants()) < 2 and time.time() < deadline:
        time.sleep(0.1)
    family = descendants()
    assert child.pid in family and len(family) >= 2
    assert reap_children(grace=0.5) >= 2
    child.wait(10)
    assert child.returncode == -signal.SIGKILL, "ignored SIGTERM, so it was killed"
    assert all(not os.path.exists(f"/proc/{pid}") or _zombie(pid) for pid in family)


def _zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True
