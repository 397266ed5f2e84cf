"""Saving a trained head with a reference to its backbone, and loading it back for prediction."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch import nn

from leukexp.data.io import read_image
from leukexp.errors import LeukexpError
from leukexp.models.backbones import FrozenBackbone

log = logging.getLogger(__name__)
MANIFEST = "classifier.json"


def save_classifier(folder: Path, head: Any, head_config: dict, backbone: FrozenBackbone, model_config: dict,
                    classes: list[str], single_logit: bool) -> Path:
    """Write `classifier.json` (classes, head and backbone configs, backbone fingerprint) and the head's weights."""
    folder.mkdir(parents=True, exist_ok=True)
    if isinstance(head, nn.Module):
        weights = "head.pt"
        torch.save(head.state_dict(), folder / weights)
    else:
        weights = "head.joblib"
        joblib.dump(head, folder / weights)
    meta = {"classes": classes, "single_logit": single_logit, "weights": weights, "head": head_config,
            "model": model_config, "backbone": backbone.reference()}
    (folder / MANIFEST).write_text(json.dumps(meta, indent=2, default=str))
    return folder


@dataclass
class Classifier:
    """A frozen backbone and a trained head, ready to classify images."""

    backbone: FrozenBackbone
    head: Any
    classes: list[str]
    single_logit: bool

    def predict_proba(self, images: list[np.ndarray]) -> np.ndarray:
        """Class probabilities for 8-bit RGB images."""
        batch = torch.stack([self.backbone.preprocess(image) for image in images])
        features = self.backbone(batch)
        if not isinstance(self.head, nn.Module):
            return self.head.predict_proba(features.numpy())
        with torch.no_grad():
            logits = self.head(features)
        if self.single_logit:
            positive = torch.sigmoid(logits.squeeze(-1))
            return torch.stack([1 - positive, positive], -1).numpy()
        return torch.softmax(logits, -1).numpy()

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
    meta = json.loads(manifest.read_text())
    backbone: FrozenBackbone = instantiate(OmegaConf.create(meta["model"]))
    if backbone.fingerprint != meta["backbone"]["fingerprint"]:
        log.warning("backbone weights differ from those the head was trained on (%s != %s)",
                    backbone.fingerprint, meta["backbone"]["fingerprint"])
    if meta["weights"].endswith(".pt"):
        factory = instantiate(OmegaConf.create(meta["head"]))
        outputs = 1 if meta["single_logit"] else len(meta["classes"])
        head = factory(in_features=backbone.num_features, num_outputs=outputs)
        head.load_state_dict(torch.load(folder / meta["weights"], map_location="cpu", weights_only=True))
        head.eval()
    else:
        head = joblib.load(folder / meta["weights"])
    return Classifier(backbone, head, meta["classes"], meta["single_logit"])
