"""`evaluation.external`: a data config, a folder or a mapping, its classes checked against the task's."""

from pathlib import Path

import pytest

from leukexp.config.compose import build
from leukexp.config.external import external_config
from leukexp.data.external import check_external, scan_external
from leukexp.errors import LeukexpError


def task_of(cfg):
    return build(cfg.task, "task", _convert_="all")


def test_a_folder_whose_classes_map_is_accepted(compose_cfg, make_folder, tmp_path: Path) -> None:
    root = make_folder({"ALL": 2, "normal": 2}, tmp_path / "lab_b")  # `normal` is an alias of HLT
    cfg = compose_cfg("task=binary", f"evaluation.external={root}")
    check_external(external_config(cfg), task_of(cfg))
    catalog = scan_external(external_config(cfg), task_of(cfg), ["ALL", "HLT"])
    assert catalog.frame["label"].value_counts().to_dict() == {"ALL": 2, "HLT": 2}
    mapped = compose_cfg("task=binary", f"evaluation.external={{root: {root}, on_bad_image: skip}}")
    assert external_config(mapped)["on_bad_image"] == "skip" and external_config(mapped)["name"] == "lab_b"


def test_a_folder_whose_classes_do_not_match_is_one_line(compose_cfg, make_folder, tmp_path: Path) -> None:
    root = make_folder({"Benign": 2, "Early": 2}, tmp_path / "other")
    cfg = compose_cfg("task=binary", f"evaluation.external={root}")
    with pytest.raises(LeukexpError, match=r"^evaluation\.external: class folder 'Benign' is not a class"):
        check_external(external_config(cfg), task_of(cfg))
    partial = make_folder({"ALL": 2}, tmp_path / "partial")
    cfg = compose_cfg("task=binary", f"evaluation.external={partial}")
    with pytest.raises(LeukexpError, match=r"^evaluation\.external: task 'binary' needs class HLT"):
        check_external(external_config(cfg), task_of(cfg))


@pytest.mark.parametrize(("value", "message"), [
    ("/no/such/folder", "neither a data config"),
    ("{root: /no/such/folder}", r"evaluation\.external\.root=/no/such/folder: no such folder"),
    ("{rot: /x}", r"evaluation\.external\.rot: not a key"),
])
def test_bad_external_values_are_one_line(compose_cfg, value: str, message: str) -> None:
    cfg = compose_cfg(f"evaluation.external={value}")
    with pytest.raises(LeukexpError, match=message):
        check_external(external_config(cfg), task_of(cfg))


def test_an_external_set_sharing_images_with_the_study_is_refused(compose_cfg, make_folder, tmp_path: Path) -> None:
    import shutil

    from conftest import write_image
    from leukexp.data.sources import FolderSource

    study = make_folder({"ALL": 3, "HLT": 3}, tmp_path / "study")
    external = tmp_path / "lab_b"
    for seed, name in enumerate(["ALL/a.png", "ALL/b.png", "normal/c.png", "normal/d.png"], start=100):
        write_image(external / name, seed)
    cfg = compose_cfg("task=binary", f"evaluation.external={external}")
    catalog = FolderSource(study).scan(task_of(cfg))
    assert len(scan_external(external_config(cfg), task_of(cfg), ["ALL", "HLT"], catalog)) == 4  # apart: fine
    shutil.copy(next((study / "HLT").iterdir()), external / "normal" / "renamed_copy.png")
    with pytest.raises(LeukexpError, match=r"^evaluation\.external: 1 of its 5 images are also in the study's data"
                                           r" \(the same content, e\.g\. normal/renamed_copy\.png\)"):
        scan_external(external_config(cfg), task_of(cfg), ["ALL", "HLT"], catalog)
