"""Real images: the default backbone and head on a stratified subset of the public ALL 4-class set."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from conftest import ALL4CLASS, MESSY_CLASSES, make_messy_folder, needs_shared_data
from leukexp.run.pipeline import train
from leukexp.vocabulary import CLASSES_TAG, KIND_FOLD, TEST_ACC, TEST_COUNT, kind_filter

PER_CLASS = 60


def stratified_subset(target: Path) -> Path:
    """Link the first PER_CLASS images (sorted names, spread over the folder) of each class; nothing is copied."""
    for folder in sorted(p for p in ALL4CLASS.iterdir() if p.is_dir()):
        files = sorted(folder.glob("*.jpg"))
        step = len(files) / PER_CLASS
        (target / folder.name).mkdir(parents=True)
        for i in range(PER_CLASS):
            source = files[int(i * step)]
            (target / folder.name / source.name).symlink_to(source)
    return target


@pytest.mark.slow
@needs_shared_data
def test_efficientnet_lite0_mlp1_on_real_all4class_subset(compose_cfg, tmp_path: Path) -> None:
    root = stratified_subset(tmp_path / "all4class-subset")
    cfg = compose_cfg(f"data.root={root}", "data=folder", "task=folders", "fold=f0", "augmentation=flips",
                      "head=mlp1", "model=efficientnet_lite0")
    metrics = train(cfg)
    print({k: round(v, 4) for k, v in metrics.items() if k.count("/") == 1})
    assert metrics[TEST_ACC] >= 0.85, metrics[TEST_ACC]
    client = MlflowClient(f"sqlite:///{tmp_path}/mlruns/mlflow.db")
    experiment = client.get_experiment_by_name("leukexp").experiment_id
    (run,) = client.search_runs([experiment], kind_filter(KIND_FOLD))
    assert run.data.tags["model"] == "efficientnet_lite0" and run.data.tags["data"] == "folder"
    assert set(run.data.tags["cv_group"].split()) >= {"task=folders", "head=mlp1", "model=efficientnet_lite0"}


def cli(program: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    """A leukexp command as a user runs it (exit code, stdout and stderr kept)."""
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"} | {"CI": "true"}
    return subprocess.run([sys.executable, "-m", program, *args], cwd=cwd, capture_output=True, text=True,
                          timeout=600, env=env)


@pytest.mark.slow
def test_a_messy_archive_trains_predicts_and_reports_with_the_defaults(tmp_path: Path) -> None:
    """Mixed sizes, 16-bit, RGBA, TIFF, a GIF named .png, an EXIF JPEG, a duplicate and a class folder `Band (BNE)+`:
    the default run (activation-map panel on) with test-time views, then predict with maps and views, then a report."""
    data = make_messy_folder(tmp_path / "archive")
    train_run = cli("leukexp.commands.train", "data=folder", f"data.root={data}", "task=folders", "fold.n_splits=3",
                    "model.input_size=64", "trainer.max_epochs=3", "evaluation.tta=flips", cwd=tmp_path)
    assert train_run.returncode == 0, train_run.stderr[-3000:]
    log = train_run.stdout + train_run.stderr
    assert "an animated GIF of 3 frames; only the first frame is used" in log and "is a GIF file named .png" in log
    client = MlflowClient(f"sqlite:///{tmp_path}/mlruns/mlflow.db")
    experiment = client.get_experiment_by_name("leukexp").experiment_id
    (run,) = client.search_runs([experiment], kind_filter(KIND_FOLD))
    assert run.info.status == "FINISHED"
    assert "test/f1/Band _BNE__" in run.data.metrics
    assert json.loads(run.data.tags[CLASSES_TAG]) == {"ALL": "ALL", "Band _BNE__": "Band (BNE)+"}
    (folder,) = (tmp_path / "logs" / "runs").iterdir()
    assert (folder / "cam" / "panel.png").stat().st_size > 10_000, "the panel of mixed-size images was drawn"
    assert "cam/panel.png" in {a.path for a in client.list_artifacts(run.info.run_id, "cam")}

    predicted = cli("leukexp.commands.predict", str(folder), str(data), "--cam", str(tmp_path / "maps"), "--tta",
                    "flips",
                    "--out", str(tmp_path / "scores.csv"), cwd=tmp_path)
    assert predicted.returncode == 0, predicted.stderr[-3000:]
    images = sorted(p for p in data.rglob("*") if p.is_file())
    scores = pd.read_csv(tmp_path / "scores.csv")
    assert len(scores) == len(images) == 28 and set(scores["predicted"]) <= set(MESSY_CLASSES)
    assert len(list((tmp_path / "maps").glob("*.cam.png"))) == len(images)

    report = cli("leukexp.commands.report", "--experiment", "leukexp", "--out", str(tmp_path / "report"), cwd=tmp_path)
    assert report.returncode == 0, report.stderr[-3000:]
    text = (tmp_path / "report" / "report.md").read_text()
    assert "Band _BNE__" in text and "Left out" not in text


@pytest.mark.slow
@needs_shared_data
def test_semi_real_bags_of_all4class_cells_train_an_aggregator(compose_cfg, tmp_path: Path) -> None:
    """Bags built from the real cells by `scripts/semi_real_bags.py` (no copy: links): each cell once, the
    malignant bags holding a share of lymphoblasts; an aggregator trains on them and scores one row per bag."""
    script = Path(__file__).resolve().parents[1] / "scripts" / "semi_real_bags.py"
    bags = tmp_path / "bags"
    made = subprocess.run([sys.executable, str(script), str(ALL4CLASS), "--out", str(bags), "--bags-per-class", "4",
                           "--cells", "8", "--witness", "0.25", "0.5"], capture_output=True, text=True, timeout=300)
    assert made.returncode == 0, made.stderr[-2000:]
    cells = sorted(p.resolve() for p in bags.rglob("*.jpg"))
    assert len(cells) == 64 and len(set(cells)) == 64, "every real cell in one bag at most"
    own = pd.read_csv(bags / "instances.csv")
    malignant = own[own["file"].str.startswith("malignant/")]
    assert ((malignant["instance_label"] == "malignant").groupby(malignant["file"].str.split("/").str[1]).sum()
            >= 2).all(), "each malignant bag holds its witnesses"
    assert (own[own["file"].str.startswith("benign/")]["instance_label"] == "benign").all()
    metrics = train(compose_cfg("data=folder", f"data.root={bags}", "task=malignant_vs_benign",
                                "task.mapping={malignant: [malignant], benign: [benign]}", "bags=images", "head=abmil",
                                "augmentation=none", "fold.n_splits=2", "fold.val_fraction=0.5",
                                "trainer.max_epochs=5", "training.batch_size=2", "model=timm",
                                "model.name=test_efficientnet", "model.pretrained=false", "model.input_size=64"))
    assert metrics[TEST_COUNT] == 4, "one prediction per test bag"
    assert "instance/witness_share" in metrics
