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


def test_a_copy_that_fills_a_disk_is_named_by_its_destination() -> None:
    full = OSError(errno.ENOSPC, "No space left on device", "/runs/a/predictions.csv", None, "/store/artifacts/x.csv")
    assert os_error_message(full).startswith("/store/artifacts/x.csv: no space left on the device")
    assert os_error_message(OSError(errno.EROFS, "Read-only", "/ro/train.log")).startswith("/ro/train.log: read-only")


def test_a_library_error_caused_by_a_file_system_fault_is_one_line(capsys) -> None:
    with pytest.raises(SystemExit) as stop, user_errors("leukexp-train"):
        try:
            raise OSError(errno.EROFS, "Read-only file system", "/ro/train.log")
        except OSError as error:
            raise ValueError("Unable to configure handler 'file'") from error
    assert stop.value.code == EXIT_USER_ERROR
    assert capsys.readouterr().err.strip() == ("leukexp-train: error: /ro/train.log: read-only file system: point the"
                                              " run at a writable folder (hydra.run.dir=..., paths.*)")
