"""What a run will need of MLflow, begun in one background thread while the run reads its data, loads its backbone
and trains its head: importing MLflow and opening the store (its client, a SQLite store's schema check: 2-3 s on a
2-core machine), then the map of installed distributions that saving the model checks its requirements against
(`importlib.metadata.packages_distributions`, 1-2 s, kept by MLflow for the process).

The steps that need them wait for their part (`wait`); a part that failed is left to the step's own call, which
raises the error where it belongs (a store that does not answer is reported when the run opens its MLflow run).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

STORE, MODEL_SAVING = "store", "model saving"


class _Part(threading.Event):
    """A part of the warm-up: set when done, `failed` when its step raised."""

    failed = False


_parts: dict[str, _Part] = {}
_lock = threading.Lock()


def begin(tracking_uri: str | None, create_folder: bool = False, project_root: str | Path | None = None) -> None:
    """Start the warm-up (`tracking_uri` None: tracking is off, only the model-saving part); a part already begun
    in this process is not begun again."""
    steps: list[tuple[str, Callable[[], None]]] = []
    if tracking_uri is not None:
        steps.append((STORE, lambda: _open_store(tracking_uri, create_folder, project_root)))
    steps.append((MODEL_SAVING, _distribution_map))
    with _lock:
        begun = [(_parts.setdefault(name, _Part()), step) for name, step in steps if name not in _parts]
    if begun:
        threading.Thread(target=_run, args=(begun,), name="mlflow-warm-up", daemon=True).start()


def wait(part: str, timeout_s: float = 120.0) -> bool:
    """Wait until a part begun earlier is done; whether it was begun and succeeded (False at once if none was
    begun). The store part is taken: the next run in this process opens its own store again."""
    with _lock:
        done = _parts.pop(part, None) if part == STORE else _parts.get(part)
    return done is not None and done.wait(timeout_s) and not done.failed


def _run(steps: list[tuple[_Part, Callable[[], None]]]) -> None:
    for done, step in steps:
        try:
            step()
        except Exception:  # left to the step's own call, which raises it where it belongs
            done.failed = True
        finally:
            done.set()


def _open_store(tracking_uri: str, create_folder: bool, project_root: str | Path | None) -> None:
    from leukexp.tracking.store import prepare_store

    prepare_store(tracking_uri, create_folder, project_root)


def _distribution_map() -> None:
    from mlflow.utils import requirements_utils

    requirements_utils._init_packages_to_modules_map()
