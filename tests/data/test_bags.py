"""Bags: folders of images, folds drawn over bags, the bags' own labels, and bad bag input as one line."""

from pathlib import Path

import numpy as np
import pytest

from conftest import TINY_DATA, write_image
from leukexp.data.bags import ImageBags
from leukexp.data.fold_data import build_fold_data
from leukexp.errors import LeukexpError

PATIENTS = ["data=synthetic_patients", "task=binary", "bags=images", "head=abmil", "augmentation=none",
            "data.counts={ALL: 6, HLT: 6}", "data.cells_min=4", "data.cells_max=8", "fold.n_splits=3"]


def test_no_bag_is_split_across_folds_and_each_is_tested_once(compose_plan) -> None:
    tested = []
    for fold in range(3):
        fold_data = build_fold_data(compose_plan(*PATIENTS, f"fold.index={fold}"))
        frame = fold_data.catalog.frame.assign(split=fold_data.split.to_numpy())
        assert (frame.groupby("bag")["split"].nunique() == 1).all(), "every image of a bag in one split"
        tested += list(fold_data.bag_names("test"))
    assert sorted(tested) == sorted(fold_data.bags.bags["bag"]), "each bag in exactly one test fold"


def test_bag_samples_carry_units_offsets_and_the_cells_own_labels(compose_plan) -> None:
    fold_data = build_fold_data(compose_plan(*PATIENTS, "augmentation=flips"))
    train, test = fold_data.samples.train, fold_data.samples.test
    n_train_bags = train["bag_index"].nunique()
    assert train["unit"].nunique() == 3 * n_train_bags, "a training bag once per view"
    assert test["unit"].nunique() == test["bag_index"].nunique() and set(test["view"]) == {0}
    offsets = fold_data.offsets("test")
    assert offsets[0] == 0 and offsets[-1] == len(test) and len(offsets) == test["unit"].nunique() + 1
    assert len(fold_data.labels("test")) == len(offsets) - 1
    own = fold_data.instance_labels("train")
    assert set(np.unique(own)) <= {0, 1} and (own == fold_data.classes.index("ALL")).any(), "blasts are labelled"
    hlt = fold_data.classes.index("HLT")
    healthy = train[train["label_index"] == hlt]
    assert (healthy["instance_index"] == hlt).all(), "a healthy patient has no blast"
    manifest = fold_data.manifest()
    assert {"bag", "instances"} <= set(manifest.columns) and (manifest["instances"] == 1).all()


def test_an_image_head_with_bags_and_an_aggregator_without_are_one_line(compose_cfg) -> None:
    from leukexp.run.validation import validate

    with pytest.raises(LeukexpError, match=r"head=mlp1: scores one image at a time, and bags=images makes bags"):
        validate(compose_cfg(*PATIENTS, "head=mlp1"))
    with pytest.raises(LeukexpError, match=r"^head: an aggregator scores bags, and bags=none makes none"):
        validate(compose_cfg("head=abmil"))
    with pytest.raises(LeukexpError, match=r"^evaluation\.tta: not available with bags"):
        validate(compose_cfg(*PATIENTS, "evaluation.tta=flips"))
    with pytest.raises(LeukexpError, match=r"^bags\.tile=0: expected a whole number"):
        validate(compose_cfg(*TINY_DATA, "bags=tiles", "bags.tile=0", "head=abmil"))


def make_bags(root: Path, layout: dict[str, dict[str, int]]) -> Path:
    seed = 0
    for label, bags in layout.items():
        for bag, count in bags.items():
            (root / label / bag).mkdir(parents=True, exist_ok=True)
            for i in range(count):
                seed += 1
                write_image(root / label / bag / f"{i}.png", seed)
    return root


def test_bad_bag_folders_are_one_line_naming_the_folder(compose_plan, tmp_path: Path) -> None:
    root = make_bags(tmp_path / "bags", {"ALL": {"p1": 2, "p2": 2, "p3": 2}, "HLT": {"q1": 2, "q2": 2, "q3": 2}})
    (root / "HLT" / "q4").mkdir()
    args = ["data=folder", f"data.root={root}", "task=binary", "bags=images", "head=abmil", "augmentation=none",
            "fold.n_splits=2"]
    with pytest.raises(LeukexpError, match=r"bag folder .*HLT/q4 has no images"):
        build_fold_data(compose_plan(*args))
    (root / "HLT" / "q4").rmdir()
    write_image(root / "ALL" / "loose.png", 99)
    with pytest.raises(LeukexpError, match=r"ALL: images lie directly in the class folder \(e\.g\. loose\.png\)"):
        build_fold_data(compose_plan(*args))


def test_a_bag_with_two_labels_is_one_line(compose_plan, make_folder, tmp_path: Path) -> None:
    root = make_folder({"ALL": 3, "HLT": 3})
    groups = tmp_path / "groups.csv"
    rows = [f"ALL/ALL_{i:02d}.png,p{i}" for i in range(3)] + [f"HLT/HLT_{i:02d}.png,q{i}" for i in range(3)]
    groups.write_text("file,group\n" + "\n".join(rows).replace("q0", "p0") + "\n")
    with pytest.raises(LeukexpError, match=r"bag 'p0' holds images of two labels \(ALL, HLT\)"):
        build_fold_data(compose_plan("data=folder", f"data.root={root}", f"data.groups_csv={groups}",
                                     "task=binary", "bags=images", "bags.layout=groups", "head=abmil",
                                     "augmentation=none", "fold.n_splits=2"))


