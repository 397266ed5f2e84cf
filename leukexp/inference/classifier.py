"""Saving a trained head with a reference to its backbone, and loading both back for prediction.

A saved classifier is a folder: `classifier.json` (classes, the head's spec, the backbone's config and
fingerprint) and the head's weights (`head.pt` tensors or `head.skops`). A run's `model/` artifact is an MLflow
model holding that folder as its data (`leukexp.inference.serving`). Loading builds only leukexp's own backbones and
heads from an allow-list, resolves no interpolation in the stored config, loads only tensors and a fixed list of
scikit-learn types, and refuses a model with a `code/` folder: a folder from a shared server cannot make
`leukexp-predict` run other code. (`mlflow.pyfunc.load_model` is MLflow's: it imports whatever loader a model
names, so load only models you trust that way.)
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from leukexp.backbones.base import Backbone
from leukexp.backbones.loading import build_backbone
from leukexp.csv_files import read_csv, write_csv
from leukexp.data import tiles  # noqa: F401 - registers bags=tiles, which Bags.from_saved reads back
from leukexp.data.bags import Bags, ImageBags
from leukexp.data.stain import NoStain, StainNormalizer, stain_from_state, to_state
from leukexp.errors import LeukexpError
from leukexp.evaluation.calibration import apply_temperature
from leukexp.evaluation.operating import OperatingPoint
from leukexp.heads.base import Aggregator, Head
from leukexp.heads.differential import DifferentialHead
from leukexp.heads.kinds import load_head
from leukexp.vocabulary import LOADER_MODULES, MODEL_DATA_DIR, SHARE_PREFIX, TRAINED_ON_FILE

log = logging.getLogger(__name__)
MANIFEST = "classifier.json"


def save_classifier(folder: Path, head: Head, backbone: Backbone, model_config: dict[str, Any],
                    classes: list[str], temperature: float = 1.0, operating_point: OperatingPoint | None = None,
                    stain: StainNormalizer | None = None, bags: Bags | None = None, seed: int | None = None,
                    trained_on: TrainedOn | None = None) -> Path:
    """Write the head's files and `classifier.json` (classes, head spec, backbone config and fingerprint, the
    temperature its probabilities are scaled with, the decision threshold, the fitted stain normalization and, for
    an aggregator, how a new image becomes instances: its tiling; `seed`: the one torch was seeded with when the
    backbone was built, so a random-init backbone is rebuilt the same; `trained_on`: the pictures it was fitted on,
    by content, so a later study can refuse to test on them)."""
    folder.mkdir(parents=True, exist_ok=True)
    meta = {"classes": classes, "head": head.save(folder), "model": model_config, "backbone": backbone.reference(),
            "temperature": float(temperature),
            "operating_point": operating_point.to_dict() if operating_point is not None else None,
            "stain": to_state(stain) if stain is not None and stain.active else None,
            "bags": bags.saved() if bags is not None else None, "seed": seed,
            "trained_on": trained_on.save(folder) if trained_on is not None else None}
    (folder / MANIFEST).write_text(json.dumps(meta, indent=2, default=str))
    return folder


@dataclass
class TrainedOn:
    """The pictures a model was fitted on (its training and validation images): their content hashes and files, and
    the study's data fingerprint (`FoldData.data_fingerprint`)."""

    pictures: pd.DataFrame  # sha1, file
    data: str

    def save(self, folder: Path) -> dict[str, Any]:
        """`trained_on.csv` in `folder`; returns the manifest's entry."""
        write_csv(self.pictures[["sha1", "file"]], folder / TRAINED_ON_FILE)
        return {"data": self.data, "pictures": len(self.pictures), "file": TRAINED_ON_FILE}

    @classmethod
    def load(cls, folder: Path, entry: dict[str, Any] | None) -> TrainedOn | None:
        """What `save` wrote (None for a model saved without it)."""
        if not entry:
            return None
        try:
            pictures = read_csv(folder / str(entry["file"]), dtype=str)
            return cls(pictures[["sha1", "file"]], str(entry["data"]))
        except (OSError, KeyError, ValueError) as error:
            raise LeukexpError(f"{folder / MANIFEST}: trained_on is damaged ({type(error).__name__}: {error});"
                               " export the model again from its run") from error


