"""A finished study of labeled cells as the differential's cell classifier (`head.cells=runs:/<id>/model`,
`models:/NAME@alias`, `models:/NAME/VERSION` or a model folder).

It is loaded through the same safe loading as `leukexp-predict` (nothing else), then checked against the bag study
that uses it before any work: a model that scores cells (not bags) and names its cell types, embedded with the same
backbone (name, weights, stages, pooling) and stain method, and fitted on no picture of the bag study. Its source,
version, types and data fingerprint go with every run that uses it (`lineage`).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from leukexp.errors import LeukexpError
from leukexp.heads.base import Head
from leukexp.inference.classifier import MANIFEST, Classifier, TrainedOn, classifier_folder, load_classifier
from leukexp.inference.model_uri import is_store_uri, pin_model, resolve_model
from leukexp.vocabulary import CELL_STUDY_PREFIX

KEY = "head.cells"
ATLAS_HINT = "e.g. leukexp-train data=folder data.root=ATLAS task=folders head=logreg"


@dataclass(frozen=True)
class CellStudy:
    """A loaded cell study: its classifier (backbone, head, cell types), the model config it embedded with, its
    stain method and the pictures it was fitted on."""

    source: str  # as the user gave it
    version: str  # what it resolved to: NAME/VERSION of a registered model, the run id, or the folder
    classifier: Classifier
    model_config: dict[str, Any]
    stain: str  # the stain method (`none` when it used none)
    trained_on: TrainedOn | None

    @property
    def types(self) -> list[str]:
        """The cell types it scores, in its output order."""
        return list(self.classifier.classes)

    @property
    def head(self) -> Head:
        """Its per-cell head (features -> type probabilities)."""
        return self.classifier.head

    def lineage(self) -> dict[str, str]:
        """Params of every run that uses it: where it came from, which version, its types and its data."""
        data = self.trained_on.data if self.trained_on is not None else "unknown"
        pictures = str(len(self.trained_on.pictures)) if self.trained_on is not None else "unknown"
        return {f"{CELL_STUDY_PREFIX}source": self.source, f"{CELL_STUDY_PREFIX}version": self.version,
                f"{CELL_STUDY_PREFIX}types": ",".join(self.types), f"{CELL_STUDY_PREFIX}data": data,
                f"{CELL_STUDY_PREFIX}pictures": pictures}

    def check_backbone(self, model_config: dict[str, Any], differs: Callable[[str], bool]) -> None:
        """The bag study embeds as the cell study did: one line naming every `model.*` key that differs and the
        overrides that would follow the cell study; `differs(key)`: whether a key changes the features."""
        keys = sorted(k for k in set(model_config) | set(self.model_config)
                      if differs(f"model.{k}") and model_config.get(k) != self.model_config.get(k))
        if keys:
            here = _follow(keys, model_config, self.model_config)
            theirs = _follow(keys, self.model_config, model_config)
            raise LeukexpError(f"{KEY}={self.source}: the cell study embedded its cells with another backbone ({here}"
                               f" here); its types would be read from features it never saw: add {theirs} (or use a"
                               " cell study of this backbone)")

    def check_stain(self, stain: str) -> None:
        """The bag study normalizes stain with the cell study's method."""
        if stain != self.stain:
            raise LeukexpError(f"{KEY}={self.source}: the cell study used stain={self.stain}, this study"
                               f" stain={stain}; add stain={self.stain} (or use a cell study of this stain)")

    def check_fingerprint(self, fingerprint: str) -> None:
        """The bag study's built backbone has the cell study's weights."""
        theirs = self.classifier.backbone.fingerprint
        if fingerprint != theirs:
            raise LeukexpError(f"{KEY}={self.source}: this study's backbone weights differ from the cell study's"
                               f" ({fingerprint} != {theirs}); install the weights the cell study used")

    def check_pictures(self, catalog: pd.DataFrame, root: Path) -> None:
        """No picture the cell study was fitted on is in the bag study (by content): one line naming a pair."""
        if self.trained_on is None:
            return
        shared = catalog[["sha1", "file"]].merge(self.trained_on.pictures, on="sha1", suffixes=("", "_atlas"))
        if len(shared):
            first = shared.iloc[0]
            raise LeukexpError(f"{KEY}={self.source}: the cell study was fitted on {len(shared)} picture(s) of this"
                               f" study, e.g. its {first['file_atlas']} is {root}/{first['file']} (same content);"
                               " its types would be right by memory: build the atlas from cells of no patient here")


