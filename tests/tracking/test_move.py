"""Copying a store's studies to another store (`leukexp-sync --from`): runs with their histories, artifacts,
datasets and links, registered versions with their aliases; a second move copies only what is missing."""

from pathlib import Path

import pytest
from mlflow.entities import Dataset, DatasetInput
from mlflow.tracking import MlflowClient

from leukexp.commands.sync import main
from leukexp.errors import LeukexpError
from leukexp.tracking.move import move_store
from leukexp.vocabulary import KIND_TAG, MOVE_STATE_TAG, NOTE_CONTENT, PARENT_TAG, REGISTRY_PARENT_TAG


def study_store(root: Path) -> tuple[str, dict[str, str]]:
    """A small store as leukexp writes one: a CV parent, two folds with histories, an artifact, a dataset input, and
    a registered version of a fold's model with an alias. Its URI and the source ids."""
    uri = f"sqlite:///{root}/mlflow.db"
    client = MlflowClient(uri, registry_uri=uri)
    experiment = client.create_experiment("study", artifact_location=str(root / "artifacts"),
                                          tags={NOTE_CONTENT: "the sweep"})
    parent = client.create_run(experiment, run_name="mlp1", tags={KIND_TAG: "cv"}, start_time=1_000)
    ids = {"parent": parent.info.run_id}
    for fold in ("f0", "f1"):
        run = client.create_run(experiment, run_name=f"mlp1 · {fold}", start_time=2_000 if fold == "f0" else 3_000,
                                tags={KIND_TAG: "fold", PARENT_TAG: parent.info.run_id, "fold": fold})
        for step, value in enumerate((0.5, 0.7, 0.9)):
            client.log_metric(run.info.run_id, "val/acc", value, timestamp=10_000 + step, step=step)
        client.log_param(run.info.run_id, "head.hidden", "128")
        client.log_text(run.info.run_id, f"model of {fold}", "model/MLmodel")
        client.log_inputs(run.info.run_id, [DatasetInput(Dataset("cells", "abc123", "local", "/data"))])
        client.set_terminated(run.info.run_id, "FINISHED", end_time=5_000)
        ids[fold] = run.info.run_id
    client.set_terminated(parent.info.run_id, "FINISHED", end_time=6_000)
    client.create_registered_model("atlas")
    fold0 = client.get_run(ids["f0"])
    version = client.create_model_version("atlas", f"{fold0.info.artifact_uri}/model", run_id=ids["f0"],
                                          tags={REGISTRY_PARENT_TAG: ids["parent"]})
    client.set_registered_model_alias("atlas", "champion", version.version)
    return uri, ids


def test_a_study_is_copied_with_its_links_and_a_second_move_duplicates_nothing(tmp_path: Path) -> None:
    source, ids = study_store(tmp_path / "old")
    (tmp_path / "new").mkdir()
    target = f"sqlite:///{tmp_path}/new/mlflow.db"
    report = move_store(source, target)
    assert (report.runs_copied, report.runs_skipped, report.versions_copied) == (3, 0, 1), report.summary()

    client = MlflowClient(target, registry_uri=target)
    experiment = client.get_experiment_by_name("study")
    assert experiment.tags[NOTE_CONTENT] == "the sweep"
    runs = {r.data.tags.get("fold", "parent"): r for r in client.search_runs([experiment.experiment_id])}
    assert sorted(runs) == ["f0", "f1", "parent"]
    for fold in ("f0", "f1"):
        run = runs[fold]
        assert run.data.tags[PARENT_TAG] == runs["parent"].info.run_id, "the fold sits under the copied parent"
        history = client.get_metric_history(run.info.run_id, "val/acc")
        assert [(m.step, m.value, m.timestamp) for m in history] == [(0, 0.5, 10_000), (1, 0.7, 10_001),
                                                                     (2, 0.9, 10_002)]
        assert run.data.params == {"head.hidden": "128"} and run.info.status == "FINISHED"
        assert run.info.end_time == 5_000 and run.info.run_id != ids[fold]
        assert [d.dataset.digest for d in run.inputs.dataset_inputs] == ["abc123"]
        text = Path(client.download_artifacts(run.info.run_id, "model/MLmodel", str(tmp_path))).read_text()
        assert text == f"model of {fold}"
    assert runs["f0"].info.start_time == 2_000 and runs["parent"].info.start_time == 1_000
    champion = client.get_model_version_by_alias("atlas", "champion")
    assert champion.run_id == runs["f0"].info.run_id and runs["f0"].info.run_id in champion.source
    assert champion.tags[REGISTRY_PARENT_TAG] == runs["parent"].info.run_id

    # a move stopped half-way through a run: that run is copied again, the others are skipped
    client.delete_tag(runs["f1"].info.run_id, MOVE_STATE_TAG)
    again = move_store(source, target)
    assert (again.runs_copied, again.runs_skipped, again.versions_copied, again.versions_skipped) == (1, 2, 0, 1)
    after = client.search_runs([experiment.experiment_id])
    assert len(after) == 3 and sorted(r.data.tags.get("fold", "p") for r in after) == ["f0", "f1", "p"]
    assert len(client.search_model_versions("name = 'atlas'")) == 1


def test_the_command_copies_and_names_what_is_missing_in_one_line(tmp_path: Path, capsys) -> None:
    source, _ = study_store(tmp_path / "old")
    target = f"sqlite:///{tmp_path}/new/mlflow.db"
    assert main(["--from", source, "--tracking-uri", target, "--experiment", "study"]) == 0
    assert "3 run(s) copied, 0 already there; 1 registered model version(s) copied" in capsys.readouterr().out
    with pytest.raises(SystemExit) as refused:
        main(["--from", source, "--tracking-uri", target, "--experiment", "nope"])
    assert refused.value.code == 2
    assert capsys.readouterr().err.strip() == (f"leukexp-sync: error: --experiment nope: not in {source}"
                                               " (it has: study, Default)")
    with pytest.raises(SystemExit) as nothing:
        main([])
    assert nothing.value.code == 2 and "--from STORE" in capsys.readouterr().err
    with pytest.raises(LeukexpError, match="the same store as the target"):
        move_store(source, source)
