"""User-facing errors: one clear line, a non-zero exit, no traceback."""

from __future__ import annotations

import errno
import sys
from collections.abc import Iterator
from contextlib import contextmanager

from omegaconf.errors import OmegaConfBaseException

from leukexp.runtime.secrets import redact
from leukexp.runtime.signals import Interrupted, exception_chain

EXIT_USER_ERROR = 2

# file-system faults a user can fix, and what fixes them
_OS_FIXES = {
    errno.ENOSPC: "no space left on the device: free space or point the run elsewhere (hydra.run.dir=..., paths.*)",
    errno.EDQUOT: "disk quota exceeded: free space or point the run elsewhere (hydra.run.dir=..., paths.*)",
    errno.EROFS: "read-only file system: point the run at a writable folder (hydra.run.dir=..., paths.*)",
    errno.EACCES: "permission denied: make it writable (chmod) or point the run at a folder you own",
    errno.EPERM: "operation not permitted: make it writable (chmod) or point the run at a folder you own",
    errno.ENOTDIR: "a part of this path is a file, not a folder: give a folder path",
    errno.EISDIR: "is a folder, not a file: give a file path",
    errno.ENAMETOOLONG: "the path is too long: use a shorter folder or file name",
    errno.EEXIST: "already exists and is in the way: remove it or give another path",
    errno.ENOENT: "no such file or folder, and none can be made there: check the path (hydra.run.dir=..., paths.*)",
}


class LeukexpError(Exception):
    """A mistake in the user's input (data, config, files), reported as one line."""


def one_line(error: BaseException) -> str:
    """A Hydra composition error (`Could not find 'model/nope'`, its options on further lines) as one line."""
    text = str(error).split("Config search path:")[0]
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return " ".join(lines)[:2000] or type(error).__name__


def os_error_message(error: OSError) -> str | None:
    """One line for a file-system fault the user can fix (None for other OS errors)."""
    fix = _OS_FIXES.get(error.errno or -1)
    if fix is None:
        return None
    return f"{fault_path(error) or 'a file'}: {fix}"


def fault_path(error: OSError) -> str | None:
    """The path a file-system fault is about: a copy's destination (`filename2`: the disk that is full or read-only),
    else its file."""
    path = error.filename2 if error.filename2 is not None else error.filename
    return None if path is None else str(path)


def file_system_fault(error: BaseException) -> OSError | None:
    """The file-system fault the user can fix (full, read-only, not permitted...) behind an error, if any: the error
    itself or one in its chain of causes."""
    return next((cause for cause in exception_chain(error)
                 if isinstance(cause, OSError) and (cause.errno or -1) in _OS_FIXES), None)


def os_error_reason(error: OSError) -> str:
    """The fault in a few words (`read-only file system`), without the fix."""
    return _OS_FIXES.get(error.errno or -1, error.strerror or type(error).__name__).split(":")[0]


@contextmanager
def user_errors(program: str = "leukexp") -> Iterator[None]:
    """Turn user mistakes raised inside the block into `program: error: ...` and exit code 2; an interrupt into
    one line and exit code 128 + signal."""
    try:
        yield
    except LeukexpError as error:
        _exit(program, str(error))
    except OmegaConfBaseException as error:
        key = getattr(error, "full_key", None)
        message = str(error).splitlines()[0]
        if key and "Missing mandatory value" in message:
            message = f"config key '{key}' has no value: set it on the command line, e.g. {key}=..."
        _exit(program, f"config error: {message}")
    except OSError as error:
        fault_line = os_error_message(error)
        if fault_line is None:
            raise
        _exit(program, fault_line)
    except Interrupted as stop:
        print(f"{program}: stopped by signal {stop.signum}; finished folds are kept, re-run the same command to"
              " resume", file=sys.stderr, flush=True)
        raise SystemExit(stop.exit_code) from None
    except Exception as error:  # a library's error caused by a file-system fault (a log file in a read-only folder)
        fault = file_system_fault(error)
        caused = os_error_message(fault) if fault is not None else None
        if caused is None:
            raise
        _exit(program, caused)


def _exit(program: str, message: str) -> None:
    print(f"{program}: error: {redact(message)}", file=sys.stderr, flush=True)
    raise SystemExit(EXIT_USER_ERROR)
