"""Folder sources: scanning, validation errors, duplicates, groups, and the real all4class set."""

from collections.abc import Callable
from pathlib import Path

import pytest

from conftest import ALL4CLASS, claiming_png, needs_shared_data, write_image
from leukexp.data.sources import FolderSource
from leukexp.data.tasks import Task
from leukexp.errors import LeukexpError

STUDY = Task("multiclass", classes=["ALL", "HLT"], aliases={"ALL": ["ALL"], "HLT": ["healthy", "HLT"]})


def test_scan_labels_hashes_and_orders(make_folder: Callable[..., Path]) -> None:
    root = make_folder({"ALL": 3, "healthy": 2})
    catalog = FolderSource(root).scan(STUDY)
    assert catalog.classes == ["ALL", "HLT"]
    assert catalog.frame["label"].value_counts().to_dict() == {"ALL": 3, "HLT": 2}
    assert catalog.frame["sha1"].str.len().eq(40).all()
    assert catalog.frame.loc[catalog.frame["label"] == "HLT", "label_index"].eq(1).all()


def test_mixed_case_extensions_are_found(tmp_path: Path) -> None:
    write_image(tmp_path / "d" / "ALL" / "a.Jpg", 1)
    write_image(tmp_path / "d" / "ALL" / "b.TIF", 2)
    write_image(tmp_path / "d" / "HLT" / "c.PNG", 3)
    assert len(FolderSource(tmp_path / "d").scan(STUDY)) == 3


def test_missing_root(tmp_path: Path) -> None:
    with pytest.raises(LeukexpError, match="no such folder"):
        FolderSource(tmp_path / "nowhere").scan(STUDY)


