"""Bags: folders of images or tiles of large images, folds drawn over bags, and bad bag input as one line."""

from pathlib import Path

import cv2
import numpy as np
import pytest

from conftest import TINY_DATA, write_image
from leukexp.data.augment import OfflineViews
from leukexp.data.bags import GRID_COLUMNS, ImageBags, TileBags, TileViews, Tiling
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


def test_tiles_cover_the_image_at_native_resolution_and_blank_ones_are_dropped() -> None:
    tiling = Tiling(64, 64)
    grid = tiling.grid(150, 200)
    assert len(grid) == 2 * 3 and tiling.box(grid[-1]) == (128, 64, 64, 64)
    assert tiling.box(GRID_COLUMNS + 1) == (64, 64, 64, 64)
    image = np.full((150, 200, 3), 230, np.uint8)  # empty glass ...
    cv2.circle(image, (160, 100), 25, (90, 40, 120), -1)  # ... and one cell, in the tile at column 2, row 1
    kept = TileBags(tile=64).kept_tiles(image, "field.png")
    assert [tiling.box(t)[:2] for t in kept] == [(128, 64)]
    with pytest.raises(LeukexpError, match=r"^field\.png: 50x40 px is smaller than one tile \(bags\.tile=64\)"):
        TileBags(tile=64).kept_tiles(np.zeros((40, 50, 3), np.uint8), "field.png")


def test_a_tile_view_is_its_crop_and_its_key_names_its_box() -> None:
    views = TileViews(Tiling(32, 16), OfflineViews(repeats=0))
    image = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    index = views.view_index(GRID_COLUMNS + 2, 0)  # row 1, column 2: (32, 16)
    assert np.array_equal(views.apply(image, index, "k"), image[16:48, 32:64])
    assert views.view_fingerprint(index) == "tile@32,16+32x32|original"
    assert views.split(index) == (GRID_COLUMNS + 2, 0)


def test_image_bags_with_groups_need_the_groups_file() -> None:
    from leukexp.data.sources import FolderSource

    with pytest.raises(LeukexpError, match=r"^bags\.layout=groups: set data\.groups_csv"):
        ImageBags("groups").prepare(FolderSource(root="x"))
    with pytest.raises(LeukexpError, match=r"^bags\.layout='rows'"):
        ImageBags("rows")


@pytest.mark.parametrize("damage", [b"\x00\xff{not json", b'{"abc": "1,2"}', b'[1, 2]', b'{"abc": [-1]}'])
def test_a_damaged_tile_list_file_is_made_again(compose_plan, tmp_path: Path, damage: bytes) -> None:
    args = [*TINY_DATA, "bags=tiles", "bags.tile=32", "head=abmil", "task=binary", "augmentation=none",
            "fold.n_splits=2"]
    first = build_fold_data(compose_plan(*args)).bags.instances
    (store,) = (tmp_path / "cache" / "tiles").glob("*.json")
    store.write_bytes(damage)
    again = build_fold_data(compose_plan(*args)).bags.instances
    assert again.equals(first)
    assert store.read_text().startswith("{") and "abc" not in store.read_text()


def test_an_instances_file_that_is_not_a_csv_is_one_line(compose_plan) -> None:
    plan = compose_plan(*PATIENTS)
    root = build_fold_data(plan).catalog.root
    (root / "instances.csv").write_bytes(b'"\x00\xff\xfe unterminated')
    with pytest.raises(LeukexpError, match=r"instances\.csv: not a readable CSV"):
        build_fold_data(compose_plan(*PATIENTS))


