"""User mistakes, file-system faults and stop signals end as one line and a known exit code."""

import errno
import signal

import pytest

from leukexp.errors import EXIT_USER_ERROR, LeukexpError, os_error_message, user_errors
from leukexp.runtime.signals import Interrupted


@pytest.mark.parametrize(("code", "says"), [(errno.ENOSPC, "no space left"), (errno.EROFS, "read-only file system"),
                                            (errno.EACCES, "permission denied"), (errno.ENOTDIR, "is a file"),
                                            (errno.ENOENT, "no such file or folder, and none can be made there")])
def test_file_system_faults_name_the_path_and_the_fix(code: int, says: str, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as stop, user_errors("leukexp-x"):
        raise OSError(code, "whatever", "/data/run/config.yaml")
    assert stop.value.code == EXIT_USER_ERROR
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("leukexp-x: error: /data/run/config.yaml: ") and says in line


def test_other_os_errors_are_not_dressed_up_as_user_mistakes() -> None:
    assert os_error_message(OSError(errno.EIO, "I/O error")) is None
    with pytest.raises(OSError), user_errors():
        raise OSError(errno.EIO, "I/O error")


def test_an_interrupt_exits_128_plus_the_signal(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as stop, user_errors("leukexp-x"):
        raise Interrupted(signal.SIGTERM)
    assert stop.value.code == 128 + signal.SIGTERM
    assert "stopped by signal 15" in capsys.readouterr().err


def test_error_lines_never_show_credentials(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit), user_errors("leukexp-x"):
        raise LeukexpError("mlflow.tracking_uri=http://u:hunter2@host: the store does not answer")
    err = capsys.readouterr().err
    assert "hunter2" not in err and "http://***@host" in err
