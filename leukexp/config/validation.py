"""Checks of the composed config before anything is scanned, built or logged: one line naming the key and the fix.

Scalar settings are checked against a table of rules; the head is built once on a stand-in problem so that its
own arguments (widths, dropout, an SVM's C, a scikit-learn estimator's parameters) are checked by the code that
uses them.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from leukexp.errors import LeukexpError


def offline_view_names() -> set[str]:
    """The test-time view choices (see `leukexp.data.augment.offline_view_names`), imported when checked."""
    from leukexp.data.augment import offline_view_names as names

    return names()

_DEVICE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def integer(low: int | None = None, high: int | None = None, optional: bool = False) -> Callable[[Any], bool]:
    """A whole number in [low, high] (None allowed when optional)."""
    return lambda v: (optional and v is None) or (_is_int(v) and (low is None or v >= low)
                                                   and (high is None or v <= high))


def number(low: float | None = None, high: float | None = None, low_open: bool = False,
           high_open: bool = False) -> Callable[[Any], bool]:
    """A number in the interval from low to high (open or closed ends)."""
    def check(v: Any) -> bool:
        if not _is_number(v):
            return False
        above = low is None or (v > low if low_open else v >= low)
        below = high is None or (v < high if high_open else v <= high)
        return above and below
    return check


def one_of(*options: object) -> Callable[[Any], bool]:
    """One of the given values."""
    return lambda v: v in options


def boolean(v: Any) -> bool:
    """true or false."""
    return isinstance(v, bool)


@dataclass(frozen=True)
class Rule:
    """A config key, what its value must satisfy, and what to write instead."""

    key: str
    check: Callable[[Any], bool]
    expected: str


# epochs of a head on frozen features: the study trains 10-25; beyond this a typo (100000000) would run for years
MAX_EPOCHS = 10_000
# views per backbone batch and samples per head step: beyond these, no machine's memory holds a batch
MAX_BATCH = 65_536

RULES = [
    Rule("seed", integer(), "a whole number, e.g. seed=42"),
    Rule("optimizer.lr", number(0, low_open=True), "a positive learning rate, e.g. optimizer.lr=0.001"),
    Rule("training.batch_size", integer(1, MAX_BATCH), f"a whole number from 1 to {MAX_BATCH:,}, e.g. 32"),
    Rule("training.binary_outputs", one_of(1, 2), "1 (one logit, BCE) or 2 (two logits, cross-entropy)"),
    Rule("training.early_stopping_patience", integer(1, optional=True), "null or a whole number of epochs >= 1"),
    Rule("training.num_workers", integer(0), "a whole number >= 0"),
    Rule("training.torch_threads", integer(1, optional=True), "null or a whole number >= 1"),
    Rule("training.head_threads", lambda v: v == "auto" or integer(1, optional=True)(v),
         "auto, null or a whole number >= 1"),
    Rule("trainer.max_epochs", integer(1, MAX_EPOCHS), f"a whole number of epochs from 1 to {MAX_EPOCHS:,}"),
    Rule("features.cache", boolean, "true or false"),
    Rule("features.batch_size", lambda v: v == "auto" or integer(1, MAX_BATCH)(v),
         f"auto or a whole number from 1 to {MAX_BATCH:,}"),
    Rule("features.num_workers", lambda v: v == "auto" or integer(0)(v), "auto or a whole number >= 0"),
    Rule("features.device", lambda v: isinstance(v, str) and bool(_DEVICE.match(v)), "auto, cpu or cuda[:N]"),
    Rule("features.precision", one_of("fp32", "bf16", "fp16"), "fp32, bf16 or fp16"),
    Rule("fold.n_splits", integer(2), "a whole number of folds >= 2"),
    Rule("fold.index", integer(0), "a fold number from 0 to fold.n_splits - 1"),
    Rule("fold.val_fraction", number(0, 1, low_open=True, high_open=True), "a fraction between 0 and 1, e.g. 0.2"),
    Rule("protocol.balance", one_of("none", "undersample", "oversample", "class_weights"),
         "none, undersample, oversample or class_weights"),
    Rule("protocol.val_split", one_of("source", "view"), "source or view"),
    Rule("task.epochs", integer(1, MAX_EPOCHS), f"a whole number of epochs from 1 to {MAX_EPOCHS:,}"),
    Rule("data.on_bad_image", one_of("error", "skip"), "error or skip"),
    Rule("augmentation.repeats", integer(0), "a whole number >= 0"),
    Rule("model.input_size", integer(16, optional=True), "null or a side in pixels >= 16"),
    Rule("model.pretrained", boolean, "true or false"),
    Rule("model.key_map", one_of("timm", "by_order"), "timm or by_order"),
    Rule("sweep.resume", boolean, "true or false"),
    Rule("evaluation.cam_panel", boolean, "true or false"),
    Rule("evaluation.tta", lambda v: isinstance(v, str) and v in offline_view_names(), "none or the name of an offline"
         " augmentation config (paper, flips, ...)"),
    Rule("evaluation.cam_per_class", integer(1), "a whole number of images >= 1"),
    Rule("mlflow.enabled", boolean, "true or false"),
    Rule("mlflow.http_timeout", number(0, low_open=True), "seconds > 0"),
    Rule("mlflow.http_max_retries", integer(0), "a whole number >= 0"),
    Rule("mlflow.create_store_folder", boolean, "true or false"),
]

_MISSING = object()


def lookup(cfg: DictConfig, key: str) -> Any:
    """The resolved value at a dotted key, or a marker when the key does not exist."""
    value = OmegaConf.select(cfg, key, default=_MISSING, throw_on_missing=False)
    if OmegaConf.is_config(value):
        return OmegaConf.to_container(value, resolve=True)
    return value


def check_rules(cfg: DictConfig, rules: list[Rule] = RULES) -> None:
    """Raise for the first key whose value breaks its rule (keys absent from this config are skipped)."""
    for rule in rules:
        value = lookup(cfg, rule.key)
        if value is _MISSING:
            continue
        if not rule.check(value):
            raise LeukexpError(f"{rule.key}={value!r}: expected {rule.expected}")
    if lookup(cfg, "evaluation.tta") not in (_MISSING, "none") and lookup(cfg, "protocol.augment_test") is True:
        raise LeukexpError("evaluation.tta scores each test image once from its views, protocol=thesis scores every"
                           " view apart: use evaluation.tta=none with protocol=thesis")
    index, n_splits = lookup(cfg, "fold.index"), lookup(cfg, "fold.n_splits")
    if _is_int(index) and _is_int(n_splits) and index >= n_splits:
        raise LeukexpError(f"fold.index={index}: out of range for fold.n_splits={n_splits}"
                           f" (use 0..{n_splits - 1}, e.g. fold=f0)")


def check_model(cfg: DictConfig) -> None:
    """A timm model name that exists, and a weights file that exists (cheap, before any weights load)."""
    model = cfg.get("model")
    if model is None:
        return
    target = str(model.get("_target_", ""))
    if target.endswith("ConcatBackbone"):
        from leukexp.backbones.concat import member_config

        members = lookup(cfg, "model.members")
        for member in members if isinstance(members, list) else []:
            config = member_config(member) if isinstance(member, str) else member
            _check_backbone(config, f"model.members[{member if isinstance(member, str) else '...'}]")
        return
    _check_backbone(OmegaConf.to_container(model, resolve=True), "model")


def _check_backbone(model: dict[str, Any], key: str) -> None:
    if str(model.get("_target_", "")).endswith("TimmBackbone"):
        import timm

        name = model.get("name")
        if name is None or name == "???" or not timm.is_model(name):
            raise LeukexpError(f"{key}.name={name!r} is not a timm model; see timm.list_models() for names")
        _check_stages(model, key)
    elif str(model.get("_target_", "")).endswith("KerasBackbone") and (
            model.get("stages") is not None or model.get("pooling", "avg") != "avg"):
        raise LeukexpError(f"{key}.stages / {key}.pooling: Keras applications give their last stage, average-pooled,"
                           " only; use a timm model for multi-stage features or other pooling")
    weights = model.get("weights_file")
    if isinstance(weights, str) and weights and not Path(weights).expanduser().is_file():
        raise LeukexpError(f"{key}.weights_file={weights}: no such file; give the path of the weights file")


def _check_stages(model: dict[str, Any], key: str) -> None:
    """`model.stages` and `model.pooling` against the architecture, built on the meta device (no weights, no memory)."""
    import timm
    import torch

    from leukexp.backbones.timm_backbone import check_pooling, stage_indices

    check_pooling(model.get("pooling", "avg"), f"{key}.pooling")
    if model.get("stages") is None:
        return
    with torch.device("meta"):
        architecture = timm.create_model(str(model["name"]), pretrained=False, num_classes=0,
                                         **dict(model.get("model_args") or {}))
    stage_indices(architecture, model["stages"], f"{key}.stages")


def check_head(cfg: DictConfig) -> None:
    """Build the head once for a stand-in problem: its own argument checks run before any real work."""
    import torch

    from leukexp.config.compose import build
    from leukexp.heads.base import HeadContext

    factory = build(cfg.head, "head")
    if not callable(factory):
        raise LeukexpError("head: the head config must be a partial (`_partial_: true`) taking a HeadContext")
    with torch.device("meta"):  # checks only: a stand-in head allocates nothing, whatever its widths
        factory(HeadContext(in_features=8, num_classes=3))


def check_accelerator(cfg: DictConfig) -> None:
    """`trainer=gpu` (`trainer.accelerator` gpu or cuda) needs a CUDA device here; `auto` and `cpu` always work."""
    accelerator = str(cfg.trainer.get("accelerator", "cpu"))
    if accelerator in ("gpu", "cuda"):
        import torch

        if not torch.cuda.is_available():
            raise LeukexpError(f"trainer.accelerator={accelerator}: no CUDA device here; use trainer=default (the"
                               " CPU) or trainer.accelerator=auto")


def validate(cfg: DictConfig) -> None:
    """Every check of the composed config, in the order a user would fix them."""
    check_rules(cfg)
    check_accelerator(cfg)
    check_model(cfg)
    check_head(cfg)
