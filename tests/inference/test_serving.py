"""A run's MLflow model: pyfunc round trip, safe loading, its signature and inputs; serving over HTTP."""

import base64
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import mlflow.pyfunc
import numpy as np
import pandas as pd
import pytest
import yaml
from mlflow.tracking import MlflowClient

from conftest import free_port
from leukexp.data.io import read_image
from leukexp.errors import LeukexpError
from leukexp.inference.classifier import load_classifier
from leukexp.vocabulary import LOADER_MODULE


def fold_run(store: Path, head: str = "mlp1", fold: str = "f0"):
    client = MlflowClient(f"sqlite:///{store}/mlruns/mlflow.db")
    experiment = client.get_experiment_by_name("study").experiment_id
    (run,) = client.search_runs([experiment], f"tags.head = '{head}' and tags.fold = '{fold}'")
    return client, run


def held_out_images(store: Path, head: str = "mlp1", fold: str = "f0") -> tuple[list[str], pd.DataFrame]:
    """The run's test images (full paths) and its predictions.csv."""
    run_dir = store / "outputs" / f"{head}-{fold}"
    predictions = pd.read_csv(run_dir / "predictions.csv")
    (root,) = {p.parent.parent for p in (store / "cache" / "synthetic").rglob("*.png")}
    return [str(root / f) for f in predictions["file"]], predictions


@pytest.mark.parametrize("head", ["mlp1", "svm"])
def test_pyfunc_round_trip_gives_the_runs_probabilities(study_store: Path, head: str) -> None:
    _, run = fold_run(study_store, head)
    model = mlflow.pyfunc.load_model(f"{run.info.artifact_uri}/model")
    paths, predictions = held_out_images(study_store, head)
    scored = model.predict(pd.DataFrame({"path": paths}))
    probabilities = [c for c in predictions.columns if c.startswith("p_")]
    assert np.allclose(scored[probabilities].to_numpy(), predictions[probabilities].to_numpy(), atol=1e-5)
    assert list(scored["predicted"]) == list(predictions["predicted"])
    encoded = base64.b64encode(Path(paths[0]).read_bytes()).decode()
    assert np.allclose(model.predict(pd.DataFrame({"image": [encoded]}))[probabilities].to_numpy()[0],
                       predictions[probabilities].to_numpy()[0], atol=1e-5)
    arrays = model.get_raw_model().predict_proba([np.zeros((50, 60, 3), np.uint8)])
    assert arrays.shape == (1, 2) and np.isclose(arrays.sum(), 1.0)