@dataclass
class BagScore:
    """A scored bag: class probabilities, and per instance its weight, the index of its image and its box in that
    image ((x, y, width, height); None for a whole image)."""

    probs: np.ndarray
    weights: np.ndarray
    sources: np.ndarray
    boxes: list[tuple[int, int, int, int] | None]
    differential: pd.DataFrame | None = None  # a differential head's: per type the count and share (%) of instances

    def shares(self) -> dict[str, float]:
        """Each cell type's share (%) as `pct_<type>` columns (none without a differential)."""
        if self.differential is None:
            return {}
        return dict(zip(SHARE_PREFIX + self.differential["type"], self.differential["percent"], strict=True))


@dataclass
class Classifier:
    """A frozen backbone and a trained head, ready to classify images (probabilities scaled by `temperature`,
    fitted on the run's validation split with `evaluation.calibration=temperature`; 1 leaves them as the head
    gives them)."""

    backbone: Backbone
    head: Head
    classes: list[str]
    temperature: float = 1.0
    operating_point: OperatingPoint | None = None  # the screening decision's threshold, chosen on validation
    stain: StainNormalizer = field(default_factory=NoStain)  # applied to every image first, as in training
    bags: Bags = field(default_factory=ImageBags)  # an aggregator's: how an image becomes instances (tiles or itself)

    def prepare(self, image: np.ndarray) -> torch.Tensor:
        """An 8-bit RGB image as the backbone takes it: stain-normalized (as in training), resized, normalized."""
        return self.backbone.preprocess(self.stain(image) if self.stain.active else image)

    def embed(self, images: list[np.ndarray], batch_size: int = 32) -> np.ndarray:
        """Backbone features of 8-bit RGB images, computed in batches (per part of a fused backbone)."""
        if not images:
            return np.zeros((0, self.backbone.num_features), np.float32)
        features = []
        prepared = [self.stain(image) for image in images] if self.stain.active else images
        for part in self.backbone.parts():
            batches = [part.embed(torch.stack([part.preprocess(image) for image in prepared[start:start + batch_size]]))
                       for start in range(0, len(images), batch_size)]
            features.append(torch.cat(batches).numpy())
        return np.concatenate(features, axis=1)

    def predict_proba(self, images: list[np.ndarray]) -> np.ndarray:
        """Class probabilities (images, classes) for 8-bit RGB images (an aggregator's: (1, classes), the images
        taken as one bag)."""
        if not images:
            return np.zeros((0, len(self.classes)))
        return apply_temperature(self.head.predict_proba(self.embed(images)), self.temperature)

    @property
    def scores_bags(self) -> bool:
        """Whether the head is an aggregator (one prediction per bag of images)."""
        return bool(self.head.aggregates)

    def aggregator(self) -> Aggregator:
        """The head as an aggregator (`predict_bag` of a per-image model is a one-line error)."""
        if not isinstance(self.head, Aggregator):
            raise LeukexpError("this model scores one image at a time, not bags: predict images instead")
        return self.head

    def predict_bag(self, images: list[np.ndarray], names: list[str] | None = None) -> BagScore:
        """One bag of 8-bit RGB images, made into instances as in training (a tile model cuts the same tiles): its
        class probabilities, and each instance's weight, image and box."""
        names = names or [f"image {i}" for i in range(len(images))]
        pixels, sources, boxes = [], [], []
        for index, (image, name) in enumerate(zip(images, names, strict=True)):
            for crop, box in self.bags.instances(image, name):
                pixels.append(crop)
                sources.append(index)
                boxes.append(box)
        features = self.embed(pixels)
        head = self.aggregator()
        probs = apply_temperature(head.predict_proba(features), self.temperature)[0]
        weights = head.attention(features)
        counts = (self.head.differential(features).drop(columns="bag_index")
                  if isinstance(self.head, DifferentialHead) else None)
        return BagScore(probs, np.asarray(weights, float), np.asarray(sources, int), boxes, counts)

    def decisions(self, probs: np.ndarray) -> list[str] | None:
        """The screening decision per row of `probs` at the operating point (None without one)."""
        if self.operating_point is None:
            return None
        return self.operating_point.decide(probs[:, self.classes.index(self.operating_point.positive)])



