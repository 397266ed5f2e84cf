"""Module paths of earlier versions, kept importable: saved MLflow models name their loader module
(`leukexp.serving`), and users' scripts import from where a module used to be (`leukexp.cell.pipeline`).

Each old path is a thin module re-exporting the new one's names; nothing is duplicated and no file stands at
the old place. `LEGACY_MODULES` is the table docs/migration.md lists.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
from types import ModuleType

# old module path -> where it lives now (a package maps its submodules too)
LEGACY_MODULES = {
    "leukexp.serving": "leukexp.inference.serving",
    "leukexp.cell": "leukexp.run",
    "leukexp.data.study": "leukexp.data.fold_data",
    "leukexp.features.extract": "leukexp.features.embed",
    "leukexp.train": "leukexp.commands.train",
    "leukexp.extract": "leukexp.commands.extract",
    "leukexp.report.cli": "leukexp.commands.report",
    "leukexp.inference.cli": "leukexp.commands.predict",
}
# old names of classes and functions inside moved modules
LEGACY_NAMES = {"Study": "FoldData", "build_study": "build_fold_data"}


def current_name(old: str) -> str | None:
    """Where the module `old` lives now (None when it is no old path)."""
    for before, after in LEGACY_MODULES.items():
        if old == before or old.startswith(before + "."):
            return after + old[len(before):]
    return None


class _Forward(importlib.abc.Loader):
    """Loads an old path as a module that forwards every name to the new one."""

    def __init__(self, target: str) -> None:
        self.target = target

    def exec_module(self, module: ModuleType) -> None:
        """Fill the old module with the new one's names (and the renamed ones under their old names)."""
        new = importlib.import_module(self.target)
        module.__dict__.update({k: v for k, v in vars(new).items() if not k.startswith("__")})
        module.__dict__.update({old: getattr(new, now) for old, now in LEGACY_NAMES.items() if hasattr(new, now)})
        module.__doc__ = f"Moved to `{self.target}` (this name is kept for saved models and scripts)."


class LegacyFinder(importlib.abc.MetaPathFinder):
    """Finds old module paths (`LEGACY_MODULES`) and loads them as forwards to the new ones."""

    def find_spec(self, fullname: str, path: object = None,
                  target: object = None) -> importlib.machinery.ModuleSpec | None:
        """A spec for an old path; None for every other name."""
        now = current_name(fullname)
        if now is None:
            return None
        spec = importlib.util.find_spec(now)
        is_package = spec is not None and spec.submodule_search_locations is not None
        return importlib.machinery.ModuleSpec(fullname, _Forward(now), is_package=is_package)


def install() -> None:
    """Put the finder on `sys.meta_path` once (after the standard finders: a real module always wins)."""
    if not any(isinstance(finder, LegacyFinder) for finder in sys.meta_path):
        sys.meta_path.append(LegacyFinder())