@pytest.mark.slow
def test_runs_uri_loads_in_a_fresh_process(study_store: Path) -> None:
    _, run = fold_run(study_store)
    paths, predictions = held_out_images(study_store)
    code = ("import mlflow.pyfunc, pandas as pd, sys; m = mlflow.pyfunc.load_model(sys.argv[1]);"
            " print(m.predict(pd.DataFrame({'path': [sys.argv[2]]}))['p_ALL'][0])")
    result = subprocess.run([sys.executable, "-c", code, f"runs:/{run.info.run_id}/model", paths[0]],
                            capture_output=True, text=True, timeout=120,
                            env={**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{study_store}/mlruns/mlflow.db"})
    assert result.returncode == 0, result.stderr[-2000:]
    assert float(result.stdout.strip().splitlines()[-1]) == pytest.approx(predictions["p_ALL"][0], abs=1e-5)


def test_the_model_loads_leukexps_code_and_holds_no_pickle(study_store: Path) -> None:
    model_dir = study_store / "outputs" / "svm-f0" / "model"
    meta = yaml.safe_load((model_dir / "MLmodel").read_text())
    assert meta["flavors"]["python_function"]["loader_module"] == LOADER_MODULE == "leukexp.inference.serving"
    inputs = json.loads(meta["signature"]["inputs"])
    assert {c["name"] for c in inputs} == {"path", "image"}
    outputs = {c["name"] for c in json.loads(meta["signature"]["outputs"])}
    assert outputs == {"predicted", "p_ALL", "p_HLT", "decision"}, "a binary study's model decides at its threshold"
    suffixes = {p.suffix for p in model_dir.rglob("*") if p.is_file()}
    assert not suffixes & {".pkl", ".pickle", ".joblib", ".cloudpickle"}, suffixes


def test_a_model_written_before_the_inference_wing_still_loads(study_store: Path, tmp_path: Path) -> None:
    """Models in users' registries name `leukexp.serving` as their loader: predict and pyfunc both accept it."""
    import shutil

    old = tmp_path / "old_model"
    shutil.copytree(study_store / "outputs" / "mlp1-f0" / "model", old)
    meta = yaml.safe_load((old / "MLmodel").read_text())
    meta["flavors"]["python_function"]["loader_module"] = "leukexp.serving"
    (old / "MLmodel").write_text(yaml.safe_dump(meta))
    paths, predictions = held_out_images(study_store)
    classifier = load_classifier(old)
    probs = classifier.predict_proba([read_image(path) for path in paths[:3]])
    assert [classifier.classes[i] for i in probs.argmax(1)] == list(predictions["predicted"][:3])
    scored = mlflow.pyfunc.load_model(str(old)).predict(pd.DataFrame({"path": paths[:1]}))
    assert scored["p_ALL"][0] == pytest.approx(predictions["p_ALL"][0], abs=1e-5)


def test_a_foreign_loader_is_refused(tmp_path: Path) -> None:
    (tmp_path / "MLmodel").write_text(yaml.safe_dump({"flavors": {"python_function": {"loader_module": "os"}}}))
    with pytest.raises(LeukexpError, match="not a leukexp model"):
        load_classifier(tmp_path)


def test_a_row_without_an_image_is_one_clear_error(study_store: Path) -> None:
    from leukexp.inference.serving import _load_pyfunc

    model = _load_pyfunc(str(study_store / "outputs" / "mlp1-f0" / "model" / "data" / "classifier"))
    with pytest.raises(LeukexpError, match="needs a 'path'"):
        model.predict(pd.DataFrame({"path": [None]}))
    with pytest.raises(LeukexpError, match="not base64"):
        model.predict(pd.DataFrame({"image": ["***"]}))


@pytest.mark.slow
def test_the_registered_model_is_served_over_http(study_store: Path, tmp_path: Path) -> None:
    uri = f"sqlite:///{study_store}/mlruns/mlflow.db"
    report = subprocess.run([sys.executable, "-m", "leukexp.commands.report", "--experiment", "study",
                             "--tracking-uri", uri,
                             "--out", str(tmp_path / "report"), "--register", "served"], capture_output=True,
                            text=True, timeout=120)
    assert report.returncode == 0, report.stderr[-2000:]
    port = free_port()
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    server = subprocess.Popen([sys.executable, "-m", "mlflow", "models", "serve", "-m", "models:/served/1",
                               "--env-manager", "local", "--host", "127.0.0.1", "--port", str(port)], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2)
                break
            except OSError:
                time.sleep(0.5)
        paths, _ = held_out_images(study_store)
        body = json.dumps({"dataframe_split": {"columns": ["path"], "data": [[paths[0]]]}}).encode()
        request = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", data=body,
                                         headers={"Content-Type": "application/json"})
        answer = json.loads(urllib.request.urlopen(request, timeout=60).read())["predictions"][0]
    finally:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait(30)
    assert answer["predicted"] in ("ALL", "HLT") and np.isclose(answer["p_ALL"] + answer["p_HLT"], 1.0)
    version = MlflowClient(uri).get_model_version("served", "1")
    (chosen,) = [h for h in ("mlp1", "svm") if fold_run(study_store, h, version.tags["fold"])[1].info.run_id
                 == version.run_id]
    run_dir = study_store / "outputs" / f"{chosen}-{version.tags['fold']}"
    probs = load_classifier(run_dir).predict_proba([read_image(paths[0])])[0]
    assert answer["p_ALL"] == pytest.approx(probs[0], abs=1e-5)
