"""Public names: what configs and saved models name (`_target_: leukexp.heads.mlp`), re-exported by each package
from the module that holds it today, imported only when first asked for (PEP 562), so a file can move without
breaking a config or a saved model, and `import leukexp.heads` stays cheap."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any


def lazy_exports(package: str, names: Mapping[str, str]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """A package's `__getattr__` and `__dir__` for `names` (public name -> module inside the package that holds it
    under the same name, or `module:attribute` where it is named otherwise there)."""

    def __getattr__(name: str) -> Any:  # noqa: N807 - the module-level hook's own name
        if name not in names:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        module, _, attribute = names[name].partition(":")
        value = getattr(importlib.import_module(f"{package}.{module}"), attribute or name)
        globals_of_package = vars(importlib.import_module(package))
        globals_of_package[name] = value  # found directly from now on
        return value

    def __dir__() -> list[str]:  # noqa: N807
        return sorted({*vars(importlib.import_module(package)), *names})

    return __getattr__, __dir__
