"""The kinds of saved heads leukexp loads, and nothing else (a model folder cannot name code to run): the adapters
registered with the `Head` interface (importing them here registers them)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from leukexp.heads import differential, mil, sklearn_head, torch_head  # noqa: F401 - each adapter registers its kind on import
from leukexp.heads.base import Head


def load_head(folder: Path, spec: dict[str, Any]) -> Head:
    """The head saved in `folder` with this spec (its `kind` picks the adapter)."""
    return Head.of_kind(spec.get("kind"), str(folder)).load(folder, spec)
