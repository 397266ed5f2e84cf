"""Saving a trained head with a reference to its backbone, and loading both back for prediction.

A saved model is a folder: `classifier.json` (classes, the head's spec, the backbone's config and
fingerprint) and the head's weights (`head.pt` tensors or `head.skops`). Loading builds only leukexp's
own backbones and heads: a folder from a shared server cannot make it run other code.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from leukexp.backbones.base import Backbone
from leukexp.backbones.registry import build_backbone
from leukexp.data.io import read_image
from leukexp.errors import LeukexpError
from leukexp.heads.base import Head
from leukexp.heads.registry import load_head

log = logging.getLogger(__name__)
MANIFEST = "classifier.json"


def save_classifier(folder: Path, head: Head, backbone: Backbone, model_config: dict[str, Any],
                    classes: list[str]) -> Path:
    """Write the head's files and `classifier.json` (classes, head spec, backbone config and fingerprint)."""
    folder.mkdir(parents=True, exist_ok=True)
    meta = {"classes": classes, "head": head.save(folder), "model": model_config, "backbone": backbone.reference()}
    (folder / MANIFEST).write_text(json.dumps(meta, indent=2, default=str))
    return folder


@dataclass
class Classifier:
    """A frozen backbone and a trained head, ready to classify images."""

    backbone: Backbone
    head: Head
    classes: list[str]

    def predict_proba(self, images: list[np.ndarray]) -> np.ndarray:
        """Class probabilities for 8-bit RGB images."""
        batch = torch.stack([self.backbone.preprocess(image) for image in images])
        return self.head.predict_proba(self.backbone.embed(batch).numpy())

    def predict_files(self, paths: list[str | Path]) -> list[str]:
        """Predicted class names for image files."""
        probs = self.predict_proba([read_image(p) for p in paths])
        return [self.classes[i] for i in probs.argmax(1)]


def load_classifier(folder: str | Path) -> Classifier:
    """Rebuild backbone and head from a folder written by `save_classifier` (e.g. a run's `model` artifact)."""
    folder = Path(folder)
    manifest = folder / MANIFEST
    if not manifest.is_file():
        raise LeukexpError(f"{folder}: no {MANIFEST}; point at a run's 'model' artifact folder")
    try:
        meta = json.loads(manifest.read_text())
        classes, head_spec, model_config = list(meta["classes"]), dict(meta["head"]), dict(meta["model"])
    except (ValueError, KeyError, TypeError) as error:
        raise LeukexpError(f"{manifest}: not a leukexp model manifest ({type(error).__name__}: {error})") from error
    backbone = build_backbone(model_config, where=str(manifest))
    expected = meta.get("backbone", {}).get("fingerprint")
    if expected and backbone.fingerprint != expected:
        log.warning("backbone weights differ from those the head was trained on (%s != %s)",
                    backbone.fingerprint, expected)
    return Classifier(backbone, load_head(folder, head_spec), classes)
