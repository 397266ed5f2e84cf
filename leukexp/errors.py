"""User-facing errors: one clear line, a non-zero exit, no traceback."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager

from omegaconf.errors import OmegaConfBaseException

EXIT_USER_ERROR = 2


class LeukexpError(Exception):
    """A mistake in the user's input (data, config, files), reported as one line."""


@contextmanager
def user_errors(program: str = "leukexp") -> Iterator[None]:
    """Turn user mistakes raised inside the block into `program: error: ...` and exit code 2."""
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


def _exit(program: str, message: str) -> None:
    print(f"{program}: error: {message}", file=sys.stderr, flush=True)
    raise SystemExit(EXIT_USER_ERROR)
