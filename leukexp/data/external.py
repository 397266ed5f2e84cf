"""External validation sets (`evaluation.external`): another lab's images, scored by every fold's trained model.

`evaluation.external` is null (none), the name of a `data` option (`synthetic_b`, `all4class`), a folder of class
folders (`evaluation.external=/data/lab_b`), or a mapping of `data` keys: a folder's (`{root: PATH, groups_csv: ...}`),
those of the option named by `config` (`{config: synthetic_b, counts: {ALL: 20, HLT: 20}}`), or a whole data config
with its own `_target_`. Its classes map through the task's aliases exactly as the training data's do, and must give
the same classes.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from leukexp.config.external import KEY
from leukexp.data.sources import Catalog, FolderSource, class_folders
from leukexp.data.tasks import Task
from leukexp.errors import LeukexpError


def external_source(config: Mapping[str, Any] | None) -> FolderSource | None:
    """The external set's data source (not scanned yet) from its resolved data config (`RunPlan.evaluation.external`),
    or None without one."""
    from leukexp.config.compose import build

    return None if config is None else build(dict(config), KEY, _convert_="all")


def check_external(config: Mapping[str, Any] | None, task: Task) -> None:
    """Cheap checks before any work: the folder exists and its class folders map onto the task's classes (folder
    names only; the images are read when the run scores them)."""
    source = external_source(config)
    if source is None or source.root in (None, ""):  # a generated set (synthetic) makes its own folder
        return
    root = Path(str(source.root)).expanduser()
    folders = [folder.name for folder in class_folders(root, f"{KEY}.root")]
    try:
        task.check_mapping_found(folders)
        labels = {label for name in folders if (label := task.resolve_folder(name)) is not None}
        task.resolve_classes(labels)
    except LeukexpError as error:
        raise LeukexpError(f"{KEY}: {error}") from None


def scan_external(config: Mapping[str, Any] | None, task: Task, classes: list[str],
                  study: Catalog | None = None) -> Catalog | None:
    """The external set's catalog (images verified and labelled like the training data's), or None without one;
    its classes must be the study's, and none of its images (by content) may be one of the `study`'s: a set that
    shares images with the folds would grade the model on what it trained on."""
    source = external_source(config)
    if source is None:
        return None
    try:
        catalog = source.scan(task)
    except LeukexpError as error:
        raise LeukexpError(f"{KEY}: {error}") from None
    if catalog.classes != classes:
        raise LeukexpError(f"{KEY}: its classes ({', '.join(catalog.classes)}) are not the study's"
                           f" ({', '.join(classes)}); add aliases to the task or use a set with the same classes")
    if study is not None:
        shared = catalog.frame["sha1"].isin(set(study.frame["sha1"]))
        if shared.any():
            example = catalog.frame.loc[shared, "file"].iloc[0]
            raise LeukexpError(f"{KEY}: {int(shared.sum())} of its {len(catalog)} images are also in the study's data"
                               f" (the same content, e.g. {example}); an external set must be images the folds never"
                               " saw: remove them from one of the two")
    return catalog