def classifier_folder(folder: str | Path) -> Path:
    """The folder holding `classifier.json`: given itself, a run's MLflow `model/` folder, or a run folder."""
    folder = Path(folder)
    if (folder / MANIFEST).is_file():
        return folder
    if (folder / "MLmodel").is_file():
        import yaml

        flavor = (yaml.safe_load((folder / "MLmodel").read_text()) or {}).get("flavors", {}).get("python_function", {})
        if flavor.get("loader_module") not in LOADER_MODULES:
            raise LeukexpError(f"{folder}: not a leukexp model (its loader is {flavor.get('loader_module')!r});"
                               " leukexp loads only its own models")
        if flavor.get("code") or (folder / "code").exists():
            raise LeukexpError(f"{folder}: carries a code/ folder, which MLflow would import before leukexp's own"
                               " code; leukexp's models never carry one: refused (use a model leukexp wrote)")
        return classifier_folder(folder / flavor.get("data", f"data/{MODEL_DATA_DIR}"))
    if (folder / "model").is_dir():
        return classifier_folder(folder / "model")
    raise LeukexpError(f"{folder}: no {MANIFEST} or MLmodel; point at a run folder or its 'model' artifact")


def load_classifier(folder: str | Path, allow_weight_mismatch: bool = False) -> Classifier:
    """Rebuild backbone and head from a saved classifier, a run's MLflow `model/` folder or a run folder.

    Backbone weights that differ from those the head was trained on make its answers meaningless: one line, unless
    `allow_weight_mismatch` (then a warning)."""
    folder = classifier_folder(folder)
    manifest = folder / MANIFEST
    try:
        meta = json.loads(manifest.read_text())
        classes, head_spec, model_config = list(meta["classes"]), dict(meta["head"]), dict(meta["model"])
    except (ValueError, KeyError, TypeError) as error:
        raise LeukexpError(f"{manifest}: not a leukexp model manifest ({type(error).__name__}: {error})") from error
    seed = meta.get("seed")
    with torch.random.fork_rng(devices=[]):  # the run built its backbone right after seeding: random init the same
        if isinstance(seed, int) and not isinstance(seed, bool):
            torch.manual_seed(seed)
        backbone = build_backbone(model_config, where=str(manifest))
    temperature = meta.get("temperature", 1.0)
    if not isinstance(temperature, int | float) or not 0 < temperature < float("inf"):
        raise LeukexpError(f"{manifest}: temperature {temperature!r} is not a positive number")
    try:
        point = OperatingPoint.from_dict(meta["operating_point"]) if meta.get("operating_point") else None
    except (KeyError, TypeError, ValueError) as error:
        raise LeukexpError(f"{manifest}: operating_point is damaged ({type(error).__name__}: {error})") from error
    if point is not None and point.positive not in classes:
        raise LeukexpError(f"{manifest}: operating_point names {point.positive!r}, not one of {classes}")
    try:
        stain = stain_from_state(meta.get("stain"))
    except (KeyError, TypeError, ValueError) as error:
        raise LeukexpError(f"{manifest}: stain is damaged ({type(error).__name__}: {error})") from error
    head = load_head(folder, head_spec)
    check_parts_agree(head, backbone.num_features, classes, manifest)
    expected = meta.get("backbone", {}).get("fingerprint")
    if expected and backbone.fingerprint != expected:
        if not allow_weight_mismatch:
            raise LeukexpError(f"{manifest}: the backbone weights here differ from those the head was trained on"
                               f" ({backbone.fingerprint} != {expected}), so its predictions would be meaningless;"
                               " install the weights the study used, or pass --allow-weight-mismatch")
        log.warning("backbone weights differ from those the head was trained on (%s != %s)",
                    backbone.fingerprint, expected)
    bags = Bags.from_saved(meta["bags"], str(manifest)) if meta.get("bags") else ImageBags()
    return Classifier(backbone, head, classes, float(temperature), point, stain, bags)


def check_parts_agree(head: Head, width: int, classes: list[str], manifest: Path) -> None:
    """The saved head takes the backbone's features and scores the manifest's classes: one line where a folder's
    parts disagree (a head or manifest copied from another model), before any image is read."""
    try:
        probs = np.asarray(head.predict_proba(np.zeros((2, width), np.float32)))
    except Exception as error:
        raise LeukexpError(f"{manifest}: its head does not take this backbone's {width} features"
                           f" ({type(error).__name__}); the model folder's parts disagree: export it again from its"
                           " run") from None
    if probs.ndim != 2 or probs.shape[1] != len(classes):
        raise LeukexpError(f"{manifest}: lists {len(classes)} classes but its head scores"
                           f" {probs.shape[-1] if probs.ndim else 0}; the model folder's parts disagree: export it"
                           " again from its run")
