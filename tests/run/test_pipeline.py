"""Training runs end to end: every head logs the full metric and artifact set to MLflow."""

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hydra.utils import instantiate
from mlflow.tracking import MlflowClient

from conftest import TINY_DATA, TINY_MODEL
from leukexp.data.synthetic import generate_image
from leukexp.features.codes import entry_codes
from leukexp.inference.classifier import load_classifier
from leukexp.run.pipeline import train
from leukexp.vocabulary import (
    BEST_EPOCH,
    CI_HIGH,
    CI_LOW,
    DECISION_COLUMN,
    FOLDS_FINISHED_METRIC,
    PARENT_TAG,
    RAW,
    STUDY_TAG,
    TEMPERATURE,
    TEST,
    TEST_ACC,
    TEST_AUC_MACRO,
    TEST_BRIER,
    TEST_COUNT,
    TEST_ECE,
    TEST_LOSS,
    THRESHOLD,
    TRAIN_LOSS,
    VAL_ACC,
    metric_name,
)

# every case trains a study run end to end: `make test-fast` leaves them out
pytestmark = pytest.mark.slow

FAST = [*TINY_MODEL, *TINY_DATA, "augmentation=none", "trainer.max_epochs=3"]
TAGS = {"model", "head", "task", "fold", "augmentation", "data", "protocol", "seed", "git_commit", "cv_group"}
ARTIFACTS = {"config.yaml", "manifest.csv", "confusion_matrix.png", "roc.png", "calibration.png", "predictions.csv",
             "model"}


def stored(root: Path) -> dict[int, tuple[int, ...]]:
    """Every cached embedding under `root/cache/features`: its code and its width, over every backbone folder."""
    from leukexp.features.index import INDEX_NAME
    from leukexp.features.shards import Shard

    entries: dict[int, tuple[int, ...]] = {}
    for path in (root / "cache" / "features").glob("*/*.safetensors"):
        if path.name != INDEX_NAME:
            shard = Shard(path)
            entries |= {int(code): shard.shape[1:] for code in shard.codes}
    return entries


def only_run(root: Path):
    client = MlflowClient(f"sqlite:///{root}/mlruns/mlflow.db")
    experiment = client.get_experiment_by_name("leukexp")
    runs = client.search_runs([experiment.experiment_id], "tags.`leukexp.kind` = 'fold'")
    assert len(runs) == 1
    parents = client.search_runs([experiment.experiment_id], "tags.`leukexp.kind` = 'cv'")
    assert [p.info.run_id for p in parents] == [runs[0].data.tags[PARENT_TAG]]
    assert parents[0].info.status == "FINISHED", "nothing runs, so the parent is not left RUNNING"
    assert parents[0].data.tags[STUDY_TAG] == "incomplete (1/5 folds)"
    assert parents[0].data.metrics[FOLDS_FINISHED_METRIC] == 1
    return client, runs[0]


TARGETS = {"mlp1": "mlp", "mlp3": "mlp", "mlp3_dropout": "mlp",
           "svm": "svm", "logreg": "estimator_head", "knn": "knn"}


@pytest.mark.parametrize("head", list(TARGETS))
def test_each_head_trains_and_logs_everything(compose_cfg, tmp_path: Path, head: str) -> None:
    cfg = compose_cfg(*FAST, f"head={head}")
    metrics = train(cfg)
    client, run = only_run(tmp_path)
    assert run.info.status == "FINISHED"
    assert set(run.data.tags) >= TAGS
    assert run.data.tags["head"] == head and run.data.tags["fold"] == "f0"
    assert "fold=" not in run.data.tags["cv_group"] and f"head={head}" in run.data.tags["cv_group"]
    logged = run.data.metrics
    classes = ["ALL", "AML", "CLL", "CML", "HLT"]
    expected = {TEST_ACC, TEST_LOSS, "test/f1_macro", TEST_AUC_MACRO, VAL_ACC, TEST_ECE, TEST_BRIER,
                *(f"test/{m}/{c}" for m in ("precision", "recall", "f1", "auc") for c in classes)}
    assert expected <= set(logged)
    if TARGETS[head] == "mlp":
        assert TRAIN_LOSS in logged
        assert len(client.get_metric_history(run.info.run_id, VAL_ACC)) == 3
    assert logged[TEST_ACC] == pytest.approx(metrics[TEST_ACC])
    assert run.data.params["head._target_"] == f"leukexp.heads.{TARGETS[head]}"
    (data,) = run.inputs.dataset_inputs  # the UI's Datasets column: what this run saw
    assert data.dataset.digest == run.data.tags["data_hash"] and data.dataset.name == "synthetic · multiclass"
    assert {(tag.key, tag.value) for tag in data.tags} == {("mlflow.data.context", "training")}
    assert '"num_rows": 30' in data.dataset.profile, "the manifest: one row per source image"
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert artifacts >= ARTIFACTS | {"cam"}
    epochs = TARGETS[head] == "mlp"
    assert ("curves.png" in artifacts) is epochs and (BEST_EPOCH in logged) is epochs, "epochs only where there are"
    panel = {a.path for a in client.list_artifacts(run.info.run_id, "cam")}
    assert panel == ({"cam/no_panel.txt"} if head == "knn" else {"cam/panel.png"}), "kNN has no class scores"