def test_image_bags_with_groups_need_the_groups_file() -> None:
    from leukexp.data.sources import FolderSource

    with pytest.raises(LeukexpError, match=r"^bags\.layout=groups: set data\.groups_csv"):
        ImageBags("groups").prepare(FolderSource(root="x"))
    with pytest.raises(LeukexpError, match=r"^bags\.layout='rows'"):
        ImageBags("rows")


def test_an_instances_file_that_is_not_a_csv_is_one_line(compose_plan) -> None:
    plan = compose_plan(*PATIENTS)
    root = build_fold_data(plan).catalog.root
    (root / "instances.csv").write_bytes(b'"\x00\xff\xfe unterminated')
    with pytest.raises(LeukexpError, match=r"instances\.csv: not a readable CSV"):
        build_fold_data(compose_plan(*PATIENTS))


def test_what_a_bag_folder_leaves_out_is_said_and_a_bag_deeper_down_is_named(compose_plan, tmp_path: Path,
                                                                              caplog) -> None:
    root = make_bags(tmp_path / "bags", {"ALL": {"p1": 2, "p2": 2, "p3": 2, "p4": 2},
                                         "HLT": {"q1": 2, "q2": 2, "q3": 2, "q4": 2}})
    write_image(root / "ALL" / "p1" / "more" / "x.png", 90)
    make_bags(root, {"HLT": {".hidden": 2, "...": 2}})
    args = ["data=folder", f"data.root={root}", "task=binary", "bags=images", "head=abmil", "augmentation=none",
            "fold.n_splits=2", "fold.val_fraction=0.5"]
    fold_data = build_fold_data(compose_plan(*args))
    expected = [f"{label}/{bag}{i}" for label, bag in (("ALL", "p"), ("HLT", "q")) for i in range(1, 5)]
    assert sorted(fold_data.bags.bags["bag"]) == expected
    assert caplog.text.count("ALL/p1/: 1 image(s) in sub-folders left out (e.g. ALL/p1/more/x.png)") == 1
    assert caplog.text.count("HLT/: hidden folder(s) ..., .hidden left out") == 1
    deep = root / "HLT" / "q3" / "a" / "b"
    deep.mkdir(parents=True)
    for path in (root / "HLT" / "q3").glob("*.png"):
        path.rename(deep / path.name)
    with pytest.raises(LeukexpError, match=r"bag folder .*HLT/q3 has no images directly in it; its 2 image\(s\) lie"
                                           r" in sub-folders \(e\.g\. HLT/q3/a/b/"):
        build_fold_data(compose_plan(*args))


def test_own_instance_labels_must_exist_and_be_classes(compose_plan) -> None:
    from leukexp.data.bags import check_own_labels

    fold_data = build_fold_data(compose_plan(*PATIENTS))
    check_own_labels(fold_data.bags, fold_data.classes, fold_data.catalog.root)  # the synthetic cells: fine
    table = fold_data.bags
    foreign = type(table)(table.instances.assign(instance_label="lymphoblast"), table.bags)
    with pytest.raises(LeukexpError, match=r"head\.labels=own: .*instances\.csv labels instances 'lymphoblast', which"
                                           r" are not classes of this task \(ALL, HLT\)"):
        check_own_labels(foreign, fold_data.classes, fold_data.catalog.root)
    none = type(table)(table.instances.assign(instance_label=""), table.bags)
    with pytest.raises(LeukexpError, match=r"head\.labels=own: no instance carries its own label"):
        check_own_labels(none, fold_data.classes, fold_data.catalog.root)


def test_an_instance_listed_twice_with_two_labels_is_one_line(compose_plan) -> None:
    root = build_fold_data(compose_plan(*PATIENTS)).catalog.root
    instances = (root / "instances.csv").read_text().splitlines()
    moved = instances[1].rsplit(",", 1)[0] + ",HLT" if instances[1].endswith("ALL") else instances[1] + "x"
    (root / "instances.csv").write_text("\n".join([*instances, moved]) + "\n")
    with pytest.raises(LeukexpError, match=r"instances\.csv: file '.*' is listed twice with two instance_labels"):
        build_fold_data(compose_plan(*PATIENTS))


def test_too_few_bags_are_counted_as_bags(compose_plan) -> None:
    with pytest.raises(LeukexpError, match=r"leaves fewer validation bags than the 2 classes \(\d+ training bags"):
        build_fold_data(compose_plan(*PATIENTS, "data.counts={ALL: 3, HLT: 3}", "fold.val_fraction=0.1"))


def test_a_group_whose_images_lie_in_two_class_folders_is_one_line(compose_plan, make_folder, tmp_path: Path) -> None:
    root = make_folder({"ALL": 4, "HLT": 4, "Pre": 4})  # ALL and Pre both malignant: one label, two folders
    groups = tmp_path / "groups.csv"
    rows = [f"{label}/{label}_{i:02d}.png,{label}{i}" for label in ("ALL", "HLT", "Pre") for i in range(4)]
    groups.write_text("file,group\n" + "\n".join(rows).replace("Pre0", "ALL0") + "\n")
    args = ["data=folder", f"data.root={root}", f"data.groups_csv={groups}", "task=folders",
            "task.mapping={malignant: [ALL, Pre], benign: [HLT]}", "bags=images", "bags.layout=groups",
            "head=abmil", "augmentation=none", "fold.n_splits=2"]
    with pytest.raises(LeukexpError, match=r"group 'ALL0' names images in two class folders \(ALL/, Pre/\)"):
        build_fold_data(compose_plan(*args))
