"""scripts/uv_from_pip.py: pip's package sources as uv options for `make install`."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
from uv_from_pip import pip_settings, uv_options

LISTING = """:env:.find-links='/env/wheels'
global.cert='/etc/ssl/certs/ca-certificates.crt'
global.constraint='/etc/pip/constraints.txt'
global.extra-index-url='file:///a/simple file:///b/simple'
global.find-links='/file/wheels'
"""


def test_pips_sources_become_uv_options_the_environment_winning() -> None:
    settings = pip_settings(LISTING)
    assert settings == {"constraint": ["/etc/pip/constraints.txt"],
                        "extra-index-url": ["file:///a/simple", "file:///b/simple"],
                        "find-links": ["/env/wheels"]}, "cert is not a source; PIP_FIND_LINKS wins over the file"
    assert uv_options(settings) == [
        "--constraint", "/etc/pip/constraints.txt", "--extra-index-url", "file:///a/simple",
        "--extra-index-url", "file:///b/simple", "--find-links", "/env/wheels",
        "--index-strategy", "unsafe-best-match"]


def test_no_configuration_gives_no_options() -> None:
    assert uv_options(pip_settings("")) == []
