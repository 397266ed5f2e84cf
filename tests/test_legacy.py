"""Module paths of earlier versions still import: saved models' loader and users' scripts."""

import importlib

import pytest


def test_a_model_saved_with_the_old_loader_module_still_finds_it() -> None:
    from leukexp.inference.serving import _load_pyfunc

    assert importlib.import_module("leukexp.serving")._load_pyfunc is _load_pyfunc


@pytest.mark.parametrize(("old", "name", "now"), [
    ("leukexp.cell.pipeline", "train", "leukexp.run.pipeline"),
    ("leukexp.cell.validation", "validate", "leukexp.run.validation"),
    ("leukexp.data.study", "build_study", "leukexp.data.fold_data"),
    ("leukexp.data.study", "Study", "leukexp.data.fold_data"),
    ("leukexp.train", "main", "leukexp.commands.train"),
    ("leukexp.report.cli", "main", "leukexp.commands.report"),
])
def test_old_paths_forward_to_where_the_code_lives_now(old: str, name: str, now: str) -> None:
    from leukexp.legacy import LEGACY_NAMES

    new = importlib.import_module(now)
    assert getattr(importlib.import_module(old), name) is getattr(new, LEGACY_NAMES.get(name, name))


def test_a_name_that_never_existed_is_still_an_import_error() -> None:
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module("leukexp.cell.nothing_here")
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module("leukexp.nothing_here")
