"""The kinds of saved heads leukexp loads, and nothing else (a model folder cannot name code to run)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from leukexp.errors import LeukexpError
from leukexp.heads.base import Head
from leukexp.heads.sklearn_head import SklearnHead
from leukexp.heads.torch_head import TorchHead

HEAD_KINDS: dict[str, type[Head]] = {TorchHead.kind: TorchHead, SklearnHead.kind: SklearnHead}


def load_head(folder: Path, spec: dict[str, Any]) -> Head:
    """The head saved in `folder` with this spec (its `kind` picks the adapter)."""
    kind = spec.get("kind")
    if kind not in HEAD_KINDS:
        raise LeukexpError(f"{folder}: unknown head kind {kind!r}; known: {', '.join(HEAD_KINDS)}")
    return HEAD_KINDS[kind].load(folder, spec)
