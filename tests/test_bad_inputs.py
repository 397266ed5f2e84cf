"""Every user mistake is one line: a table of bad inputs to `leukexp-train`, `leukexp-report` and `leukexp-sync`.

Each case asserts the exit code, exactly one `error:` line on stderr, no traceback, and that nothing was
left RUNNING in the store or half-written on disk.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from queue import Queue

import cv2
import numpy as np
import pytest
import torch
from forkserver import CommandServer
from mlflow.tracking import MlflowClient

from conftest import claiming_png, write_image
from leukexp.vocabulary import KIND_TAG

TINY = ["model=timm", "model.name=test_efficientnet", "model.pretrained=false", "model.input_size=32",
        "trainer.max_epochs=1", "evaluation.cam_panel=false"]


@dataclass
class Case:
    """One bad input: the command's arguments and a fragment the error line must contain."""

    args: list[str]
    expect: str
    program: str = "leukexp.commands.train"
    data: str = "binary"  # which data set the case runs on (built in `workspace`)
    extra: list[str] = field(default_factory=list)
    exit: int = 2  # 0: a damage the command heals, with one warning line saying `expect` (no error line)


def binary(root: str, own: list[str] | None = None) -> list[str]:
    """The base arguments on a folder data set, leaving out the groups a case picks itself."""
    own = own or []
    args = ["data=folder", f"data.root={root}", "augmentation=none"]
    if not any(a.startswith("task=") for a in own):
        args.append("task=binary")
    if not any(a.startswith("model=") for a in own):
        args += TINY
    else:
        args.append("trainer.max_epochs=1")
    return args


BAGS = ["bags=images", "head=abmil"]
TWO_FOLDS = ["fold.n_splits=2", "fold.val_fraction=0.5"]  # 4 patients a class
REPORT, SYNC, PREDICT = "leukexp.commands.report", "leukexp.commands.sync", "leukexp.commands.predict"
# the module each case runs, and the command name its error line starts with
COMMANDS = {"leukexp.commands.train": "leukexp-train", REPORT: "leukexp-report", SYNC: "leukexp-sync",
            PREDICT: "leukexp-predict"}
