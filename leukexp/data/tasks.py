"""Tasks: which class folders become which labels, and in what order."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from leukexp.errors import LeukexpError


def normalize_name(name: str) -> str:
    """Folder-name key used for matching: lower case, spaces and hyphens as underscores."""
    return name.strip().lower().replace(" ", "_").replace("-", "_")


@dataclass
class Task:
    """A classification task over class folders.

    Args:
        name: the task's name, logged as the `task` tag.
        classes: the labels in output order; `None` takes them from `mapping` or, failing that, from the
            class folders found (sorted).
        aliases: study label -> folder names that mean it (`HLT: [healthy, normal, hem]`).
        mapping: label -> folder names, for data sets whose folders are not study labels.
        ignore: labels whose folders are skipped silently (AML, CLL, CML in the binary task).
        epochs: training epochs for this task (binary 10, multiclass 25, as the study).
        positive_class: the class reported as positive in binary summaries.
    """

    name: str
    classes: list[str] | None = None
    aliases: dict[str, list[str]] | None = None
    mapping: dict[str, list[str]] | None = None
    ignore: list[str] = field(default_factory=list)
    epochs: int = 25
    positive_class: str | None = None

    def __post_init__(self) -> None:
        self.classes = list(self.classes) if self.classes is not None else None
        self.aliases = _as_lists(self.aliases)
        self.mapping = _as_lists(self.mapping)
        self.ignore = list(self.ignore)
        if self.classes is None and self.mapping:
            self.classes = list(self.mapping)
        _check_one_label_per_folder(self.mapping, "task.mapping")
        _check_one_label_per_folder(self.aliases, "task.aliases")

    def check_mapping_found(self, folders: Iterable[str]) -> None:
        """Every folder named in `task.mapping` must exist: a typo would silently drop a class's images."""
        if not self.mapping:
            return
        folders = list(folders)  # read twice below (a generator would print an empty list in the error)
        found = {normalize_name(f) for f in folders}
        for label, names in self.mapping.items():
            for name in names:
                if normalize_name(name) not in found:
                    raise LeukexpError(
                        f"task.mapping: folder '{name}' (under {label}) is not in data.root"
                        f" (class folders: {', '.join(sorted(folders))}); fix the name or remove it"
                    )

    def resolve_folder(self, folder: str) -> str | None:
        """Return the label a class folder holds, `None` for an ignored one; raise for an unknown one."""
        key = normalize_name(folder)
        if self.mapping:
            label = _lookup(self.mapping, key)
        elif self.aliases:
            label = _lookup(self.aliases, key)
        else:
            label = folder
        if label is not None and label in self.ignore:
            return None
        if label is None or (self.classes is not None and label not in self.classes):
            raise LeukexpError(self._unknown_folder_message(folder))
        return label

    def resolve_classes(self, found_labels: Iterable[str]) -> list[str]:
        """The task's class list given the labels found; every class must be present."""
        found = set(found_labels)
        classes = self.classes if self.classes is not None else sorted(found)
        missing = [label for label in classes if label not in found]
        if missing:
            hint = self._known_names(missing[0])
            raise LeukexpError(
                f"task '{self.name}' needs class {missing[0]} but no class folder maps to it"
                f" (folder names accepted: {hint}); add the folder or an alias in the task config"
            )
        if len(classes) < 2:
            raise LeukexpError(f"task '{self.name}' found only {len(classes)} class; a task needs two or more")
        return list(classes)

    def _known_names(self, label: str) -> str:
        table = self.mapping or self.aliases or {}
        return ", ".join(table.get(label, [label]))

    def _unknown_folder_message(self, folder: str) -> str:
        if self.mapping:
            where = "task.mapping"
        elif self.aliases:
            where = "task.aliases"
        else:
            where = "the task's classes"
        known = ", ".join(self.classes or [])
        return (
            f"class folder '{folder}' is not a class of task '{self.name}' (classes: {known});"
            f" rename the folder, add it to {where}, or use task=folders"
        )


def _as_lists(table: Mapping[str, Sequence[str] | str] | None) -> dict[str, list[str]] | None:
    if table is None:
        return None
    return {str(label): [names] if isinstance(names, str) else [str(n) for n in names]
            for label, names in table.items()}


def _check_one_label_per_folder(table: dict[str, list[str]] | None, key: str) -> None:
    owner: dict[str, str] = {}
    for label, names in (table or {}).items():
        for name in names:
            earlier = owner.setdefault(normalize_name(name), label)
            if earlier != label:
                raise LeukexpError(f"{key}: folder '{name}' is listed under both {earlier} and {label};"
                                   " keep it under one label")


def _lookup(table: dict[str, list[str]], key: str) -> str | None:
    for label, names in table.items():
        if key == normalize_name(label) or key in {normalize_name(name) for name in names}:
            return label
    return None
