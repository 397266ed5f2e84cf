"""A finished cell study as the differential's cell classifier: loaded safely, refused when it cannot type this
study's cells honestly (a bag model, unknown types, another backbone or stain, pictures of this study)."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from leukexp.backbones.timm_backbone import TimmBackbone
from leukexp.config.identity import changes_the_result
from leukexp.errors import LeukexpError
from leukexp.heads.base import HeadContext
from leukexp.heads.mil import bag_network
from leukexp.heads.sklearn_head import sklearn_head
from leukexp.inference.cell_study import open_cell_study
from leukexp.inference.classifier import MANIFEST, TrainedOn, save_classifier

MODEL = {"_target_": "leukexp.backbones.timm_backbone.TimmBackbone", "name": "test_efficientnet",
         "pretrained": False, "input_size": 32, "label": "test"}
TYPES = ["blast", "lymphocyte", "neutrophil"]
PICTURES = pd.DataFrame({"sha1": ["aa11", "bb22"], "file": ["blast/b0.png", "neutrophil/n0.png"]})


def cell_study(folder: Path, head_kind: str = "logreg") -> Path:
    """A saved cell classifier of three types on a random-init backbone (seed 0), fitted on two pictures."""
    import torch

    torch.manual_seed(0)
    backbone = TimmBackbone("test_efficientnet", pretrained=False, input_size=32)
    context = HeadContext(backbone.num_features, len(TYPES))
    features = np.random.default_rng(0).normal(size=(30, backbone.num_features)).astype(np.float32)
    if head_kind == "logreg":
        from sklearn.linear_model import LogisticRegression

        from leukexp.heads.base import Split

        head = sklearn_head(context, LogisticRegression(max_iter=500))
        labels = np.arange(30) % 3
        head.fit(Split(labels, features), Split(labels, features))
    else:
        head = bag_network(HeadContext(backbone.num_features, 2), pool="mean")
        head.best_epoch = 0
    save_classifier(folder, head, backbone, MODEL, TYPES if head_kind == "logreg" else ["ALL", "HLT"], seed=0,
                    trained_on=TrainedOn(PICTURES, "0123abcd"))
    return folder


def test_a_cell_study_loads_with_its_types_and_lineage(tmp_path: Path) -> None:
    study = open_cell_study(str(cell_study(tmp_path / "atlas")))
    assert study.types == TYPES and study.stain == "none"
    assert study.lineage() == {"cell_study.source": str(tmp_path / "atlas"),
                               "cell_study.version": str((tmp_path / "atlas").resolve()),
                               "cell_study.types": "blast,lymphocyte,neutrophil", "cell_study.data": "0123abcd",
                               "cell_study.pictures": "2"}
    assert study.head.predict_proba(np.zeros((2, study.classifier.backbone.num_features))).shape == (2, 3)


def test_another_backbone_or_stain_is_one_line_with_the_overrides_that_follow_it(tmp_path: Path) -> None:
    study = open_cell_study(str(cell_study(tmp_path / "atlas")))
    study.check_backbone(dict(MODEL), changes_the_result)  # the same: nothing said
    with pytest.raises(LeukexpError, match=r"another backbone \(model.pooling=avgstd here\).*add model.pooling=null"):
        study.check_backbone(MODEL | {"pooling": "avgstd"}, changes_the_result)
    with pytest.raises(LeukexpError, match="stain=none, this study stain=macenko; add stain=none"):
        study.check_stain("macenko")
    with pytest.raises(LeukexpError, match="weights differ from the cell study's"):
        study.check_fingerprint("not-the-same")


def test_a_picture_the_cell_study_was_fitted_on_is_named_with_its_pair(tmp_path: Path) -> None:
    study = open_cell_study(str(cell_study(tmp_path / "atlas")))
    catalog = pd.DataFrame({"sha1": ["cc33", "bb22"], "file": ["ALL/p1/c0.png", "ALL/p1/c1.png"]})
    with pytest.raises(LeukexpError, match=r"fitted on 1 picture\(s\) of this study, e\.g\. its neutrophil/n0\.png"
                                           r" is /data/ALL/p1/c1\.png \(same content\)"):
        study.check_pictures(catalog, Path("/data"))
    study.check_pictures(catalog.iloc[:1], Path("/data"))  # none shared: nothing said


def test_what_cannot_type_cells_is_one_line_naming_the_key(tmp_path: Path) -> None:
    with pytest.raises(LeukexpError, match=r"head.cells=.*bag: a bag model \(head bag"):
        open_cell_study(str(cell_study(tmp_path / "bag", head_kind="meanpool")))
    folder = cell_study(tmp_path / "unknown")
    meta = json.loads((folder / MANIFEST).read_text())
    (folder / MANIFEST).write_text(json.dumps(meta | {"classes": ["blast", "blast", ""]}))
    with pytest.raises(LeukexpError, match="its cell types are unknown"):
        open_cell_study(str(folder))
    with pytest.raises(LeukexpError, match=r"^head.cells=.*nope: no such folder"):
        open_cell_study(str(tmp_path / "nope"))
    with pytest.raises(LeukexpError, match=r"^head.cells=runs:/abc/model: cannot be loaded from sqlite"):
        open_cell_study("runs:/abc/model", f"sqlite:///{tmp_path}/store.db")
    with pytest.raises(LeukexpError, match=r"^head.cells=models:/atlas@champion: cannot be loaded from sqlite"):
        open_cell_study("models:/atlas@champion", f"sqlite:///{tmp_path}/store.db")
