"""The command line as a user meets it: help, config printing, one-line errors, contact sheet."""

import subprocess
import sys
from pathlib import Path

import cv2

from conftest import REPO_ROOT, write_image


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "leukexp.train", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=300)


def assert_one_line_error(result: subprocess.CompletedProcess, *fragments: str) -> None:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    lines = [line for line in result.stderr.splitlines() if line.startswith("leukexp-train: error:")]
    assert len(lines) == 1, result.stderr
    for fragment in fragments:
        assert fragment in lines[0]


def test_help_lists_the_groups(tmp_path: Path) -> None:
    result = run("--help", cwd=tmp_path)
    assert result.returncode == 0
    for group in ("data:", "task:", "fold:", "augmentation:", "protocol:", "model:", "head:", "experiment:"):
        assert group in result.stdout


def test_cfg_job_prints_the_composed_config(tmp_path: Path) -> None:
    result = run("--cfg", "job", "task=binary", "head=svm", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    for expected in ("name: binary", "leukexp.heads.sklearn_head.svm", "tf_efficientnet_lite0"):
        assert expected in result.stdout


def test_missing_data_root(tmp_path: Path) -> None:
    assert_one_line_error(run("data=folder", cwd=tmp_path), "data.root")
    assert_one_line_error(run("data=folder", f"data.root={tmp_path / 'nope'}", cwd=tmp_path), "no such folder")


def test_bad_inputs_from_the_command_line(tmp_path: Path) -> None:
    root = tmp_path / "images"
    for i in range(6):
        write_image(root / "ALL" / f"a{i}.png", i)
        write_image(root / "healthy" / f"h{i}.png", 100 + i)
    (root / "healthy" / "broken.jpg").write_bytes(b"")
    base = ["data=folder", f"data.root={root}", "task=binary", "model.pretrained=false", "model=timm",
            "model.name=test_efficientnet", "mlflow.enabled=false"]
    assert_one_line_error(run(*base, cwd=tmp_path), "broken.jpg", "data.on_bad_image=skip")
    (root / "healthy" / "broken.jpg").unlink()
    write_image(root / "Monocyte" / "m.png", 999)
    assert_one_line_error(run(*base, cwd=tmp_path), "'Monocyte' is not a class")
    (root / "Monocyte" / "m.png").unlink()
    (root / "Monocyte").rmdir()
    assert_one_line_error(run(*base, "fold.n_splits=7", cwd=tmp_path), "fewer than fold.n_splits=7")


def test_unknown_option_is_a_short_hydra_error(tmp_path: Path) -> None:
    result = run("model=resnet9000", cwd=tmp_path)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert "model" in result.stderr and "efficientnet_lite0" in result.stderr


def test_contact_sheet(tmp_path: Path) -> None:
    image = write_image(tmp_path / "cell.png", 5, size=64)
    out = tmp_path / "sheet.png"
    result = subprocess.run([sys.executable, str(REPO_ROOT / "scripts" / "contact_sheet.py"), str(image),
                             "--out", str(out)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "33 views" in result.stdout
    sheet = cv2.imread(str(out))
    assert sheet is not None and sheet.shape[1] > sheet.shape[0]
