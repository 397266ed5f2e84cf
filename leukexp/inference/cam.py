"""Class activation maps: where the frozen backbone's last stage looked for the predicted class (grad-cam).

The backbone stays frozen: gradients flow to its activations only for the map, never into weights. A map
needs a torch backbone (timm) and a head with differentiable class scores (the MLPs, and the linear
scikit-learn heads through an equivalent linear layer); for other heads it is refused with one line.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np
import torch
from torch import nn

from leukexp.backbones.timm_backbone import TimmBackbone
from leukexp.errors import LeukexpError

if TYPE_CHECKING:
    from leukexp.inference.classifier import Classifier

# images per grad-cam pass: a warm default run peaks at 1.6 GB instead of 1.9 GB with all 20 at once
CAM_CHUNK = 4


class _Scorer(nn.Module):
    """Image batch -> class scores through the frozen backbone and the head's differentiable scores."""

    def __init__(self, backbone: TimmBackbone, scores: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        self.scores = scores

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.scores(self.backbone.features(images))  # every pooled stage the head was trained on


def _tokens_to_grid(tokens: torch.Tensor) -> torch.Tensor:
    """Vision-transformer activations (N, tokens, C) -> (N, C, h, w), dropping the class and register tokens."""
    if tokens.dim() != 3:
        return tokens
    side = int(np.sqrt(tokens.shape[1] - 1))
    grid = tokens[:, -side * side:, :]
    return grid.reshape(tokens.shape[0], side, side, tokens.shape[2]).permute(0, 3, 1, 2)


def cam_model(classifier: Classifier) -> tuple[nn.Module, nn.Module]:
    """The scorer module and its target layer (the backbone's last feature stage, also for multi-stage features),
    or a one-line error."""
    backbone = classifier.backbone
    if not isinstance(backbone, TimmBackbone) or not hasattr(backbone.model, "feature_info"):
        raise LeukexpError(f"activation maps need a timm backbone; {backbone.label} is not one")
    trunk = backbone.model
    scores = classifier.head.class_scores()
    if scores is None:
        raise LeukexpError(f"activation maps need a head with class scores (mlp*, svm, logreg);"
                           f" this {type(classifier.head).__name__} has none")
    layer = trunk.get_submodule(trunk.feature_info[-1]["module"])
    device = next(trunk.parameters()).device
    if next(scores.parameters()).device != device:  # a GPU backbone, a head on the CPU: a copy follows the backbone
        scores = copy.deepcopy(scores).to(device)
    return _Scorer(backbone, scores).eval(), layer


def activation_maps(classifier: Classifier, images: Sequence[np.ndarray],
                    targets: Sequence[int] | None = None) -> list[np.ndarray]:
    """Grad-CAM maps in [0, 1], one (H, W) array per image at that image's own size (real folders mix sizes), for
    `targets` (default: the prediction)."""
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    scorer, layer = cam_model(classifier)
    batch = torch.stack([classifier.prepare(image) for image in images])
    if targets is None:
        targets = classifier.predict_proba(list(images)).argmax(1).tolist()
    with GradCAM(model=scorer, target_layers=[layer], reshape_transform=_tokens_to_grid) as cam:
        grids = cam(input_tensor=batch.requires_grad_(True),
                    targets=[ClassifierOutputTarget(int(t)) for t in targets])
    return [np.clip(cv2.resize(grid, (image.shape[1], image.shape[0]), interpolation=cv2.INTER_LINEAR), 0.0, 1.0)
            for grid, image in zip(grids, images, strict=True)]


def overlay(image: np.ndarray, heatmap: np.ndarray, weight: float = 0.45) -> np.ndarray:
    """The RGB image with the map as a jet-coloured overlay (8-bit RGB)."""
    from pytorch_grad_cam.utils.image import show_cam_on_image

    return show_cam_on_image(image.astype(np.float32) / 255.0, heatmap, use_rgb=True, image_weight=1 - weight)


def write_maps(classifier: Classifier, images: Sequence[np.ndarray], names: Sequence[str], folder: Path,
               batch_size: int = 16) -> list[Path]:
    """One PNG per image (`<name>.cam.png`): the image with the map of its predicted class."""
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for start in range(0, len(images), batch_size):
        chunk = list(images[start:start + batch_size])
        for image, heatmap, name in zip(chunk, activation_maps(classifier, chunk), names[start:start + batch_size],
                                        strict=True):
            path = folder / f"{Path(name).stem}.cam.png"
            cv2.imwrite(str(path), cv2.cvtColor(overlay(image, heatmap), cv2.COLOR_RGB2BGR))
            written.append(path)
    return written


def panel_selection(labels: np.ndarray, predicted: np.ndarray, per_class: int = 2) -> list[int]:
    """Indices of a few correct and a few wrong predictions per true class, in class order."""
    chosen: list[int] = []
    for label in np.unique(labels):
        rows = np.flatnonzero(labels == label)
        right = [int(i) for i in rows if predicted[i] == label][:per_class]
        wrong = [int(i) for i in rows if predicted[i] != label][:per_class]
        chosen += right + wrong
    return chosen


def cam_panel(classifier: Classifier, images: Sequence[np.ndarray] | Callable[[int], np.ndarray],
              labels: np.ndarray, path: Path, per_class: int = 2, probs: np.ndarray | None = None) -> Path | None:
    """One PNG of test images with their maps: a few correct and wrong per class, titled true -> predicted.

    `images` is a list, or a function reading image i (only the chosen ones are read); `probs` are the images'
    class probabilities when already known (else they are computed, which needs a list).
    """
    from leukexp.evaluation.plots import contact_sheet

    if probs is None:
        if callable(images):
            raise ValueError("cam_panel: probabilities of images read one by one must be given (probs)")
        probs = classifier.predict_proba(list(images))
    predicted = probs.argmax(1)
    chosen = panel_selection(np.asarray(labels), predicted, per_class)
    if not chosen:
        return None
    picked = [images(i) if callable(images) else images[i] for i in chosen]
    targets = [int(predicted[i]) for i in chosen]
    # a few images at a time: the backward pass through a large backbone holds every activation in memory
    maps = [heatmap for i in range(0, len(picked), CAM_CHUNK)
            for heatmap in activation_maps(classifier, picked[i:i + CAM_CHUNK], targets[i:i + CAM_CHUNK])]
    classes = classifier.classes
    titles = [f"{classes[labels[i]]} -> {classes[predicted[i]]} ({probs[i, predicted[i]]:.2f})" for i in chosen]
    return contact_sheet([overlay(image, m) for image, m in zip(picked, maps, strict=True)], titles, path,
                         columns=min(len(picked), 2 * per_class))
