"""The embedded bag data: synthetic patients (folders of cells, the cells' own labels) and fields to tile."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from leukexp.data.io import read_image
from leukexp.data.synthetic_bags import SyntheticFields, SyntheticPatients, patient_cells
from leukexp.errors import LeukexpError


def test_a_leukemic_patient_has_its_share_of_blasts_and_a_healthy_one_none() -> None:
    rng = np.random.default_rng(0)
    assert patient_cells(rng, "ALL", 100, 0.05).count("blast") == 5
    assert patient_cells(rng, "ALL", 10, 0.01).count("blast") == 1, "at least one witness"
    assert "blast" not in patient_cells(rng, "HLT", 100, 0.5)


def test_patients_are_bag_folders_with_their_cells_own_labels(tmp_path: Path) -> None:
    source = SyntheticPatients(counts={"ALL": 2, "HLT": 2}, cells_min=5, cells_max=8, witness_share=0.2,
                               cell_size=32, cache_dir=tmp_path)
    root = source.prepare()
    patients = sorted(p.relative_to(root).as_posix() for p in root.glob("*/*") if p.is_dir())
    assert patients == ["ALL/all_patient_000", "ALL/all_patient_001", "HLT/hlt_patient_000", "HLT/hlt_patient_001"]
    own = pd.read_csv(root / "instances.csv")
    assert len(own) == len(list(root.rglob("*.png")))
    per_patient = own.assign(patient=own["file"].str.rsplit("/", n=1).str[0]).groupby("patient")["instance_label"]
    assert all(per_patient.apply(lambda s: (s == "ALL").sum() >= 1)[p] for p in patients[:2])
    assert all((per_patient.get_group(p) == "HLT").all() for p in patients[2:])
    assert read_image(next(root.rglob("*.png"))).shape == (32, 32, 3)
    assert source.prepare() == root, "generated once, then reused"


def test_fields_are_large_images_one_per_bag(tmp_path: Path) -> None:
    root = SyntheticFields(counts={"ALL": 1, "HLT": 1}, field_size=128, cells_per_field=6, cache_dir=tmp_path).prepare()
    files = sorted(p.relative_to(root).as_posix() for p in root.rglob("*.png"))
    assert files == ["ALL/all_field_000.png", "HLT/hlt_field_000.png"]
    assert read_image(root / files[0]).shape == (128, 128, 3)


def test_unknown_classes_and_shares_are_one_line(tmp_path: Path) -> None:
    with pytest.raises(LeukexpError, match=r"^data\.counts: class 'AML' is not generated"):
        SyntheticPatients(counts={"AML": 2}, cache_dir=tmp_path).prepare()
    with pytest.raises(LeukexpError, match=r"^data\.witness_min/witness_max/witness_share"):
        SyntheticPatients(witness_share=0.0, cache_dir=tmp_path).prepare()


def test_an_atlas_is_a_folder_per_cell_type_of_pictures_no_patient_holds(tmp_path: Path) -> None:
    import hashlib

    from leukexp.data.synthetic_bags import SyntheticAtlas

    atlas = SyntheticAtlas(counts={"blast": 3, "neutrophil": 2, "lymphocyte": 2}, cell_size=32,
                           cache_dir=tmp_path).prepare()
    assert sorted((p.parent.name, len(list(p.parent.glob("*.png")))) for p in atlas.glob("*/*_000.png")) == [
        ("blast", 3), ("lymphocyte", 2), ("neutrophil", 2)]
    assert SyntheticAtlas(counts={"blast": 3, "neutrophil": 2, "lymphocyte": 2}, cell_size=32,
                          cache_dir=tmp_path).prepare() == atlas, "generated once"
    patients = SyntheticPatients(counts={"ALL": 2, "HLT": 2}, cells_min=4, cells_max=4, cell_size=32,
                                 cache_dir=tmp_path).prepare()

    def digests(folder: Path) -> set[str]:
        return {hashlib.sha1(p.read_bytes(), usedforsecurity=False).hexdigest() for p in folder.rglob("*.png")}

    assert not digests(atlas) & digests(patients), "no atlas picture is a patient's"
    with pytest.raises(LeukexpError, match=r"^data\.counts: expected a positive count per cell type of blast"):
        SyntheticAtlas(counts={"monocyte": 3}, cache_dir=tmp_path).prepare()