def one_colour_png(path: Path, width: int, height: int, grey: int = 0) -> Path:
    """A real PNG of one grey level, encoded a row at a time (a 10,000 x 10,000 field is ~400 KB on disk and 300 MB
    decoded, without this test ever holding the pixels)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    packer, row, body = zlib.compressobj(9), b"\x00" + bytes([grey]) * width, []
    body = [packer.compress(row) for _ in range(height)] + [packer.flush()]
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit grey
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", b"".join(body))
                     + chunk(b"IEND", b""))
    return path


@pytest.mark.parametrize(("height", "width"), [(8, 40_000), (40_000, 8)])
def test_the_tiles_of_a_very_wide_or_tall_image_lie_inside_it_and_are_distinct(height: int, width: int) -> None:
    tiling = Tiling(4, 4)  # 10,000 tile columns (or rows): the old 4,096-column grid aliased them
    grid = tiling.grid(height, width)
    boxes = [tiling.box(t) for t in grid]
    assert len(grid) == (height // 4) * (width // 4) == len(set(boxes))
    assert all(x >= 0 and x + w <= width and y >= 0 and y + h <= height for x, y, w, h in boxes)
    covered = {(x, y) for x, y, _, _ in boxes}
    assert covered == {(x, y) for x in range(0, width - 3, 4) for y in range(0, height - 3, 4)}, "every part tiled"
    views = TileViews(tiling, OfflineViews(repeats=0))
    assert views.split(views.view_index(grid[-1], 0)) == (grid[-1], 0)


def test_the_candidate_tiles_of_a_huge_field_are_counted_from_its_header_before_decoding(tmp_path: Path) -> None:
    import tracemalloc

    import pandas as pd

    field = one_colour_png(tmp_path / "field.png", 10_000, 10_000, 200)
    assert field.stat().st_size < 1_000_000
    frame = pd.DataFrame({"path": [str(field)], "file": ["HLT/field.png"], "sha1": ["x"]})
    tracemalloc.start()
    with pytest.raises(LeukexpError, match=r"^HLT/field\.png: 10,000 x 10,000 px cut into 2 px tiles every 2 px is"
                                           r" 25,000,000 candidate tiles, more than bags\.max_candidates=1,000,000"):
        TileBags(tile=2)._list_tiles(frame, [0])
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 20_000_000, "refused before the 300 MB of pixels were decoded"


def test_a_tiling_pass_holds_memory_of_the_field_not_of_its_tiles() -> None:
    import tracemalloc

    rng = np.random.default_rng(0)
    field = rng.integers(0, 255, (2000, 2000, 3), dtype=np.uint8)
    bags = TileBags(tile=4, stride=2, max_candidates=2_000_000, max_tiles=64)
    tracemalloc.start()
    kept = bags.kept_tiles(field, "field.png")  # 999 x 999 = 998,001 candidate tiles
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert len(kept) == 64
    assert peak < 3 * field.nbytes, f"peak {peak / 1e6:.0f} MB for a {field.nbytes / 1e6:.0f} MB field"


def test_a_stop_ends_tiling_between_bands() -> None:
    import threading

    stop = threading.Event()
    stop.set()
    with pytest.raises(InterruptedError):
        TileBags(tile=4).kept_tiles(np.zeros((64, 64, 3), np.uint8), "field.png", stop)


def test_grey_levels_out_of_range_and_blank_fields_are_named_by_their_key() -> None:
    with pytest.raises(LeukexpError, match=r"^bags\.max_mean=-1: expected a grey level from 0 to 255"):
        TileBags(max_mean=-1)
    with pytest.raises(LeukexpError, match=r"^bags\.min_std=300: expected a grey level"):
        TileBags(min_std=300)
    glare = np.full((64, 64, 3), 255, np.uint8)
    glare[::10] = 200  # structure (grey std ~16), but glare (mean ~249)
    with pytest.raises(LeukexpError, match=r"every tile is blank \(mean grey above bags\.max_mean=245\)"):
        TileBags(tile=32).kept_tiles(glare, "glare.png")
    with pytest.raises(LeukexpError, match=r"every tile is blank \(grey std below bags\.min_std=6\)"):
        TileBags(tile=32).kept_tiles(np.full((64, 64, 3), 100, np.uint8), "flat.png")


def test_an_edited_tile_list_file_is_made_again(compose_plan, tmp_path: Path) -> None:
    import json

    args = [*TINY_DATA, "bags=tiles", "bags.tile=32", "head=abmil", "task=binary", "augmentation=none",
            "fold.n_splits=2"]
    first = build_fold_data(compose_plan(*args)).bags.instances
    (store,) = (tmp_path / "cache" / "tiles").glob("*.json")
    saved = json.loads(store.read_text())
    key = next(iter(saved["tiles"]))
    saved["tiles"][key] = [GRID_COLUMNS * 1000]  # a tile far outside its image, checksum left as it was
    store.write_text(json.dumps(saved))
    again = build_fold_data(compose_plan(*args)).bags.instances
    assert again.equals(first), "the edited list was not trusted"


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
