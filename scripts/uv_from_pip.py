"""Print pip's package sources as uv options, for `make install`: uv reads no pip.conf and no PIP_* variables, so
the indexes, wheel folders and constraints pip is configured with (files or environment) are passed on explicitly.

    uv pip install $(python scripts/uv_from_pip.py) ...
"""

from __future__ import annotations

import shlex
import subprocess
import sys

# pip's setting -> uv's option (both take the values the same way: URLs or paths, several separated by spaces)
OPTIONS = {"index-url": "--index-url", "extra-index-url": "--extra-index-url", "find-links": "--find-links",
           "constraint": "--constraint"}


def pip_settings(listing: str) -> dict[str, list[str]]:
    """`pip config list` output (`global.extra-index-url='a b'`, `:env:.find-links='/w'`) -> setting: values; the
    environment (PIP_*) wins over the files, as in pip."""
    settings: dict[str, list[str]] = {}
    for line in sorted(listing.splitlines(), key=lambda line: line.startswith(":env:")):
        key, sep, value = line.partition("=")
        if not sep:
            continue
        name = key.rsplit(".", 1)[-1]
        if name in OPTIONS:
            settings[name] = shlex.split(value)[0].split() if value.strip() else []
    return settings


def uv_options(settings: dict[str, list[str]]) -> list[str]:
    """uv options for pip's settings; with more than one index, pip's rule (the best version of any index)."""
    options = [item for name, values in settings.items() for value in values for item in (OPTIONS[name], value)]
    if settings.get("extra-index-url"):
        options += ["--index-strategy", "unsafe-best-match"]
    return options


def main() -> int:
    """Print the uv options for this environment's pip configuration."""
    listing = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True).stdout
    print(shlex.join(uv_options(pip_settings(listing))))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
