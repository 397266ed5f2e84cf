"""`leukexp-predict`: models from folders and the registry, folders of images, TTA, maps, bad images."""

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import write_image
from leukexp.commands.predict import collect_bags, collect_images, main, tta_views
from leukexp.data.io import read_image
from leukexp.errors import LeukexpError
from leukexp.inference.classifier import load_classifier


def images(folder: Path, n: int = 3) -> Path:
    for i in range(n):
        write_image(folder / "sub" / f"cell{i}.png", 700 + i, size=64)
    return folder


def test_collect_images_from_files_and_folders(tmp_path: Path) -> None:
    images(tmp_path / "new")
    (tmp_path / "new" / "notes.txt").write_text("not an image")
    single = write_image(tmp_path / "one.jpg", 1)
    found = collect_images([str(tmp_path / "new"), str(single)])
    assert [p.name for p in found] == ["cell0.png", "cell1.png", "cell2.png", "one.jpg"]
    with pytest.raises(LeukexpError, match="no such file or folder"):
        collect_images([str(tmp_path / "missing")])
    (tmp_path / "empty").mkdir()
    with pytest.raises(LeukexpError, match="no images"):
        collect_images([str(tmp_path / "empty")])


def test_two_cohorts_with_the_same_patient_names_give_every_patient_a_bag(tmp_path: Path, capsys) -> None:
    for cohort in ("cohortA", "cohortB"):
        for patient in ("p1", "p2"):
            for i in range(2):
                write_image(tmp_path / cohort / patient / f"c{i}.png", hash((cohort, patient, i)) % 1000)
    write_image(tmp_path / "cohortA" / ".trash" / "c.png", 9)
    os.chdir(tmp_path)
    bags = collect_bags(["cohortA", "cohortB/"])
    assert sorted(bags) == ["cohortA/p1", "cohortA/p2", "cohortB/p1", "cohortB/p2"], "4 patients in, 4 bags out"
    assert all(len(paths) == 2 for paths in bags.values())
    assert "left out: 1 hidden folder(s)" in capsys.readouterr().out
    assert sorted(collect_bags(["cohortA/p1", "cohortB"])) == ["cohortB/p1", "cohortB/p2", "p1"]
    with pytest.raises(LeukexpError, match=r"two bags would be named 'p1' \(cohortA/p1 and cohortB/p1\)"):
        collect_bags(["cohortA/p1", "cohortB/p1"])
    capsys.readouterr()
    fields = collect_bags(["cohortA"], per_image=True)  # a tile model: each field a bag of its own
    assert "left out: 1 image(s) in hidden folders" in capsys.readouterr().out
    assert sorted(fields) == ["cohortA/p1/c0.png", "cohortA/p1/c1.png", "cohortA/p2/c0.png", "cohortA/p2/c1.png"]


def test_cli_writes_predictions_maps_and_names_bad_images(study_store: Path, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture) -> None:
    new = images(tmp_path / "new")
    (new / "sub" / "broken.png").write_bytes(b"not a png")
    out = tmp_path / "predictions.csv"
    model = str(study_store / "outputs" / "mlp1-f0")
    with pytest.raises(SystemExit) as exit_info:
        main([model, str(new), "--out", str(out), "--cam", str(tmp_path / "maps")])
    assert exit_info.value.code == 2
    assert "broken.png" in capsys.readouterr().err
    frame = pd.read_csv(out)
    assert len(frame) == 3, "good ones written"
    assert list(frame.columns) == ["file", "predicted", "p_ALL", "p_HLT", "decision"], "the binary model decides too"
    assert sorted(p.name for p in (tmp_path / "maps").iterdir()) == [
        "00000_cell0.cam.png", "00001_cell1.cam.png", "00002_cell2.cam.png"]
    expected = load_classifier(model).predict_proba([read_image(f) for f in frame["file"]])
    assert np.allclose(frame[["p_ALL", "p_HLT"]].to_numpy(), expected, atol=1e-6)
    assert main([model, str(new), "--out", str(out), "--on-bad-image", "skip"]) == 0


def test_tta_is_the_mean_of_the_views(study_store: Path, tmp_path: Path) -> None:
    from leukexp.data.io import file_digest

    path = write_image(tmp_path / "cell.png", 5, size=64)
    model = str(study_store / "outputs" / "svm-f0")
    assert main([model, str(path), "--out", str(tmp_path / "tta.csv"), "--tta", "flips"]) == 0
    views = tta_views("flips")
    assert views.n_views == 3
    image, key = read_image(path), file_digest(path.read_bytes())
    variants = [image] + [views.apply(image, v, key) for v in (1, 2)]
    expected = load_classifier(model).predict_proba(variants).mean(0)
    assert np.allclose(pd.read_csv(tmp_path / "tta.csv")[["p_ALL", "p_HLT"]].to_numpy()[0], expected)
    assert not np.allclose(expected, load_classifier(model).predict_proba([image])[0]), "the views change it"


def test_a_multi_page_tiff_is_read_as_its_first_page_with_one_note(tmp_path: Path, capsys) -> None:
    import cv2

    from leukexp.commands.predict import read_noted

    pages = [np.full((16, 16, 3), v, np.uint8) for v in (10, 200)]
    assert cv2.imwritemulti(str(tmp_path / "stack.tif"), pages)
    image = read_noted(tmp_path / "stack.tif")
    assert image.mean() == pytest.approx(10)
    assert capsys.readouterr().out.count("a multi-page TIFF of 2 frames; only the first frame is used") == 1
