"""What models saved by earlier versions need to load: the loader module their MLmodel file names
(`leukexp.serving`, now `leukexp.inference.serving`), kept importable as a thin module forwarding to the new one.

Backbone `_target_`s of earlier saved models name module paths (`leukexp.backbones.timm_backbone.TimmBackbone`);
they load as long as that module holds the class (`registry.target_names`); a backbone module that moves adds its old
path here. Configs name the public names (`leukexp.backbones.TimmBackbone`), which never move.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
from types import ModuleType

# old module path -> where it lives now (docs/migration.md lists them)
LEGACY_MODULES = {"leukexp.serving": "leukexp.inference.serving"}


class _Forward(importlib.abc.Loader):
    """Loads an old path as a module that forwards every name to the new one."""

    def __init__(self, target: str) -> None:
        self.target = target

    def exec_module(self, module: ModuleType) -> None:
        """Fill the old module with the new one's names."""
        new = importlib.import_module(self.target)
        module.__dict__.update({k: v for k, v in vars(new).items() if not k.startswith("__")})
        module.__doc__ = f"Moved to `{self.target}` (this name is kept for saved models)."


class LegacyFinder(importlib.abc.MetaPathFinder):
    """Finds old module paths (`LEGACY_MODULES`) and loads them as forwards to the new ones."""

    def find_spec(self, fullname: str, path: object = None,
                  target: object = None) -> importlib.machinery.ModuleSpec | None:
        """A spec for an old path; None for every other name."""
        now = LEGACY_MODULES.get(fullname)
        return None if now is None else importlib.machinery.ModuleSpec(fullname, _Forward(now))


def install() -> None:
    """Put the finder on `sys.meta_path` once (after the standard finders: a real module always wins)."""
    if not any(isinstance(finder, LegacyFinder) for finder in sys.meta_path):
        sys.meta_path.append(LegacyFinder())
