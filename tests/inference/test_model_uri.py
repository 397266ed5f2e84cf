"""Where a saved model is: a folder, or runs:/ and models:/ on the tracking store; a failure is one line."""

import os
from pathlib import Path

import pytest

from leukexp.errors import LeukexpError
from leukexp.inference.model_uri import is_store_uri, resolve_model


def test_unknown_models_are_one_line(tmp_path: Path) -> None:
    with pytest.raises(LeukexpError, match="no such folder"):
        resolve_model(str(tmp_path / "nope"))
    with pytest.raises(LeukexpError, match=r"^head\.cells=/.*nope: no such folder"):
        resolve_model(str(tmp_path / "nope"), key="head.cells=")
    with pytest.raises(LeukexpError, match=r"models:/nope/1: cannot be loaded"):
        resolve_model("models:/nope/1", f"sqlite:///{tmp_path}/store.db")
    with pytest.raises(LeukexpError, match="expected models:/NAME/VERSION"):
        resolve_model("models:/nope/latest", f"sqlite:///{tmp_path}/store.db")
    assert "MLFLOW_TRACKING_URI" not in os.environ, "no global MLflow state is changed"
    assert is_store_uri("runs:/abc/model") and is_store_uri("models:/atlas@champion")
    assert not is_store_uri(str(tmp_path)) and not is_store_uri("atlas/run-3")