DAMAGED_JOURNAL = b"these are notes, not an Optuna journal\n"
SEARCH = ["-m", "hydra/sweeper=optuna", "optimizer.lr=interval(0.001,0.01)"]
CASES = {
    # hyperparameters, checked before anything is built or logged
    "dropout": Case(["head.dropout=1.5"], "head.dropout=1.5"),
    "lr": Case(["optimizer.lr=-1"], "optimizer.lr=-1"),
    "batch": Case(["training.batch_size=0"], "training.batch_size=0"),
    "svm_c": Case(["head=svm", "head.C=-1"], "'C' parameter of LinearSVC"),
    "svm_kernel": Case(["head=svm", "head.kernel=cubic"], "head.kernel='cubic'"),
    "logreg_c": Case(["head=logreg", "head.estimator.C=-1"], "'C' parameter of LogisticRegression"),
    "knn_k": Case(["head=knn", "head.k=0"], "head.k=0"),
    "hidden": Case(["head.hidden=[0]"], "head.hidden"),
    "hidden_text": Case(["head.hidden=abc"], "head.hidden"),
    "activation": Case(["head.activation=os.system"], "head.activation=os.system"),
    "target_not_allowed": Case(["head=logreg", "head.estimator._target_=subprocess.Popen"],
                               "head.estimator._target_='subprocess.Popen': configs build leukexp's classes"),
    "seed": Case(["seed=abc"], "seed='abc'"),
    "outputs": Case(["training.binary_outputs=3"], "training.binary_outputs=3"),
    "patience": Case(["training.early_stopping_patience=0"], "training.early_stopping_patience=0"),
    "workers": Case(["training.num_workers=-1"], "training.num_workers=-1"),
    "epochs": Case(["trainer.max_epochs=0"], "trainer.max_epochs=0"),
    "fold_index": Case(["fold.index=9"], "fold.index=9"),
    "n_splits": Case(["fold.n_splits=1"], "fold.n_splits=1"),
    "val_fraction": Case(["fold.val_fraction=1.5"], "fold.val_fraction=1.5"),
    "balance": Case(["protocol.balance=bogus"], "protocol.balance='bogus'"),
    "val_split": Case(["protocol.val_split=bogus"], "protocol.val_split='bogus'"),
    "precision": Case(["features.precision=fp8"], "features.precision='fp8'"),
    "device": Case(["features.device=tpu"], "features.device='tpu'"),
    "feature_batch": Case(["features.batch_size=0"], "features.batch_size=0"),
    "repeats": Case(["augmentation=paper", "augmentation.repeats=-1"], "augmentation.repeats=-1"),
    "bad_image_mode": Case(["data.on_bad_image=ignore"], "data.on_bad_image='ignore'"),
    # the backbone
    "model_name": Case(["model.name=not_a_model"], "model.name='not_a_model' is not a timm model"),
    "input_size": Case(["model.input_size=8"], "model.input_size=8"),
    "no_weights": Case(["model.pretrained=true", "model.weights_file=/nonexistent/w.pth"], "no such file"),
    "junk_weights": Case(["model.pretrained=true"], "not a readable weights file", extra=["junk_weights"]),
    "keras_app": Case(["model=keras", "model.application=NoSuchNet", "model.pretrained=false"],
                      "model.application='NoSuchNet'"),
    # the store
    "server_down": Case(["mlflow.tracking_uri=http://127.0.0.1:9"], "mlflow.tracking_uri=http://127.0.0.1:9"),
    "bad_scheme": Case(["mlflow.tracking_uri=bogus://foo"], "mlflow.tracking_uri=bogus://foo"),
    "not_sqlite": Case([], "is not a SQLite database", extra=["not_sqlite"]),
    # the data
    "no_root": Case(["data=folder", "task=binary", *TINY], "data.root", data="none"),
    "missing_root": Case(["data=folder", "data.root=/nonexistent/images", "task=binary", *TINY], "no such folder",
                         data="none"),
    "unknown_folder": Case([], "'Monocyte' is not a class", data="unknown_folder"),
    "empty_class": Case([], "has no images", data="empty_class"),
    "corrupt": Case([], "broken.png", data="corrupt"),
    "zero_byte": Case([], "empty.jpg", data="zero_byte"),
    "few_images": Case(["fold.n_splits=7"], "fewer than fold.n_splits=7"),
    "two_classes": Case([], "duplicate image in two classes", data="two_classes"),
    "few_groups": Case([], "fewer than fold.n_splits=5", extra=["few_groups"]),
    "groups_missing": Case([], "no group for", extra=["groups_missing"]),
    "mapping_typo": Case(["task=folders", "task.mapping={malignant: [ALL, Nope], benign: [HLT]}"],
                         "folder 'Nope' (under malignant) is not in data.root (class folders: ALL, HLT)"),
    # absurd sizes, divergence, the store's folder, the run folder (issues 22 and 24)
    "epochs_absurd": Case(["trainer.max_epochs=100000000"], "trainer.max_epochs=100000000: expected a whole number"),
    "width_absurd": Case(["head.hidden=[100000000]"], "head.hidden=[100000000]: a head of"),
    "batch_absurd": Case(["features.batch_size=1000000"], "features.batch_size=1000000"),
    "diverged": Case(["optimizer.lr=1e30", "mlflow.experiment_name=diverged"], "training diverged"),
    "store_folder": Case(["mlflow.tracking_uri=sqlite:////nonexistent-leukexp-store/mlflow.db"],
                         "the folder /nonexistent-leukexp-store does not exist"),
    "run_dir_file": Case([], "a part of this path is a file", extra=["run_dir_under_file"]),
    "mapping_twice": Case(["task=folders", "task.mapping={malignant: [ALL], benign: [HLT, ALL]}"],
                          "listed under both malignant and benign"),
    # leukexp-report and leukexp-sync
    "report_experiment": Case(["--experiment", "nope"], "not in this store", program=REPORT),
    "report_metric": Case(["--experiment", "leukexp", "--metric", "test/nope"], "--metric test/nope",
                          program=REPORT),
    "report_scheme": Case(["--experiment", "x", "--tracking-uri", "bogus://foo"], "--tracking-uri bogus://foo",
                          program=REPORT),
    "report_not_sqlite": Case(["--experiment", "x"], "is not a SQLite database", program=REPORT,
                              extra=["not_sqlite"]),
    "report_filter": Case(["--experiment", "leukexp", "--filter", "tags.x ==="], "--filter", program=REPORT),
    "sync_nothing": Case([], "nothing to upload", program=SYNC, extra=["sync_dir"]),
    "sync_damaged": Case([], "damaged (JSONDecodeError", program=SYNC, extra=["sync_damaged"]),
    # hostile files, costs read from headers, damaged searches, data that cannot carry the protocol (issue 32)
    "hostile_shard": Case(["mlflow.experiment_name=hostile"], "hostile.safetensors is damaged: not a regular file",
                          extra=["hostile_shard"], exit=0),
    "pixel_bomb": Case([], "bomb.png: 20,000 x 20,000 pixels", data="pixel_bomb"),
    "class_too_small": Case(["fold.n_splits=2"], "class ALL has 2 image(s): with fold.n_splits=2", data="small_class"),
    "external_is_study": Case([], "also in the study's data", extra=["external_is_study"]),
    "stain_blank": Case(["stain=reinhard"], "it is of one colour", extra=["blank_reference"]),
    "search_objective": Case([*SEARCH, "hydra.sweeper.objective=cv/nope_mean"], "objective='cv/nope_mean'"),
    "search_group_range": Case(["-m", "hydra/sweeper=optuna", "head=interval(0,1)"],
                               "head is a config group"),
    "search_journal": Case(SEARCH, "line 1 is not a journal entry", extra=["damaged_journal"]),
    "predict_parts": Case([], "the model folder's parts disagree", program=PREDICT, extra=["model_parts"]),
    "report_out_file": Case(["--experiment", "leukexp", "--out"], "is a file; give a folder", program=REPORT,
                            extra=["out_file"]),
    # bags and tiles (issue 39)
    "bag_key": Case([*BAGS, "+head.bogus=1"], "head.bogus: not a key of head (bag_network", data="bags"),
    "tile_max_mean": Case(["bags=tiles", "head=abmil", "bags.max_mean=-1"], "bags.max_mean=-1: expected a grey level"),
    "tile_candidates": Case(["bags=tiles", "head=abmil", "bags.tile=2"],
                            "4,000 x 4,000 px cut into 2 px tiles every 2 px is 4,000,000 candidate tiles, more than"
                            " bags.max_candidates=1,000,000", data="huge_field"),
    "own_labels_missing": Case(["bags=images", "head=vote", "head.labels=own", *TWO_FOLDS],
                               "head.labels=own: no instance carries its own label", data="bags"),
    "own_labels_foreign": Case(["bags=images", "head=vote", "head.labels=own", *TWO_FOLDS],
                               "labels instances 'lymphoblast', which are not classes", data="bags_foreign"),
    "instances_twice": Case(BAGS, "is listed twice with two instance_labels", data="bags_twice"),
    "groups_twice": Case([], "is listed twice with two groups", extra=["groups_twice"]),
    "bag_deep": Case(BAGS, "has no images directly in it; its 2 image(s) lie in sub-folders", data="bags_deep"),
    "few_bags": Case([*BAGS, "fold.n_splits=5"], "class ALL has 4 bag(s), fewer than fold.n_splits=5", data="bags"),
    "blank_two_classes": Case([], "are the same blank image (one colour, no cells)", data="blank_two_classes"),
    "differential_features": Case(["bags=images", "head=differential", "head.features=nope"],
                                  "head.features='nope': expected soft", data="bags"),
    "differential_no_types": Case(["bags=images", "head=differential", *TWO_FOLDS],
                                  "head.cells=own: the training bags' instances carry 0 cell type(s)", data="bags"),
    "differential_topk": Case(["bags=images", "head=differential", "head.topk=50", *TWO_FOLDS],
                              "head.topk=50: larger than every training bag (the largest holds 2 instances)",
                              data="bags_typed"),
    "cells_bag_model": Case(["bags=images", "head=differential", *TWO_FOLDS], "a bag model (head bag: one diagnosis"
                            " per bag), not a classifier of cells", data="bags", extra=["cells_bag_model"]),
    "cells_missing": Case(["bags=images", "head=differential", *TWO_FOLDS], "no-cell-study: no such folder",
                          data="bags", extra=["cells_missing"]),
    "cells_unknown_types": Case(["bags=images", "head=differential", *TWO_FOLDS], "its cell types are unknown",
                                data="bags", extra=["cells_unknown_types"]),
    "cells_seen_pictures": Case(["bags=images", "head=differential", *TWO_FOLDS], "picture(s) of this study, e.g. its"
                                " ALL/a", data="bags_of_binary", extra=["cells_study"]),
    "predict_weights": Case([], "pass --allow-weight-mismatch", program=PREDICT, extra=["weights_mismatch"]),
    "predict_same_name": Case([], "two bags would be named 'p1'", program=PREDICT, extra=["same_name"]),
    "predict_table_folder": Case([], "is a folder; give --out a file path", program=PREDICT,
                                 extra=["attention_folder"]),
}
if not torch.cuda.is_available():  # where CUDA exists, trainer=gpu is no mistake
    CASES["gpu_trainer"] = Case(["trainer=gpu"], "trainer.accelerator=gpu: no CUDA device here")


