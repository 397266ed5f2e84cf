"""Every scalar config key leukexp reads, described once: what its value must be, what to write instead, its default
where a config may lack it, and whether it changes what a run computes (its identity).

Validation (`config.validation`), run identity (`tracking.identity`) and typed settings (`config.settings`) read
this table; the YAML files under `conf/` stay the source of values (a test checks the defaults here against them).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig, OmegaConf

# epochs of a head on frozen features: the study trains 10-25; beyond this a typo (100000000) would run for years
MAX_EPOCHS = 10_000
# views per backbone batch and samples per head step: beyond these, no machine's memory holds a batch
MAX_BATCH = 65_536

_DEVICE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")
MISSING = object()  # a key this config does not have


def is_int(value: Any) -> bool:
    """A whole number (not a bool)."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    """An int or a float (not a bool)."""
    return isinstance(value, int | float) and not isinstance(value, bool)


def integer(low: int | None = None, high: int | None = None, optional: bool = False) -> Callable[[Any], bool]:
    """A whole number in [low, high] (None allowed when optional)."""
    return lambda v: (optional and v is None) or (is_int(v) and (low is None or v >= low)
                                                  and (high is None or v <= high))


def number(low: float | None = None, high: float | None = None, low_open: bool = False,
           high_open: bool = False) -> Callable[[Any], bool]:
    """A number in the interval from low to high (open or closed ends)."""
    def check(v: Any) -> bool:
        if not is_number(v):
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


def auto_or(check: Callable[[Any], bool]) -> Callable[[Any], bool]:
    """`auto`, or a value `check` accepts."""
    return lambda v: v == "auto" or check(v)


def device(v: Any) -> bool:
    """auto, cpu, cuda or cuda:N."""
    return isinstance(v, str) and bool(_DEVICE.match(v))


def any_value(v: Any) -> bool:
    """Anything (keys described for identity or defaults only; their own code checks them)."""
    return True


@dataclass(frozen=True)
class Key:
    """One config key.

    Attributes:
        key: the dotted key (`training.batch_size`); a section (`mlflow`) covers every key below it.
        check: what the value must satisfy.
        expected: what to write instead, for the error line (`expected a whole number >= 1`).
        identity: whether a different value can change what a run computes (its `cv_group` and run name).
        default: the value where a config lacks the key (`MISSING`: every config has it, from the YAML).
        implicit: an identity token even when set by an experiment file rather than the command line
            (its value differs from `default`).
    """

    key: str
    check: Callable[[Any], bool] = any_value
    expected: str = ""
    identity: bool = True
    default: Any = MISSING
    implicit: bool = False

    def covers(self, key: str) -> bool:
        """Whether `key` is this key or lies below it."""
        return key == self.key or key.startswith(self.key + ".")


SCHEMA: tuple[Key, ...] = (
    Key("seed", integer(), "a whole number, e.g. seed=42"),
    Key("allowed_targets", lambda v: isinstance(v, list) and all(isinstance(t, str) and t.strip() for t in v),
        "a list of your modules or classes that configs may build, e.g. allowed_targets=[mylab.heads.]",
        identity=False, default=[]),
    Key("optimizer.lr", number(0, low_open=True), "a positive learning rate, e.g. optimizer.lr=0.001"),
    Key("training.batch_size", integer(1, MAX_BATCH), f"a whole number from 1 to {MAX_BATCH:,}, e.g. 32"),
    Key("training.binary_outputs", one_of(1, 2), "1 (one logit, BCE) or 2 (two logits, cross-entropy)"),
    Key("training.early_stopping_patience", integer(1, optional=True), "null or a whole number of epochs >= 1",
        default=None),
    Key("training.num_workers", integer(0), "a whole number >= 0"),
    Key("training.torch_threads", integer(1, optional=True), "null or a whole number >= 1", identity=False,
        default=None),
    Key("training.head_threads", auto_or(integer(1, optional=True)), "auto, null or a whole number >= 1",
        identity=False, default="auto"),
    Key("trainer.max_epochs", integer(1, MAX_EPOCHS), f"a whole number of epochs from 1 to {MAX_EPOCHS:,}"),
    Key("trainer.accelerator", lambda v: isinstance(v, str), "a Lightning accelerator: auto, cpu or gpu",
        default="cpu"),
    Key("features.cache", boolean, "true or false", identity=False),
    Key("features.dir", identity=False),
    Key("features.batch_size", auto_or(integer(1, MAX_BATCH)), f"auto or a whole number from 1 to {MAX_BATCH:,}",
        identity=False),
    Key("features.num_workers", auto_or(integer(0)), "auto or a whole number >= 0", identity=False),
    Key("features.device", device, "auto, cpu or cuda[:N]", identity=False, default="auto"),
    Key("features.views", one_of("auto", "cpu", "device"), "auto, cpu or device", identity=False, default="auto"),
    Key("features.storage", one_of("float32", "float16"), "float32 or float16", default="float32"),
    Key("features.precision", one_of("fp32", "bf16", "fp16"), "fp32, bf16 or fp16", default="fp32"),
    Key("fold.n_splits", integer(2), "a whole number of folds >= 2"),
    Key("fold.index", integer(0), "a fold number from 0 to fold.n_splits - 1", identity=False),
    Key("fold.name", identity=False),
    Key("fold.val_fraction", number(0, 1, low_open=True, high_open=True), "a fraction between 0 and 1, e.g. 0.2"),
    Key("protocol.balance", one_of("none", "undersample", "oversample", "class_weights"),
        "none, undersample, oversample or class_weights"),
    Key("protocol.val_split", one_of("source", "view"), "source or view"),
    Key("task.epochs", integer(1, MAX_EPOCHS), f"a whole number of epochs from 1 to {MAX_EPOCHS:,}"),
    Key("data.on_bad_image", one_of("error", "skip"), "error or skip"),
    Key("data.max_pixels", integer(1), "a whole number of pixels >= 1, e.g. 100000000 (10,000 x 10,000)",
        identity=False, default=100_000_000),
    Key("data.digest_cache", identity=False),
    Key("augmentation.repeats", integer(0), "a whole number >= 0"),
    Key("model.input_size", integer(16, optional=True), "null or a side in pixels >= 16"),
    Key("model.pretrained", boolean, "true or false"),
    Key("model.key_map", one_of("timm", "by_order"), "timm or by_order"),
    Key("head.n_jobs", identity=False),
    Key("sweep.resume", boolean, "true or false", identity=False),
    Key("evaluation.cam_panel", boolean, "true or false", identity=False),
    Key("evaluation.tta", lambda v: isinstance(v, str), "none or the name of an offline augmentation config"
        " (paper, flips, ...)", default="none", implicit=True),
    # implicit tokens are written in this order: evaluation.tta, model.stages, model.pooling, evaluation.calibration
    Key("model.stages", default=None, implicit=True),
    Key("model.pooling", default="avg", implicit=True),
    Key("evaluation.calibration", one_of("none", "temperature"), "none or temperature", default="none",
        implicit=True),
    Key("evaluation.target_sensitivity", number(0, 1, low_open=True), "a sensitivity above 0 and at most 1, e.g."
        " 0.95", default=0.95, implicit=True),
    Key("evaluation.external", lambda v: v is None or isinstance(v, str | dict), "null, a data config name (e.g."
        " synthetic_b), a folder of class folders, or {root: PATH}", default=None),
    Key("stain.reference", lambda v: v is None or isinstance(v, str), "null or the path of an image file",
        default=None),
    Key("stain.fit_images", integer(1), "a whole number of training images >= 1", default=32),
    Key("evaluation.cam_per_class", integer(1), "a whole number of images >= 1", identity=False),
    Key("evaluation.rank_by", lambda v: v == "auto" or (isinstance(v, str) and v.count("/") >= 1
                                                         and v.split("/", 1)[0] in ("test", "val", "best", "external")),
        "auto or a fold metric, e.g. test/auc_macro or test/balanced_acc", identity=False, default="auto"),
    Key("mlflow.enabled", boolean, "true or false", identity=False),
    Key("mlflow.http_timeout", number(0, low_open=True), "seconds > 0", identity=False),
    Key("mlflow.http_max_retries", integer(0), "a whole number >= 0", identity=False),
    Key("mlflow.create_store_folder", boolean, "true or false", identity=False, default=False),
    Key("mlflow.artifact_location", identity=False),
    # whole sections that never change what a run computes
    Key("mlflow", identity=False),
    Key("hydra", identity=False),
    Key("paths", identity=False),
    Key("sweep", identity=False),
    Key("search", identity=False),
    Key("optimized_metric", identity=False),
)
_BY_KEY = {entry.key: entry for entry in SCHEMA}


def describe(key: str) -> Key | None:
    """The most specific schema entry covering `key` (a dotted key, or a group path with `/`), if any."""
    key = key.replace("/", ".")
    covering = [entry for entry in SCHEMA if entry.covers(key)]
    return max(covering, key=lambda entry: len(entry.key)) if covering else None


def changes_the_result(key: str) -> bool:
    """Whether a value at `key` can change what a run computes (keys outside the schema do: a head's width...)."""
    entry = describe(key)
    return entry is None or entry.identity


def lookup(cfg: DictConfig, key: str) -> Any:
    """The resolved value at a dotted key (containers as plain lists and dicts), or `MISSING`."""
    value = OmegaConf.select(cfg, key, default=MISSING, throw_on_missing=False)
    if OmegaConf.is_config(value):
        return OmegaConf.to_container(value, resolve=True)
    return value


def setting(cfg: DictConfig, key: str) -> Any:
    """The value at `key`, or its schema default where this config lacks it (a `KeyError` for an undescribed key)."""
    value = lookup(cfg, key)
    if value is not MISSING:
        return value
    default = _BY_KEY[key].default
    if default is MISSING:
        raise KeyError(f"config key '{key}' is missing and has no default")
    return default


def implicit_keys() -> dict[str, Any]:
    """Keys that are identity tokens whenever they differ from their default, and those defaults."""
    return {entry.key: entry.default for entry in SCHEMA if entry.implicit}
