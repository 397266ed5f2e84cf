"""Credentials never leave the process: user info in URIs is redacted wherever leukexp writes or prints text."""

from __future__ import annotations

import logging
import re

# scheme://user:password@host or scheme://token@host (http, https, postgresql, mysql, s3, ...), also as Hydra prints
# overrides, with escaped colons (`http\://alice\:pw@host`)
_USER_INFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.-]*\\?://)(?P<user>[^/@\s:\\]*)(?:\\?:[^/@\s]*)?@")
REDACTED = "***"


def redact(text: str) -> str:
    """`text` with the user info of every URI in it replaced (`http://alice:pw@host` -> `http://***@host`)."""
    return _USER_INFO.sub(lambda m: f"{m['scheme']}{REDACTED}@", text)


def redact_logs() -> None:
    """Every log record of this process is created with its message redacted (Hydra's launchers log each job's
    overrides, a tracking URI's credentials included). Idempotent; survives logging being configured again."""
    factory = logging.getLogRecordFactory()
    if getattr(factory, "leukexp_redacts", False):
        return

    def redacting(*args: object, **kwargs: object) -> logging.LogRecord:
        record = factory(*args, **kwargs)
        if "@" in (message := record.getMessage()) and (clean := redact(message)) != message:
            record.msg, record.args = clean, None
        return record

    setattr(redacting, "leukexp_redacts", True)  # noqa: B010 - a mark on a function object, read by getattr above
    logging.setLogRecordFactory(redacting)