def make_data(root: Path, kind: str) -> Path:
    """A small two-class data set `root/<kind>` with 6 images a class, spoilt as the case needs."""
    folder = root / kind
    if folder.exists():
        return folder
    if kind.startswith("bags"):
        return make_bag_data(folder, kind)
    seed = {"binary": 0, "unknown_folder": 100, "empty_class": 200, "corrupt": 300, "zero_byte": 400,
            "two_classes": 500, "pixel_bomb": 600, "small_class": 700, "blank_two_classes": 800,
            "huge_field": 900}[kind]
    for i in range(6):
        if kind != "small_class" or i < 2:
            write_image(folder / "ALL" / f"a{i}.png", seed + i)
        if kind != "empty_class":
            write_image(folder / "HLT" / f"h{i}.png", seed + 50 + i)
    if kind == "unknown_folder":
        write_image(folder / "Monocyte" / "m.png", seed + 99)
    elif kind == "empty_class":
        (folder / "HLT").mkdir()
        (folder / "HLT" / "notes.txt").write_text("no images")
    elif kind == "corrupt":
        (folder / "HLT" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    elif kind == "zero_byte":
        (folder / "HLT" / "empty.jpg").write_bytes(b"")
    elif kind == "pixel_bomb":  # 1 KB that claims 20,000 x 20,000 pixels
        (folder / "HLT" / "bomb.png").write_bytes(claiming_png(20_000, 20_000))
    elif kind == "two_classes":
        (folder / "HLT" / "copy.png").write_bytes((folder / "ALL" / "a0.png").read_bytes())
    elif kind == "blank_two_classes":  # the same empty field filed under both classes
        for label in ("ALL", "HLT"):
            cv2.imwrite(str(folder / label / "empty-field.png"), np.full((48, 48, 3), 240, np.uint8))
    elif kind == "huge_field":  # 4,000 x 4,000 px: 48 MB of pixels, 4 M tiles of 2 px
        cv2.imwrite(str(folder / "HLT" / "huge.png"), np.full((4000, 4000), 120, np.uint8))
    return folder


def make_bag_data(folder: Path, kind: str) -> Path:
    """Patients as bag folders, 4 a class of 2 cells each (`ROOT/<class>/<patient>/`), spoilt as the case needs."""
    for label, name in (("ALL", "p"), ("HLT", "q")):
        for patient in range(4):
            for cell in range(2):
                write_image(folder / label / f"{name}{patient}" / f"c{cell}.png", 1000 + patient * 10 + cell
                            + (0 if label == "ALL" else 500))
    if kind == "bags_typed":  # every cell's type
        rows = [f"{p.relative_to(folder).as_posix()},{'blast' if p.name == 'c0.png' else 'lymphocyte'}"
                for p in sorted(folder.rglob("*.png"))]
        (folder / "instances.csv").write_text("file,instance_label\n" + "\n".join(rows) + "\n")
    elif kind == "bags_foreign":  # cell types, not the task's classes
        (folder / "instances.csv").write_text("file,instance_label\nALL/p0/c0.png,lymphoblast\n")
    elif kind == "bags_twice":  # one cell moved to the other class by a second row
        (folder / "instances.csv").write_text("file,instance_label\nALL/p0/c0.png,ALL\nALL/p0/c0.png,HLT\n")
    elif kind == "bags_of_binary":  # each patient's first cell is a picture of the `binary` set (a cell study's)
        for label, name, seed in (("ALL", "p", 0), ("HLT", "q", 50)):
            for patient in range(4):
                write_image(folder / label / f"{name}{patient}" / "c0.png", seed + patient)
    elif kind == "bags_deep":  # a patient whose cells lie two folders further down
        (folder / "HLT" / "q3" / "scan" / "day1").mkdir(parents=True)
        for cell in (folder / "HLT" / "q3").glob("*.png"):
            cell.rename(folder / "HLT" / "q3" / "scan" / "day1" / cell.name)
    return folder


def command(case: Case, root: Path) -> list[str]:
    """A case's module and arguments (`python -m` of them), with its files made."""
    args = list(case.args)
    if args[:1] == ["-m"]:  # a multirun's flag goes before the overrides
        args = args[1:]
    if case.program == "leukexp.commands.train" and case.data != "none":
        args = binary(str(make_data(root, case.data)), args) + args
    for extra in case.extra:
        if extra == "junk_weights":
            junk = root / "junk.pth"
            junk.write_bytes(bytes(range(256)) * 16)
            args.append(f"model.weights_file={junk}")
        elif extra == "not_sqlite":
            fake = root / "notes.db"
            fake.write_text("these are my notes, not a database\n")
            args.append(f"mlflow.tracking_uri=sqlite:///{fake}" if case.program == "leukexp.commands.train"
                        else f"--tracking-uri=sqlite:///{fake}")
        elif extra in ("few_groups", "groups_missing"):
            csv = root / f"{extra}.csv"
            data = make_data(root, "binary")
            files = sorted(p.relative_to(data).as_posix() for p in data.rglob("*.png"))
            if extra == "few_groups":
                rows = [f"{f},{'p1' if f.startswith('ALL') else 'p2'}" for f in files]
            else:
                rows = [f"{f},p{i}" for i, f in enumerate(files[:-1])]
            csv.write_text("file,group\n" + "\n".join(rows) + "\n")
            args.append(f"data.groups_csv={csv}")
        elif extra == "sync_dir":
            (root / "not-a-run").mkdir(exist_ok=True)
            args.append(str(root / "not-a-run"))
        elif extra == "sync_damaged":
            (root / "damaged-run").mkdir(exist_ok=True)
            (root / "damaged-run" / "mlflow_pending.json").write_text('{"tracking_uri": ')
            args.append(str(root / "damaged-run"))
        elif extra == "out_file":
            (root / "report.txt").write_text("my notes")
            args.append(str(root / "report.txt"))
        elif extra == "hostile_shard":  # a pipe named as a shard, in a copy of the finished run's store
            store = root / "hostile-cache"
            if not store.exists():
                shutil.copytree(root / "cache", store)
                (folder,) = (store / "features").iterdir()  # the one backbone's store
                os.mkfifo(folder / "hostile.safetensors")
            args += [f"paths.cache_dir={store}"]
        elif extra == "external_is_study":
            args.append(f"evaluation.external={make_data(root, 'binary')}")
        elif extra == "blank_reference":
            cv2.imwrite(str(root / "blank.png"), np.full((64, 64, 3), 255, np.uint8))
            args.append(f"stain.reference={root / 'blank.png'}")
        elif extra == "damaged_journal":
            (root / "damaged.journal").write_bytes(DAMAGED_JOURNAL)
            args.append(f"hydra.sweeper.storage={root / 'damaged.journal'}")
        elif extra == "model_parts":  # a saved model whose manifest lists a class its head does not score
            model = root / "parts-disagree"
            if not model.exists():
                shutil.copytree(next((root / "logs" / "runs").glob("*/model")), model)
                manifest = model / "data" / "classifier" / "classifier.json"
                saved = json.loads(manifest.read_text())
                manifest.write_text(json.dumps({**saved, "classes": [*saved["classes"], "AML"]}))
            args += [str(model), str(make_data(root, "binary") / "ALL")]
        elif extra == "groups_twice":
            csv = root / "groups_twice.csv"
            data = make_data(root, "binary")
            files = sorted(p.relative_to(data).as_posix() for p in data.rglob("*.png"))
            rows = [f"{f},p{i}" for i, f in enumerate(files)] + [f"{files[0]},p99"]
            csv.write_text("file,group\n" + "\n".join(rows) + "\n")
            args.append(f"data.groups_csv={csv}")
        elif extra == "cells_bag_model":
            args.append(f"head.cells={root / 'bag-run'}")
        elif extra == "cells_missing":
            args.append(f"head.cells={root / 'no-cell-study'}")
        elif extra == "cells_study":  # the workspace's finished run, a classifier of ALL and HLT pictures
            args.append(f"head.cells={next((root / 'logs' / 'runs').glob('*/model'))}")
        elif extra == "cells_unknown_types":  # a cell study whose manifest names one type twice
            model = root / "types-unknown"
            if not model.exists():
                shutil.copytree(next((root / "logs" / "runs").glob("*/model")), model)
                manifest = model / "data" / "classifier" / "classifier.json"
                manifest.write_text(json.dumps({**json.loads(manifest.read_text()), "classes": ["ALL", "ALL"]}))
            args.append(f"head.cells={model}")
        elif extra == "weights_mismatch":  # a random-init model whose recorded seed is not the one it was built with
            model = root / "weights-differ"
            if not model.exists():
                shutil.copytree(next((root / "logs" / "runs").glob("*/model")), model)
                manifest = model / "data" / "classifier" / "classifier.json"
                manifest.write_text(json.dumps({**json.loads(manifest.read_text()), "seed": 7}))
            args += [str(model), str(make_data(root, "binary") / "ALL")]
        elif extra == "same_name":  # two cohorts' patient folders of one name, given directly
            cohorts = root / "cohorts"
            for cohort in ("A", "B"):
                if not (cohorts / cohort / "p1").exists():
                    shutil.copytree(make_data(root, "bags") / "ALL" / "p0", cohorts / cohort / "p1")
            args += [str(root / "bag-run"), str(cohorts / "A" / "p1"), str(cohorts / "B" / "p1")]
        elif extra == "attention_folder":  # a folder where the attention table would go
            (root / "taken_attention.csv").mkdir(exist_ok=True)
            args += [str(root / "bag-run"), str(make_data(root, "bags") / "ALL" / "p0"), "--out",
                     str(root / "taken.csv")]
        elif extra == "run_dir_under_file":
            (root / "plain-file").write_text("not a folder")
            args.append(f"hydra.run.dir={root / 'plain-file' / 'run'}")
    return [case.program, *(["-m"] if case.args[:1] == ["-m"] else []), *args]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with a real store holding one finished run (for the report cases)."""
    root = tmp_path_factory.mktemp("bad-inputs")
    data = make_data(root, "binary")
    result = subprocess.run([sys.executable, "-m", "leukexp.commands.train", *binary(str(data))], cwd=root,
                            capture_output=True, text=True, timeout=300, env={"CI": "true", **_env()})
    assert result.returncode == 0, result.stderr[-2000:]
    bags = [*binary(str(make_data(root, "bags"))), *BAGS, *TWO_FOLDS,
            "mlflow.enabled=false", f"hydra.run.dir={root / 'bag-run'}"]  # a bag model, for leukexp-predict
    result = subprocess.run([sys.executable, "-m", "leukexp.commands.train", *bags], cwd=root, capture_output=True,
                            text=True, timeout=300, env={"CI": "true", **_env()})
    assert result.returncode == 0, result.stderr[-2000:]
    return root


def _env() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}


@pytest.mark.slow
def test_every_bad_input_is_one_line_and_leaves_nothing_behind(workspace: Path,
                                                               command_server: CommandServer) -> None:
    assert len(CASES) >= 40
    commands = {name: command(case, workspace) for name, case in CASES.items()}
    servers = Queue()

    def run(name: str) -> subprocess.CompletedProcess:
        server = servers.get()
        try:
            return server.run(commands[name], cwd=workspace, env={**_env(), "CI": "true"}, timeout=240)
        finally:
            servers.put(server)

    with CommandServer() as second, ThreadPoolExecutor(max_workers=2) as pool:  # the worker's own, and one more
        servers.put(command_server)
        servers.put(second)
        results = dict(zip(CASES, pool.map(run, CASES), strict=True))
    problems = []
    for name, result in results.items():
        case = CASES[name]
        program = COMMANDS[case.program]
        lines = [line for line in result.stderr.splitlines() if line.startswith(f"{program}: error:")]
        if case.exit == 0:
            warned = [line for line in (result.stderr + result.stdout).splitlines() if case.expect in line]
            if result.returncode or lines or len(warned) != 1 or "Traceback" in result.stderr + result.stdout:
                problems.append(f"{name}: exit {result.returncode}, {len(warned)} warning line(s) saying"
                                f" {case.expect!r}\n{result.stderr[-1500:]}")
            continue
        if result.returncode != 2 or len(lines) != 1 or "Traceback" in result.stderr + result.stdout:
            problems.append(f"{name}: exit {result.returncode}, {len(lines)} error line(s)\n{result.stderr[-1500:]}")
        elif case.expect not in lines[0]:
            problems.append(f"{name}: {lines[0]!r} does not say {case.expect!r}")
    assert not problems, "\n".join(problems)
    client = MlflowClient(f"sqlite:///{workspace}/mlruns/mlflow.db")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert [r.info.status for r in runs if r.info.status == "RUNNING"] == []
    diverged = client.get_experiment_by_name("diverged").experiment_id
    assert [r.info.status for r in runs if r.info.experiment_id == diverged
            and r.data.tags.get(KIND_TAG) == "fold"] == ["FAILED"], "the diverged run is FAILED"
    healed = client.get_experiment_by_name("hostile").experiment_id
    assert [r.info.status for r in runs if r.info.experiment_id == healed
            and r.data.tags.get(KIND_TAG) == "fold"] == ["FINISHED"], "the run on a store with a hostile file"
    (moved,) = (workspace / "hostile-cache").glob("features/*/quarantine/hostile.safetensors.*")
    assert moved.is_fifo() and not list((workspace / "hostile-cache").glob("features/*/hostile.safetensors")), (
        "the pipe was moved aside")
    started = [r for r in runs if r.data.tags.get(KIND_TAG) == "fold"
               and r.info.experiment_id not in (diverged, healed)]
    assert len(started) == 1, "no other bad input started a run"
    assert [p.name for p in workspace.rglob("*.journal*")] == ["damaged.journal"], "no search began"
    assert (workspace / "damaged.journal").read_bytes() == DAMAGED_JOURNAL, "the damaged journal is left as it was"
    assert not Path("/nonexistent-leukexp-store").exists(), "no folder was made for a store outside the project"
    assert (workspace / "report.txt").read_text() == "my notes", "nothing already written is lost"
    assert not list(workspace.rglob("*.tmp")), "nothing half-written"
    assert not (workspace / "taken.csv").exists(), "the bag table is written with its attention table, or not at all"


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Callable[..., Path]]:
    """Mount a small (or read-only) tmpfs: a full disk and a read-only file system, for real."""
    mounts: list[Path] = []

    def mount(name: str, size: str = "256k", read_only: bool = False) -> Path:
        point = tmp_path / name
        point.mkdir()
        options = f"size={size}" + (",ro" if read_only else "")
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(point)], capture_output=True,
                              text=True)
        if done.returncode:
            pytest.skip(f"mounting a small file system needs root here ({done.stderr.strip()})")
        mounts.append(point)
        return point

    yield mount
    for point in mounts:
        subprocess.run(["umount", "-l", str(point)], check=False)


def run_train(server: CommandServer, root: Path, *args: str) -> subprocess.CompletedProcess:
    data = make_data(root, "binary")
    return server.run(["leukexp.commands.train", *binary(str(data)), *args], cwd=root, timeout=300,
                      env={**_env(), "CI": "true"})


def one_error_line(result: subprocess.CompletedProcess) -> str:
    lines = [line for line in result.stderr.splitlines() if line.startswith("leukexp-train: error:")]
    assert result.returncode == 2 and len(lines) == 1, result.stderr[-3000:]
    assert "Traceback" not in result.stderr + result.stdout and "Logging error" not in result.stderr
    return lines[0]


def fold_statuses(root: Path) -> list[str]:
    client = MlflowClient(f"sqlite:///{root}/mlruns/mlflow.db")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    return sorted(r.info.status for r in runs if r.data.tags.get(KIND_TAG) == "fold")


@pytest.mark.slow
def test_file_system_faults_of_the_run_folder_are_one_line(tmp_path: Path, small_disk, command_server) -> None:
    full, read_only = small_disk("full", "160k"), small_disk("read-only", read_only=True)
    line = one_error_line(run_train(command_server, tmp_path, f"hydra.run.dir={full}/run"))
    assert line.startswith(f"leukexp-train: error: {full}/run") and "no space left on the device" in line, line
    assert fold_statuses(tmp_path) == ["FAILED"], "the run that could not keep its files is FAILED, not RUNNING"
    assert not list(full.rglob("*.tmp")), "nothing half-written"
    line = one_error_line(run_train(command_server, tmp_path, f"hydra.run.dir={read_only}/run"))
    assert f"{read_only}/run" in line and "read-only file system" in line
    line = one_error_line(run_train(command_server, tmp_path, f"hydra.run.dir={read_only}"))  # Hydra's log file
    assert f"{read_only}/train.log: read-only file system" in line


@pytest.mark.slow
def test_a_cache_that_is_full_or_read_only_keeps_features_in_memory(tmp_path: Path, small_disk,
                                                                      command_server) -> None:
    for disk in (small_disk("full", "8k"), small_disk("read-only", read_only=True)):
        result = run_train(command_server, tmp_path, f"features.dir={disk}/features", f"paths.cache_dir={disk}/cache")
        assert result.returncode == 0, result.stderr[-3000:]
        assert "cannot be written" in result.stderr + result.stdout and "not written:" in result.stdout
        assert not list(disk.rglob("*.tmp"))
    assert fold_statuses(tmp_path) == ["FINISHED", "FINISHED"]


@pytest.mark.slow
def test_a_read_only_or_full_artifact_folder_is_named_and_the_run_kept(tmp_path: Path, small_disk,
                                                                      command_server) -> None:
    assert run_train(command_server, tmp_path).returncode == 0  # the store and its experiment exist
    artifacts = tmp_path / "mlruns" / "artifacts"
    for fault, (seed, why) in {"read-only": (1, "read-only file system"), "full": (2, "no space left")}.items():
        disk = small_disk(fault, "96k", read_only=fault == "read-only")
        shutil.rmtree(artifacts)
        artifacts.symlink_to(disk, target_is_directory=True)  # the experiment's artifact folder is now that disk
        line = one_error_line(run_train(command_server, tmp_path, f"seed={seed}"))
        assert str(artifacts) in line and why in line and "leukexp-sync" in line, line
        assert line.split(": ")[2].startswith(str(artifacts)), "named by the disk that failed, not the copy's source"
        assert "stopped answering" not in line
        artifacts.unlink()
        artifacts.mkdir()
    assert fold_statuses(tmp_path) == ["FAILED", "FAILED", "FINISHED"], "nothing is left RUNNING"
