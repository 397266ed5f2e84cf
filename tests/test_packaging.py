"""The built wheel carries the configs: `leukexp-train` works from a wheel, not only from a checkout."""

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from conftest import REPO_ROOT


@pytest.mark.slow
def test_wheel_contains_configs_and_composes_from_anywhere(tmp_path: Path) -> None:
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w",
                            str(tmp_path / "dist"), str(REPO_ROOT)], capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stderr[-2000:]
    wheel = next((tmp_path / "dist").glob("leukexp-*.whl"))
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        assert {"leukexp/conf/train.yaml", "leukexp/conf/model/efficientnet_lite0.yaml",
                "leukexp/conf/experiment/quickstart.yaml"} <= names
        (metadata,) = [n for n in names if n.endswith(".dist-info/METADATA")]
        fields = archive.read(metadata).decode()
        import leukexp

        assert f"Version: {leukexp.__version__}\n" in fields, "the version is written once, in leukexp/__init__.py"
        assert "License-Expression: Apache-2.0" in fields and any(n.endswith("licenses/LICENSE") for n in names)
        archive.extractall(tmp_path / "site")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "site")}
    code = "from leukexp.config.compose import config_dir; print(config_dir())"
    result = subprocess.run([sys.executable, "-c", code],
                            cwd=elsewhere, env=env, capture_output=True, text=True, timeout=120)
    assert result.stdout.strip() == str(tmp_path / "site" / "leukexp" / "conf")
    job = subprocess.run([sys.executable, "-m", "leukexp.commands.train", "--cfg", "job", "head=svm"],
                         cwd=elsewhere, env=env,
                         capture_output=True, text=True, timeout=120)
    assert job.returncode == 0, job.stderr
    assert "leukexp.heads.svm" in job.stdout
