"""A search's Optuna study on disk: the journal file beside the MLflow store, checked before Optuna reads it (a
write cut short by a kill is dropped, any other damage is one line), and which trials count towards `n_trials`."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from leukexp.errors import LeukexpError

log = logging.getLogger("leukexp")


def study_storage(config: DictConfig, name: str, storage: str | None) -> Path:
    """The study's journal file: `storage`, else beside a local MLflow store (`<store folder>/optuna/`), else under
    the project's `mlruns/optuna/` (a tracking server's store is not on this file system)."""
    if storage:
        return Path(storage).expanduser()
    from leukexp.tracking.store import local_store_dir

    folder = local_store_dir(str(config.mlflow.tracking_uri)) if config.mlflow.enabled else None
    return (folder or Path(str(config.paths.root_dir)) / "mlruns") / "optuna" / f"{name}.journal"


INTERRUPTED = "leukexp_interrupted"


JOURNAL_SETTLED_SECONDS = 10.0  # a cut-short last line older than this is a killed write, not one in progress


def check_journal(path: Path) -> None:
    """A journal Optuna can read, before it reads it: a last line cut short by a killed write (older than
    `JOURNAL_SETTLED_SECONDS`) is dropped with a warning (the trials before it are kept; the file as it was is kept
    beside, `.damaged`); any other line that is not a journal entry (junk, bytes that are not UTF-8) is one line
    naming the file, the line and how to go on."""
    import json
    import time

    if not path.is_file():
        return
    data = path.read_bytes()
    lines = data.split(b"\n")
    ends_whole = data.endswith(b"\n") or not data
    for number, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        try:
            entry = json.loads(raw.decode("utf-8"))
            if not isinstance(entry, dict) or "op_code" not in entry:
                raise ValueError("not an Optuna journal operation")
            continue
        except (UnicodeDecodeError, ValueError) as error:
            why = "bytes that are not UTF-8" if isinstance(error, UnicodeDecodeError) else "not a journal entry"
            last = number == len(lines) and not ends_whole
        if last and time.time() - path.stat().st_mtime >= JOURNAL_SETTLED_SECONDS:
            from leukexp.files import atomic_path

            path.with_name(path.name + ".damaged").write_bytes(data)
            with atomic_path(path) as staging:
                staging.write_bytes(b"\n".join(lines[:-1]) + b"\n")
            log.warning("search journal %s: its last line was cut short (a killed write); it is dropped and the %d"
                        " entries before it kept (the file as it was: %s.damaged)", path, number - 1, path.name)
            return
        raise LeukexpError(f"hydra.sweeper.storage: {path}: line {number} is {why}; remove that line to continue the"
                           " search, or move the file aside to start it afresh")


def journal(path: Path) -> Any:
    """A study's Optuna storage: the journal file at `path` (Optuna's own logging kept to warnings)."""
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return JournalStorage(JournalFileBackend(str(path)))


def counted(study: Any) -> list[Any]:
    """The trials that count towards `n_trials`: finished (complete, pruned, failed), not interrupted by a kill."""
    return [t for t in study.trials if t.state.is_finished() and not t.user_attrs.get(INTERRUPTED)]