@pytest.mark.parametrize("stage", ["log_dataset", "finish"])
def test_a_stop_while_the_run_is_claimed_or_closed_leaves_it_killed_not_running(
        compose_cfg, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, stage: str) -> None:
    """The moments outside training: just after the fold run is created (a Ray worker stopped as soon as its run
    shows RUNNING), and while the results are logged."""
    import signal

    from leukexp.runtime.signals import Interrupted
    from leukexp.tracking.cv import FoldRun

    def stopped(*args: object, **kwargs: object) -> None:
        raise Interrupted(signal.SIGTERM)

    monkeypatch.setattr(FoldRun, stage, stopped)
    with pytest.raises(Interrupted):
        train(compose_cfg(*FAST, "head=logreg"))
    client = MlflowClient(f"sqlite:///{tmp_path}/mlruns/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("leukexp").experiment_id])
    assert sorted((r.data.tags["leukexp.kind"], r.info.status) for r in runs) == [("cv", "KILLED"), ("fold", "KILLED")]


@pytest.mark.parametrize("outputs", [1, 2])
def test_binary_task_logits_and_reloadable_head(compose_cfg, tmp_path: Path, outputs: int) -> None:
    cfg = compose_cfg(*FAST, "task=binary", f"training.binary_outputs={outputs}")
    metrics = train(cfg)
    assert "test/auc/ALL" in metrics and "test/auc/AML" not in metrics
    classifier = load_classifier(tmp_path / "outputs" / "model")
    assert classifier.head.single_logit == (outputs == 1) and classifier.classes == ["ALL", "HLT"]
    assert classifier.head.network[-1].out_features == outputs
    probs = classifier.predict_proba([generate_image("ALL", 0, size=64), generate_image("HLT", 0, size=64)])
    assert probs.shape == (2, 2) and np.allclose(probs.sum(1), 1)


def test_temperature_scaling_is_fitted_on_validation_and_travels_with_the_model(compose_cfg, tmp_path: Path
                                                                              ) -> None:
    metrics = train(compose_cfg(*FAST, "task=binary", "evaluation.calibration=temperature", "evaluation.tta=flips",
                                "evaluation.cam_panel=false"))
    temperature = metrics[TEMPERATURE]
    assert temperature != 1.0 and 0.05 <= temperature <= 20
    assert {TEST_ECE, TEST_ECE + RAW, TEST_BRIER, TEST_BRIER + RAW} <= set(metrics), "raw and calibrated, to compare"
    _, run = only_run(tmp_path)
    assert "calibration=temperature" in run.data.tags["cv_group"]
    classifier = load_classifier(tmp_path / "outputs" / "model")
    assert classifier.temperature == pytest.approx(temperature)
    predictions = pd.read_csv(tmp_path / "outputs" / "predictions.csv")
    (root,) = {png.parent.parent for png in (tmp_path / "cache" / "synthetic").rglob("*.png")}
    from leukexp.commands.predict import score
    from leukexp.data.augment import named_views

    first = root / predictions["file"][0]
    frame, _, _ = score(classifier, [first], named_views("flips", 42))
    assert frame["p_ALL"][0] == pytest.approx(predictions["p_ALL"][0], abs=1e-5), "leukexp-predict --tta agrees"
    point = classifier.operating_point  # the binary task screens for ALL at a threshold chosen on validation
    assert point is not None and point.positive == "ALL" and point.negative == "HLT"
    assert point.threshold == pytest.approx(metrics[THRESHOLD]) and point.target_sensitivity == 0.95
    assert frame[DECISION_COLUMN][0] == ("ALL" if frame["p_ALL"][0] >= point.threshold else "HLT")
    for measure in ("sensitivity", "specificity", "ppv", "npv"):
        assert 0.0 <= metrics[metric_name(TEST, measure) + CI_LOW] <= metrics[metric_name(TEST, measure) + CI_HIGH] <= 1
    labels = (predictions["label"] == "ALL").to_numpy()
    called = (predictions["p_ALL"] >= point.threshold).to_numpy()
    assert metrics[metric_name(TEST, "sensitivity")] == pytest.approx((called & labels).sum() / labels.sum())


def test_warm_cache_gives_the_same_result_as_cold(compose_cfg, tmp_path: Path) -> None:
    overrides = [*TINY_MODEL, *TINY_DATA, "trainer.max_epochs=2", "augmentation.repeats=1", "mlflow.enabled=false"]
    cold = train(compose_cfg(*overrides))
    entries = stored(tmp_path)
    files = sorted((tmp_path / "cache" / "features").rglob("*.safetensors"))
    assert any(path.name == "index.safetensors" for path in files), "the folder's index is written after the pass"
    assert entries, "features were cached"
    warm = train(compose_cfg(*overrides))
    assert stored(tmp_path) == entries, "a warm run computes nothing new"
    assert sorted((tmp_path / "cache" / "features").rglob("*.safetensors")) == files, "and writes no shard"
    assert warm[TEST_ACC] == cold[TEST_ACC] and warm[TEST_LOSS] == pytest.approx(cold[TEST_LOSS])


@pytest.mark.parametrize("workers", [0, 1])
def test_online_augmentation_runs_the_backbone_per_batch(compose_cfg, tmp_path: Path, workers: int) -> None:
    # with workers: started from the forkserver, not forked from this threaded process
    metrics = train(compose_cfg(*TINY_MODEL, *TINY_DATA, "augmentation=online", "trainer.max_epochs=2",
                                f"training.num_workers={workers}", "mlflow.enabled=false"))
    history = pd.read_csv(tmp_path / "outputs" / "history.csv")
    assert len(history) == 2 and history[TRAIN_LOSS].notna().all(), "two epochs trained on images"
    manifest = pd.read_csv(tmp_path / "outputs" / "manifest.csv")
    assert metrics[TEST_COUNT] == (manifest["split"] == "test").sum(), "tested on the original test images only"
    cached = set(stored(tmp_path))
    frame = pd.read_csv(tmp_path / "outputs" / "manifest.csv")
    originals = {int(code) for code in entry_codes(frame["sha1"], ["original"] * len(frame))}
    assert cached and cached <= originals, "only originals are cached"


def test_class_weights_and_thesis_protocol_run(compose_cfg, tmp_path: Path) -> None:
    cfg = compose_cfg(*FAST, "protocol=thesis", "augmentation=paper", "augmentation.repeats=1",
                      "protocol.balance=class_weights", "mlflow.enabled=false")
    metrics = train(cfg)
    views = instantiate(cfg.augmentation, _convert_="all").n_views
    manifest = pd.read_csv(tmp_path / "outputs" / "manifest.csv")
    assert views > 1 and metrics[TEST_COUNT] == views * (manifest["split"] == "test").sum(), (
        "the thesis protocol tests every view of every test image")


@pytest.mark.parametrize("model", ["inception_v3", "resnext101_32x8d", "senet154"])
def test_study_backbones_compose_and_run(compose_cfg, tmp_path: Path, model: str) -> None:
    cfg = compose_cfg(f"model={model}", "model.pretrained=false", "model.input_size=96", *TINY_DATA,
                      "augmentation=none", "trainer.max_epochs=1", "mlflow.enabled=false", "task=binary")
    metrics = train(cfg)
    entries = stored(tmp_path)
    assert len(entries) == 12 and set(entries.values()) == {(2048,)}, "every image embedded once, 2,048 wide"
    assert metrics[TEST_COUNT] == len(pd.read_csv(tmp_path / "outputs" / "manifest.csv").query("split == 'test'"))


def test_keras_inception_v3_runs_the_whole_study_cell(compose_cfg, tmp_path: Path) -> None:
    cfg = compose_cfg("model=keras_inception_v3", "model.pretrained=false", "model.input_size=75", *TINY_DATA,
                      "augmentation=none", "head=logreg", "task=binary")
    metrics = train(cfg)
    _, run = only_run(tmp_path)
    assert run.data.tags["model"] == "keras_inception_v3" and run.info.status == "FINISHED"
    entries = stored(tmp_path)
    assert len(entries) == 12 and set(entries.values()) == {(2048,)}
    classifier = load_classifier(tmp_path / "outputs" / "model")
    probs = classifier.predict_proba([generate_image("ALL", 0, size=64)])
    assert type(classifier.backbone).__name__ == "KerasBackbone" and probs.shape == (1, 2)
    assert metrics[TEST_ACC] == pytest.approx(run.data.metrics[TEST_ACC])


def test_stain_normalization_jitter_and_an_external_lab_run_end_to_end(compose_cfg, tmp_path: Path) -> None:
    small = "{ALL: 2, AML: 2, CLL: 2, CML: 2, HLT: 2}"
    metrics = train(compose_cfg(*FAST, "stain=macenko", "augmentation=stain_jitter", "augmentation.repeats=1",
                                "evaluation.cam_panel=false",
                                f"evaluation.external={{config: synthetic_b, counts: {small}, image_size: 64}}"))
    assert metrics["external/n"] == 10 and "external/acc" in metrics and "external/ece" in metrics
    _, run = only_run(tmp_path)
    assert {"stain=macenko", "augmentation=stain_jitter"} <= set(run.data.tags["cv_group"].split())
    assert run.data.metrics["external/acc"] == pytest.approx(metrics["external/acc"])
    external = pd.read_csv(tmp_path / "outputs" / "external_predictions.csv")
    assert len(external) == 10 and external["file"].str.startswith(("ALL/", "HLT/", "AML/", "CLL/", "CML/")).all()
    assert (external["label"] == external["predicted"]).mean() == pytest.approx(metrics["external/acc"])
    (cache,) = [p for p in (tmp_path / "cache" / "features").iterdir() if p.is_dir()]
    from leukexp.runtime.process import seed_everything

    seed_everything(42)  # the random-init test backbone is rebuilt as the run built it
    classifier = load_classifier(tmp_path / "outputs" / "model")
    assert classifier.stain.name == "macenko" and cache.name.endswith(f"-s{classifier.stain.fingerprint()}")
    (lab_b,) = [p for p in (tmp_path / "cache" / "synthetic").iterdir()
                if '"domain": "B"' in (p / "generator.json").read_text()]
    from leukexp.data.io import read_image

    probs = classifier.predict_proba([read_image(lab_b / external["file"][0])])
    assert probs[0] == pytest.approx(external.filter(like="p_").to_numpy()[0], abs=1e-5), "the saved model normalizes"


BAG_RUN = [*TINY_MODEL, "data=synthetic_patients", "task=binary", "bags=images", "augmentation=none",
           "data.counts={ALL: 6, HLT: 6}", "data.cells_min=6", "data.cells_max=10", "data.cell_size=32",
           "fold.n_splits=3", "trainer.max_epochs=4", "training.batch_size=2"]


def test_bags_of_cells_end_to_end_each_embedded_once_and_predicted_per_patient(compose_cfg, tmp_path: Path,
                                                                              capsys) -> None:
    import subprocess
    import sys

    from leukexp.vocabulary import ATTENTION_DIR, ATTENTION_FILE, INSTANCE, PREDICTIONS_FILE

    metrics = train(compose_cfg(*BAG_RUN, "head=abmil"))
    assert TEST_AUC_MACRO in metrics and f"{INSTANCE}witness_share" in metrics
    first = stored(tmp_path)
    out = tmp_path / "outputs"
    predictions = pd.read_csv(out / PREDICTIONS_FILE)
    assert len(predictions) == 4 and predictions["file"].str.match(r"^(ALL|HLT)/(all|hlt)_patient_\d+$").all()
    attention = pd.read_csv(out / ATTENTION_FILE)
    assert set(attention["bag"]) == set(predictions["file"])
    assert np.allclose(attention.groupby("bag")["weight"].sum(), 1.0)
    assert (out / ATTENTION_DIR / "panel.png").is_file()
    cells = len(list((tmp_path / "cache" / "synthetic").rglob("*.png")))
    assert len(first) == cells, "each cell embedded once"
    for head in ("meanpool", "vote"):  # other aggregators on the same folds: nothing embedded again
        train(compose_cfg(*BAG_RUN, f"head={head}", "fold.index=1"))
        assert stored(tmp_path) == first
    patient = next((tmp_path / "cache" / "synthetic").glob("patients-*/ALL/all_patient_000"))
    table = tmp_path / "patient.csv"
    healthy = patient.parent.parent / "HLT"  # a folder of patient folders: one bag each
    done = subprocess.run([sys.executable, "-m", "leukexp.commands.predict", str(out), str(patient), str(healthy),
                           "--out", str(table)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = pd.read_csv(table)
    assert rows["bag"].iloc[0] == "all_patient_000" and len(rows) == 1 + len(list(healthy.iterdir()))
    assert set(rows["bag"].iloc[1:]) == {f"HLT/{p.name}" for p in healthy.iterdir()}, "named as given"
    assert rows["instances"].iloc[0] == len(list(patient.glob("*.png")))
    weights = pd.read_csv(tmp_path / "patient_attention.csv")
    assert np.isclose(weights[weights["bag"] == "all_patient_000"]["weight"].sum(), 1.0)
    hostile = tmp_path / "=cmd|' -C calc'!A0"  # a folder name that a spreadsheet would run as a formula
    shutil.copytree(patient, hostile)
    (tmp_path / "hostile_attention.csv").mkdir()  # ... and a folder where the attention table would go
    from leukexp.commands.predict import main as predict

    capsys.readouterr()
    with pytest.raises(SystemExit) as refused:  # in this process: the CLI's own entry, its exit code and its lines
        predict([str(out), str(hostile), "--out", str(tmp_path / "hostile.csv")])
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("leukexp-predict: error:")]
    assert refused.value.code == 2 and len(errors) == 1 and "hostile_attention.csv: is a folder" in errors[0]
    assert not (tmp_path / "hostile.csv").exists(), "both tables or neither"
    (tmp_path / "hostile_attention.csv").rmdir()
    assert predict([str(out), str(hostile), "--out", str(tmp_path / "hostile.csv")]) == 0
    for written in ("hostile.csv", "hostile_attention.csv"):
        cells = pd.read_csv(tmp_path / written, dtype=str)["bag"]
        assert (cells == "'" + hostile.name).all(), f"{written}: the name is text, not a formula"
    import mlflow.pyfunc

    served = mlflow.pyfunc.load_model(str(out / "model"))  # the MLflow model takes a bag: rows sharing `bag`
    cells = sorted(str(p) for p in patient.glob("*.png"))
    frame = pd.DataFrame({"path": cells, "bag": ["p1"] * 3 + ["p2"] * (len(cells) - 3)})
    scored = served.predict(frame)
    assert list(scored["bag"]) == ["p1", "p2"] and {"predicted", "p_ALL", "p_HLT"} <= set(scored.columns)
    # the differential: the cells typed in the fold, each patient described by its count; nothing embedded again
    train(compose_cfg(*BAG_RUN, "head=differential", "head.topk=2", "fold.index=2"))
    assert stored(tmp_path) == first
    table = pd.read_csv(out / "differential.csv")
    assert set(table["type"]) == {"ALL", "HLT"} and np.allclose(table.groupby("bag")["percent"].sum(), 100)
    rows = pd.read_csv(out / PREDICTIONS_FILE)
    assert np.allclose(rows["pct_ALL"] + rows["pct_HLT"], 100) and set(rows["file"]) == set(table["bag"])
    capsys.readouterr()
    assert predict([str(out), str(patient), "--out", str(tmp_path / "count.csv")]) == 0
    assert "all_patient_000: differential ALL" in capsys.readouterr().out
    counted = pd.read_csv(tmp_path / "count.csv")
    assert counted["pct_ALL"].iloc[0] + counted["pct_HLT"].iloc[0] == pytest.approx(100)
    served = mlflow.pyfunc.load_model(str(out / "model")).predict(pd.DataFrame({"path": cells}))
    assert served["pct_ALL"].iloc[0] == pytest.approx(counted["pct_ALL"].iloc[0]), "the served model counts too"
    # the types from a finished cell study (an atlas of pictures no patient holds), registered: models:/atlas@champion
    from conftest import compose
    from leukexp.tracking.model_registry import register

    train(compose(tmp_path, *TINY_MODEL, "data=synthetic_atlas", "data.counts={blast: 6, neutrophil: 6, lymphocyte: 6}",
                  "data.cell_size=32", "task=folders", "head=logreg", "augmentation=none", "fold.n_splits=3",
                  "mlflow.experiment_name=atlas", output_dir=tmp_path / "atlas"))
    client = MlflowClient(f"sqlite:///{tmp_path}/mlruns/mlflow.db")
    register(client, client.get_experiment_by_name("atlas").experiment_id, "atlas")
    train(compose_cfg(*BAG_RUN, "head=differential", "head.cells=models:/atlas@champion", "fold.index=2"))
    assert set(pd.read_csv(out / "differential.csv")["type"]) == {"blast", "lymphocyte", "neutrophil"}
    ratios = pd.read_csv(out / "odds_ratios.csv")
    assert list(ratios["type"]) == ["blast", "lymphocyte", "neutrophil"] and (ratios["odds_of"] == "ALL").all()
    assert ((ratios["ci_low"] <= ratios["odds_ratio"]) & (ratios["odds_ratio"] <= ratios["ci_high"])).all()
    assert (out / "differential.png").stat().st_size > 10_000
    assert {"pct_blast", "pct_lymphocyte", "pct_neutrophil"} <= set(pd.read_csv(out / PREDICTIONS_FILE).columns)
    fold = client.search_runs([client.get_experiment_by_name("leukexp").experiment_id],
                              "params.`cell_study.version` = 'atlas/1' and tags.`leukexp.kind` = 'fold'")
    assert len(fold) == 1 and fold[0].data.params["cell_study.types"] == "blast,lymphocyte,neutrophil"
    fitted = pd.read_csv(tmp_path / "atlas" / "model" / "data" / "classifier" / "trained_on.csv")
    assert fold[0].data.params["cell_study.pictures"] == str(len(fitted)) and 0 < len(fitted) < 18
    parent = client.get_run(fold[0].data.tags[PARENT_TAG])
    assert parent.data.params["cell_study.source"] == "models:/atlas@champion", "lineage on the parent too"
    assert "cell_study.version=atlas/1@" in fold[0].data.tags["cv_group"], "another version: another configuration"


def test_tiles_of_fields_are_embedded_once_per_tile(compose_cfg, tmp_path: Path) -> None:
    from leukexp.vocabulary import ATTENTION_DIR, ATTENTION_FILE

    run = [*TINY_MODEL, "data=synthetic_fields", "task=binary", "bags=tiles", "bags.tile=48",
           "data.counts={ALL: 5, HLT: 5}", "data.field_size=144", "data.cells_per_field=8", "fold.n_splits=2",
           "fold.val_fraction=0.5",
           "augmentation=none", "trainer.max_epochs=2", "training.batch_size=2"]
    train(compose_cfg(*run, "head=abmil"))
    tiles = pd.read_csv(tmp_path / "outputs" / "manifest.csv")["instances"].sum()
    assert len(stored(tmp_path)) == tiles and tiles > 8, "one embedding per kept tile"
    attention = pd.read_csv(tmp_path / "outputs" / ATTENTION_FILE)
    assert attention["x"].notna().all() and (attention["width"] == 48).all()
    assert (tmp_path / "outputs" / ATTENTION_DIR / "fields.png").is_file()
    manifest = pd.read_csv(tmp_path / "outputs" / "manifest.csv")
    field = manifest.iloc[0]
    (path,) = (tmp_path / "cache" / "synthetic").glob(f"fields-*/{field['file']}")
    import subprocess
    import sys

    table = tmp_path / "field.csv"
    done = subprocess.run([sys.executable, "-m", "leukexp.commands.predict", str(tmp_path / "outputs"), str(path),
                           "--out", str(table)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert pd.read_csv(table)["instances"].tolist() == [field["instances"]], "the same tiles as in training"
    boxes = pd.read_csv(tmp_path / "field_attention.csv")
    assert (boxes["width"] == 48).all() and (boxes["x"] + 48 <= 144).all() and np.isclose(boxes["weight"].sum(), 1)
    import mlflow.pyfunc

    served = mlflow.pyfunc.load_model(str(tmp_path / "outputs" / "model"))
    scored = served.predict(pd.DataFrame({"path": [str(path)]}))
    assert np.allclose(scored.filter(like="p_").to_numpy(), pd.read_csv(table).filter(like="p_").to_numpy(),
                       atol=1e-5), "the served model cuts the same tiles"
    train(compose_cfg(*run, "head=meanpool", "fold.index=1"))
    assert len(stored(tmp_path)) == tiles, "read again by another run, computed once"
