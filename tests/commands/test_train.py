"""The command line as a user meets it: help, config printing, Hydra's own errors, contact sheet.

The one-line errors for bad input are the table in test_bad_inputs.py."""

import subprocess
import sys
from pathlib import Path

import cv2
import pytest

from conftest import REPO_ROOT, write_image

# every case starts `leukexp-train` or a script in a process of its own: `make test-fast` leaves them out
pytestmark = pytest.mark.slow


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "leukexp.commands.train", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=300)


def test_help_lists_the_groups(tmp_path: Path) -> None:
    result = run("--help", cwd=tmp_path)
    assert result.returncode == 0
    for group in ("data:", "task:", "fold:", "augmentation:", "protocol:", "model:", "head:", "experiment:"):
        assert group in result.stdout


def test_cfg_job_prints_the_composed_config(tmp_path: Path) -> None:
    result = run("--cfg", "job", "task=binary", "head=svm", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    for expected in ("name: binary", "leukexp.heads.svm", "tf_efficientnet_lite0"):
        assert expected in result.stdout


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
