"""Real images: the default backbone and head on a stratified subset of the public ALL 4-class set."""

from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from conftest import ALL4CLASS, needs_shared_data
from leukexp.pipeline import train
from leukexp.vocabulary import KIND_FOLD, kind_filter

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
    assert metrics["test/acc"] >= 0.85, metrics["test/acc"]
    client = MlflowClient(f"sqlite:///{tmp_path}/mlruns/mlflow.db")
    experiment = client.get_experiment_by_name("leukexp").experiment_id
    (run,) = client.search_runs([experiment], kind_filter(KIND_FOLD))
    assert run.data.tags["model"] == "efficientnet_lite0" and run.data.tags["data"] == "folder"
    assert set(run.data.tags["cv_group"].split()) >= {"task=folders", "head=mlp1", "model=efficientnet_lite0"}
