"""Extraction locks: buckets split between processes, a killed holder releases, a file system that lies is refused."""

from pathlib import Path

import pytest

from leukexp.errors import LeukexpError
from leukexp.features import locks as locks_module
from leukexp.features.cache import FeatureCache
from leukexp.features.locks import LOCK_BUCKETS, bucket_of


def test_a_file_system_that_grants_every_flock_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    FeatureCache(tmp_path, "bb").check_locking()  # this disk refuses a second process: no error
    monkeypatch.setattr(locks_module, "another_process_refused", lambda path: False)
    with pytest.raises(LeukexpError, match=r"features\.dir: the file system under .* does not honour flock.*NFSv4"):
        FeatureCache(tmp_path, "bb").check_locking()


def test_lock_buckets_split_and_wait(tmp_path: Path) -> None:
    import hashlib

    keys = [hashlib.sha1(str(i).encode()).hexdigest() for i in range(200)]
    assert {bucket_of(key) for key in keys} == set(range(LOCK_BUCKETS)), "image hashes spread over every bucket"
    first, second = FeatureCache(tmp_path, "bb"), FeatureCache(tmp_path, "bb")
    with first.claim([0, 1, 2], wait=False) as held:
        assert held == [0, 1, 2]
        with second.claim([1, 2, 3, 4], wait=False) as other:
            assert other == [3, 4], "a second process takes only what is free"
    with second.claim([0, 1]) as again:
        assert again == [0, 1], "released when the block ends"


def test_the_extraction_lock_is_released_when_its_holder_is_killed(tmp_path: Path) -> None:
    import signal
    import subprocess
    import sys
    import threading

    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from leukexp.features.cache import FeatureCache\n"
         f"with FeatureCache({str(tmp_path)!r}, 'bb').claim():\n    print('held', flush=True); time.sleep(120)"],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        result: list[bool] = []
        waiting = threading.Thread(target=lambda: result.append(FeatureCache(tmp_path, "bb").claim().__enter__()))
        waiting.start()
        waiting.join(1.0)
        assert waiting.is_alive(), "the lock is held: the second claim waits"
        holder.send_signal(signal.SIGKILL)
        waiting.join(20)
        assert result == [list(range(LOCK_BUCKETS))], "kill -9 of the holder releases the lock; the waiter goes on"
    finally:
        holder.kill()
        holder.wait()