def test_root_without_class_folders(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(LeukexpError, match="has no class sub-folders"):
        FolderSource(tmp_path / "empty").scan(STUDY)


def test_empty_class_folder(make_folder: Callable[..., Path]) -> None:
    root = make_folder({"ALL": 2, "HLT": 2})
    (root / "healthy").mkdir()
    with pytest.raises(LeukexpError, match="healthy has no images"):
        FolderSource(root).scan(STUDY)


def test_unknown_class_folder(make_folder: Callable[..., Path]) -> None:
    root = make_folder({"ALL": 2, "HLT": 2, "Monocyte": 2})
    with pytest.raises(LeukexpError, match="'Monocyte' is not a class"):
        FolderSource(root).scan(STUDY)


def test_bad_image_stops_with_its_name_or_is_skipped(make_folder: Callable[..., Path]) -> None:
    root = make_folder({"ALL": 3, "HLT": 3})
    (root / "ALL" / "broken.png").write_bytes(b"not an image")
    (root / "HLT" / "zero.jpg").write_bytes(b"")
    with pytest.raises(LeukexpError, match=r"broken\.png.*data\.on_bad_image=skip"):
        FolderSource(root).scan(STUDY)
    catalog = FolderSource(root, on_bad_image="skip").scan(STUDY)
    assert len(catalog) == 6
    assert len(catalog.skipped) == 2
    assert any("zero.jpg" in message for message in catalog.skipped)


def test_same_image_in_two_classes_is_an_error(make_folder: Callable[..., Path]) -> None:
    root = make_folder({"ALL": 2, "HLT": 2})
    (root / "HLT" / "copy.png").write_bytes((root / "ALL" / "ALL_00.png").read_bytes())
    with pytest.raises(LeukexpError, match="duplicate image in two classes"):
        FolderSource(root).scan(STUDY)


def test_duplicates_within_a_class_share_a_group(make_folder: Callable[..., Path]) -> None:
    root = make_folder({"ALL": 2, "HLT": 2})
    (root / "ALL" / "copy.png").write_bytes((root / "ALL" / "ALL_00.png").read_bytes())
    catalog = FolderSource(root).scan(STUDY)
    assert catalog.duplicates == [["ALL/ALL_00.png", "ALL/copy.png"]]
    groups = catalog.frame.set_index("file")["group"]
    assert groups["ALL/ALL_00.png"] == groups["ALL/copy.png"]


def test_groups_csv(make_folder: Callable[..., Path], tmp_path: Path) -> None:
    root = make_folder({"ALL": 2, "HLT": 2})
    csv = tmp_path / "groups.csv"
    csv.write_text("file,group\nALL/ALL_00.png,p1\nALL/ALL_01.png,p1\nHLT_00.png,p2\nHLT/HLT_01.png,p3\n")
    catalog = FolderSource(root, groups_csv=str(csv)).scan(STUDY)
    assert catalog.frame["group"].tolist() == ["p1", "p1", "p2", "p3"]
    csv.write_text("file,group\nALL/ALL_00.png,p1\n")
    with pytest.raises(LeukexpError, match="no group for 3 image"):
        FolderSource(root, groups_csv=str(csv)).scan(STUDY)


@pytest.mark.slow
@needs_shared_data
def test_real_all4class_loads_with_a_folder_mapping() -> None:
    four = FolderSource(ALL4CLASS).scan(Task("folders"))
    assert four.frame["label"].value_counts().to_dict() == {"Benign": 504, "Early": 985, "Pre": 963, "Pro": 804}
    binary = FolderSource(ALL4CLASS).scan(
        Task("folders", mapping={"malignant": ["Early", "Pre", "Pro"], "benign": ["Benign"]})
    )
    assert binary.frame["label"].value_counts().to_dict() == {"malignant": 2752, "benign": 504}
    # the public set holds byte-identical copies; each set must stay on one side of every split
    assert len(binary.duplicates) > 0
    for files in binary.duplicates:
        assert binary.frame.set_index("file").loc[files, "group"].nunique() == 1


def test_digest_cache_reads_only_new_or_changed_files(make_folder: Callable[..., Path], tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    from leukexp.data import sources

    root = make_folder({"ALL": 3, "HLT": 3})
    decoded: list[str] = []
    real_decode = sources.decode_image
    monkeypatch.setattr(sources, "decode_image", lambda data, path, *limit: decoded.append(Path(path).name)
                        or real_decode(data, path, *limit))
    source = FolderSource(root, digest_cache=tmp_path / "catalog")
    first = source.scan(STUDY)
    assert len(decoded) == 6
    (cache_file,) = (tmp_path / "catalog").glob("*.csv")
    written = cache_file.stat().st_mtime_ns
    decoded.clear()
    again = source.scan(STUDY)
    assert decoded == [] and again.frame["sha1"].tolist() == first.frame["sha1"].tolist()
    assert cache_file.stat().st_mtime_ns == written, "an unchanged folder leaves the cache file as it was"
    write_image(root / "ALL" / "ALL_00.png", seed=99)  # new content in an existing file
    write_image(root / "HLT" / "new.png", seed=100)
    changed = source.scan(STUDY)
    assert sorted(decoded) == ["ALL_00.png", "new.png"]
    assert cache_file.stat().st_mtime_ns != written
    hashes = dict(zip(changed.frame["file"], changed.frame["sha1"], strict=True))
    assert hashes["ALL/ALL_00.png"] != dict(zip(first.frame["file"], first.frame["sha1"], strict=True))[
        "ALL/ALL_00.png"]
    assert hashes == dict(zip(changed.frame["file"], FolderSource(root).scan(STUDY).frame["sha1"], strict=True))


def test_a_damaged_digest_cache_means_a_full_scan_and_is_rewritten(make_folder: Callable[..., Path],
                                                                   tmp_path: Path) -> None:
    root = make_folder({"ALL": 2, "HLT": 2})
    folder = tmp_path / "catalog"
    FolderSource(root, digest_cache=folder).scan(STUDY)
    (cache_file,) = folder.glob("*.csv")
    cache_file.write_text("not,a\ncache")
    catalog = FolderSource(root, digest_cache=folder).scan(STUDY)
    assert catalog.frame["sha1"].tolist() == FolderSource(root).scan(STUDY).frame["sha1"].tolist()
    assert cache_file.read_text().startswith("path,size,mtime_ns,ctime_ns,inode,ends,sha1,check")


def test_an_edited_digest_cache_row_is_read_again_never_trusted(make_folder: Callable[..., Path],
                                                               tmp_path: Path) -> None:
    root = make_folder({"ALL": 2, "HLT": 2})
    folder = tmp_path / "catalog"
    first = FolderSource(root, digest_cache=folder).scan(STUDY)
    (cache_file,) = folder.glob("*.csv")
    hashes = first.frame["sha1"].tolist()
    text = cache_file.read_text()
    assert hashes[0] in text and hashes[1] in text
    # another image's hash pasted into a row would hand this image that image's features
    cache_file.write_text(text.replace(hashes[0], "#").replace(hashes[1], hashes[0]).replace("#", hashes[1]))
    assert FolderSource(root, digest_cache=folder).scan(STUDY).frame["sha1"].tolist() == hashes


def test_bad_images_are_never_remembered(make_folder: Callable[..., Path], tmp_path: Path) -> None:
    root = make_folder({"ALL": 3, "HLT": 3})
    (root / "ALL" / "broken.png").write_bytes(b"not an image")
    folder = tmp_path / "catalog"
    assert len(FolderSource(root, on_bad_image="skip", digest_cache=folder).scan(STUDY)) == 6
    with pytest.raises(LeukexpError, match=r"broken\.png"):
        FolderSource(root, digest_cache=folder).scan(STUDY)


def test_images_replaced_with_the_same_size_and_time_get_new_hashes(tmp_path: Path) -> None:
    # what `cp -p`, `rsync -a` or unzip do: other pictures, same names, sizes and modification times
    import os
    import shutil

    root, other = tmp_path / "images", tmp_path / "other"
    for folder, seed in ((root, 0), (other, 500)):
        for label in ("ALL", "HLT"):
            for i in range(3):
                write_image(folder / label / f"{label}_{i}.png", seed + i + (10 if label == "HLT" else 0))
    source = FolderSource(root, digest_cache=tmp_path / "catalog")
    first = source.scan(STUDY).frame.set_index("file")["sha1"]
    for path in sorted(root.rglob("*.png")):
        stat = path.stat()
        replacement = other / path.relative_to(root)
        assert replacement.stat().st_size == stat.st_size, "same-size pictures (random PNGs of one shape)"
        shutil.copyfile(replacement, path)
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # the old modification time, as cp -p keeps it
    again = source.scan(STUDY).frame.set_index("file")["sha1"]
    fresh = FolderSource(root).scan(STUDY).frame.set_index("file")["sha1"]
    assert (again != first).all(), "no old hash survives"
    assert again.to_dict() == fresh.to_dict()


def test_an_image_over_max_pixels_stops_the_scan_or_is_skipped(make_folder: Callable[..., Path]) -> None:

    root = make_folder({"ALL": 3, "HLT": 3})
    (root / "ALL" / "bomb.png").write_bytes(claiming_png(20_000, 20_000))
    with pytest.raises(LeukexpError, match=r"bomb\.png: 20,000 x 20,000 pixels .* data\.max_pixels"):
        FolderSource(root).scan(STUDY)
    catalog = FolderSource(root, on_bad_image="skip").scan(STUDY)
    assert len(catalog) == 6 and any("bomb.png" in note for note in catalog.skipped)
    with pytest.raises(LeukexpError, match=r"bomb\.png: not a readable image"):  # under a raised limit: decoded
        FolderSource(root, max_pixels=400_000_000).scan(STUDY)
