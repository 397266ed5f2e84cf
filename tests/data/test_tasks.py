"""Tasks: alias tables, ignored classes, folder mappings."""

import pytest

from leukexp.data.tasks import Task
from leukexp.errors import LeukexpError

ALIASES = {"ALL": ["ALL"], "AML": ["AML"], "CLL": ["CLL"], "CML": ["CML"], "HLT": ["HLT", "healthy", "hem", "normal"]}


def multiclass() -> Task:
    return Task("multiclass", classes=["ALL", "AML", "CLL", "CML", "HLT"], aliases=ALIASES)


def binary() -> Task:
    return Task("binary", classes=["ALL", "HLT"], aliases=ALIASES, ignore=["AML", "CLL", "CML"], epochs=10)


@pytest.mark.parametrize("folder", ["healthy", "Normal", "HEM", "hlt", "HLT"])
def test_aliases_map_to_the_study_label(folder: str) -> None:
    assert multiclass().resolve_folder(folder) == "HLT"


def test_binary_ignores_other_leukemias() -> None:
    task = binary()
    assert task.resolve_folder("AML") is None
    assert task.resolve_folder("all") == "ALL"


def test_unknown_folder_is_an_error_that_names_it() -> None:
    with pytest.raises(LeukexpError, match="class folder 'Monocytes' is not a class of task 'multiclass'"):
        multiclass().resolve_folder("Monocytes")


def test_folders_task_takes_folder_names_sorted() -> None:
    task = Task("folders")
    assert task.resolve_folder("Pro") == "Pro"
    assert task.resolve_classes(["Pro", "Benign", "Early"]) == ["Benign", "Early", "Pro"]


def test_folder_mapping_groups_folders_into_labels() -> None:
    task = Task("folders", mapping={"malignant": ["Early", "Pre", "Pro"], "benign": "Benign"})
    assert task.classes == ["malignant", "benign"]
    assert [task.resolve_folder(f) for f in ("Early", "pre", "Benign")] == ["malignant", "malignant", "benign"]
    with pytest.raises(LeukexpError, match=r"add it to task\.mapping"):
        task.resolve_folder("Other")


def test_missing_class_is_reported() -> None:
    with pytest.raises(LeukexpError, match="needs class HLT"):
        binary().resolve_classes(["ALL"])


def test_a_mapping_typo_lists_the_folders_that_exist() -> None:
    task = Task("t", mapping={"malignant": ["ALL", "Nope"], "benign": ["HLT"]})
    with pytest.raises(LeukexpError, match=r"class folders: ALL, HLT\)"):
        task.check_mapping_found(name for name in ["ALL", "HLT"])  # a generator, as the scan passes it