def _overrides(keys: list[str], config: dict[str, Any]) -> str:
    """`keys` of a model config as overrides."""
    return " ".join(f"model.{k}={_override(config.get(k))}" for k in keys)


def _follow(keys: list[str], theirs: dict[str, Any], mine: dict[str, Any]) -> str:
    """The overrides that make `mine` embed as `theirs`: `model=<their option>` where the option differs, and each
    key that option would not set (or that `mine` set over its own option)."""
    from leukexp.config.compose import group_options, load_option

    label, my_label = theirs.get("label"), mine.get("label")
    if "label" not in keys or not isinstance(label, str) or label not in group_options("model"):
        return _overrides(keys, theirs)
    implied = load_option("model", label)
    my_option = load_option("model", my_label) if isinstance(my_label, str) and my_label in group_options("model") \
        else {}
    rest = [k for k in keys if k != "label" and (implied.get(k) != theirs.get(k) or mine.get(k) != my_option.get(k))]
    return " ".join([f"model={label}"] + [f"model.{k}={_override(theirs.get(k))}" for k in rest])


def _override(value: Any) -> str:
    """A config value as a command-line override writes it."""
    if value is None:
        return "null"
    if isinstance(value, str | int | float | bool):
        return str(value).lower() if isinstance(value, bool) else str(value)
    return json.dumps(value, separators=(",", ":"))


def open_cell_study(source: str, tracking_uri: str | None = None) -> CellStudy:
    """Load `head.cells`: a model folder or run folder, `runs:/<id>/model`, `models:/NAME/VERSION` or
    `models:/NAME@ALIAS` (pinned to the version the alias names now); every failure is one line naming the key."""
    pinned, version = source, str(Path(source).expanduser().resolve()) if not is_store_uri(source) else source
    if source.startswith("models:/"):
        pinned, version = pin_model(source, tracking_uri, key=f"{KEY}=")
    elif source.startswith("runs:/"):
        version = source.removeprefix("runs:/").split("/", 1)[0]
    folder = resolve_model(pinned, tracking_uri, key=f"{KEY}=")
    try:
        folder = classifier_folder(folder)
        meta = _manifest(folder)
        classifier = load_classifier(folder)
    except LeukexpError as error:
        raise LeukexpError(f"{KEY}={source}: {error}") from error
    if classifier.scores_bags:
        raise LeukexpError(f"{KEY}={source}: a bag model (head {classifier.head.kind}: one diagnosis per bag), not a"
                           f" classifier of cells; give a study of single-cell pictures ({ATLAS_HINT})")
    stain = (meta.get("stain") or {}).get("name", "none")
    trained_on = TrainedOn.load(folder, meta.get("trained_on"))
    return CellStudy(source, version, classifier, dict(meta["model"]), str(stain), trained_on)


def _manifest(folder: Path) -> dict[str, Any]:
    """The cell study's `classifier.json`, with its cell types named (two or more distinct, non-empty names)."""
    try:
        meta = json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError) as error:
        raise LeukexpError(f"{folder / MANIFEST}: not readable ({type(error).__name__})") from error
    classes = meta.get("classes") if isinstance(meta, dict) else None
    names = [c for c in classes if isinstance(c, str) and c.strip()] if isinstance(classes, list) else []
    if len(names) < 2 or len(set(names)) != len(names) or len(names) != len(classes or ()):
        raise LeukexpError(f"{folder / MANIFEST}: its cell types are unknown (classes: {classes!r}); a cell study"
                           f" names two or more distinct types ({ATLAS_HINT})")
    if not isinstance(meta.get("model"), dict):
        raise LeukexpError(f"{folder / MANIFEST}: names no backbone (model); export it again from its run")
    return meta

