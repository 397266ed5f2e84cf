"""Credentials never leave the process: user info in URIs is redacted wherever leukexp writes or prints text."""

from __future__ import annotations

import re

# scheme://user:password@host or scheme://token@host (http, https, postgresql, mysql, s3, ...)
_USER_INFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.-]*://)(?P<user>[^/@\s:]*)(?::[^/@\s]*)?@")
REDACTED = "***"


def redact(text: str) -> str:
    """`text` with the user info of every URI in it replaced (`http://alice:pw@host` -> `http://***@host`)."""
    return _USER_INFO.sub(lambda m: f"{m['scheme']}{REDACTED}@", text)
