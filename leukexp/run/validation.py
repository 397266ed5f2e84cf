"""Checks of the composed config before anything is scanned, built or logged: one line naming the key and the fix.

Scalar settings are checked against the key schema (`config.schema`); the head is built once on a stand-in
problem so that its own arguments (widths, dropout, an SVM's C, a scikit-learn estimator's parameters) are checked
by the code that uses them.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from omegaconf import DictConfig

from leukexp.config.compose import plain_mapping
from leukexp.config.schema import MISSING, SCHEMA, Key, any_value, is_int, lookup, setting
from leukexp.errors import LeukexpError

if TYPE_CHECKING:
    from leukexp.config.plan import RunPlan
    from leukexp.data.fold_data import FoldData
    from leukexp.heads.base import Head
    from leukexp.inference.cell_study import CellStudy

log = logging.getLogger("leukexp")


def check_rules(cfg: DictConfig, schema: tuple[Key, ...] = SCHEMA) -> None:
    """Raise for the first key whose value breaks its schema entry (keys absent from this config are skipped)."""
    for entry in schema:
        value = lookup(cfg, entry.key)
        if value is MISSING or entry.check is any_value:
            continue
        if not entry.check(value):
            raise LeukexpError(f"{entry.key}={value!r}: expected {entry.expected}")
    tta = lookup(cfg, "evaluation.tta")
    if tta not in (MISSING, "none"):
        check_test_views(tta)
        if lookup(cfg, "protocol.augment_test") is True:
            raise LeukexpError("evaluation.tta scores each test image once from its views, protocol=thesis scores"
                               " every view apart: use evaluation.tta=none with protocol=thesis")
    index, n_splits = lookup(cfg, "fold.index"), lookup(cfg, "fold.n_splits")
    if is_int(index) and is_int(n_splits) and index >= n_splits:
        raise LeukexpError(f"fold.index={index}: out of range for fold.n_splits={n_splits}"
                           f" (use 0..{n_splits - 1}, e.g. fold=f0)")


def check_top_level(cfg: DictConfig) -> None:
    """A top-level key leukexp does not read (`+lr=0.1` for `optimizer.lr`) changes nothing: one warning naming it."""
    from leukexp.config.compose import top_level_keys

    unknown = sorted(str(key) for key in cfg if str(key) not in top_level_keys())
    if unknown:
        log.warning("%s: not a leukexp setting, so it changes nothing unless your config interpolates it (top-level"
                    " keys: %s); check the spelling", ", ".join(unknown),
                    ", ".join(sorted(k for k in top_level_keys() if k != "hydra")))


def check_test_views(name: str) -> None:
    """`evaluation.tta`: the name of an augmentation config made of fixed views (its class is not online)."""
    from leukexp.config.compose import group_options

    options = group_options("augmentation")
    if name not in options or is_online(name):
        offline = ", ".join(option for option in options if not is_online(option))
        raise LeukexpError(f"evaluation.tta={name!r}: expected none or the name of an offline augmentation config"
                           f" ({offline})")


def is_online(option: str) -> bool:
    """Whether an augmentation config draws fresh random views (its class says so), read without building it."""
    from hydra.utils import get_class

    from leukexp.config.compose import load_option

    return bool(getattr(get_class(str(load_option("augmentation", option)["_target_"])), "online", False))


def check_config_targets(cfg: DictConfig) -> None:
    """Every `_target_` of the run's config is leukexp's, a library's it builds from, or declared in
    `allowed_targets` (Hydra's own node, its launchers and sweepers, is Hydra's business)."""
    from leukexp.config.compose import check_targets, declared_targets

    config = plain_mapping(cfg, resolve=False)
    check_targets({k: v for k, v in config.items() if k != "hydra"}, "", declared_targets(cfg))


def check_model(cfg: DictConfig) -> None:
    """The checks the backbone class declares (`Backbone.check_config`: a timm name that exists, stages the
    architecture has, a weights file that exists, a fusion's members), before any weights load."""
    model = cfg.get("model")
    if model is None:
        return
    from leukexp.backbones.loading import check_backbone

    check_backbone(plain_mapping(model), "model")


def check_head(cfg: DictConfig) -> Head:
    """Build the head once for a stand-in problem: its own argument checks run before any real work; return the
    stand-in (what the other checks read of the head)."""
    import torch

    from leukexp.config.compose import build
    from leukexp.heads.base import HeadContext

    factory = build(cfg.head, "head")
    if not callable(factory):
        raise LeukexpError("head: the head config must be a partial (`_partial_: true`) taking a HeadContext")
    with torch.device("meta"):  # checks only: a stand-in head allocates nothing, whatever its widths
        return factory(HeadContext(in_features=8, num_classes=3))


def check_bags(cfg: DictConfig, head: Head) -> None:
    """`bags`: its keys (its class checks them), and a head (`check_head`'s stand-in) that fits it: an aggregator
    with bags, a per-image head without; what bags do not combine with yet (test-time views, an external set,
    online views, the leaky protocol) is one line too."""
    from leukexp.config.compose import build
    from leukexp.config.identity import group_choices

    bags = build(cfg.bags, "bags") if "bags" in cfg else None
    active = bool(getattr(bags, "active", False))

    choice = group_choices().get("head") or str(lookup(cfg, "head._target_")).rsplit(".", 1)[-1]
    if active and not head.aggregates:
        raise LeukexpError(f"head={choice}: scores one image at a time, and bags={getattr(bags, 'kind', '?')} makes"
                           " bags; use an aggregator (head=abmil, head=meanpool or head=vote head.instance=NAME)")
    if not active and head.aggregates:
        raise LeukexpError("head: an aggregator scores bags, and bags=none makes none; choose bags=images (bag"
                           " folders) or bags=tiles, or a per-image head such as mlp1 or logreg")
    if not active:
        return
    for key, value, fine in (("evaluation.tta", lookup(cfg, "evaluation.tta"), ("none", MISSING)),
                             ("evaluation.external", lookup(cfg, "evaluation.external"), (None, "none", MISSING)),
                             ("protocol", lookup(cfg, "protocol.augment_test"), (False, MISSING))):
        if value not in fine:
            raise LeukexpError(f"{key}: not available with bags yet; drop it (bags=none keeps it)")
    if is_online_target(lookup(cfg, "augmentation._target_")):
        raise LeukexpError("augmentation: online views are not available with bags; use augmentation=none, flips"
                           " or paper (each view of a training bag is one more bag)")


def is_online_target(target: object) -> bool:
    """Whether an augmentation `_target_` draws fresh views (read from its class)."""
    from hydra.utils import get_class

    return isinstance(target, str) and bool(getattr(get_class(target), "online", False))


def check_accelerator(cfg: DictConfig) -> None:
    """`trainer=gpu` (`trainer.accelerator` gpu or cuda) needs a CUDA device here; `auto` and `cpu` always work."""
    accelerator = str(setting(cfg, "trainer.accelerator"))
    if accelerator in ("gpu", "cuda"):
        import torch

        if not torch.cuda.is_available():
            raise LeukexpError(f"trainer.accelerator={accelerator}: no CUDA device here; use trainer=default (the"
                               " CPU) or trainer.accelerator=auto")


def check_stain(cfg: DictConfig) -> None:
    """`stain.reference`, when given, is an image file (read once here, before any work)."""
    from leukexp.data.stain import read_reference

    reference = lookup(cfg, "stain.reference")
    if isinstance(reference, str) and reference:
        read_reference(reference)


def check_view_path(cfg: DictConfig) -> None:
    """`features.views=device`: the augmentation's transforms must be ones the device makes (flips, Affine)."""
    from leukexp.config.compose import build
    from leukexp.data.tensor_views import TensorViews

    if lookup(cfg, "features.views") != "device" or "augmentation" not in cfg:
        return
    reason = TensorViews.unsupported(build(cfg.augmentation, "augmentation", _convert_="all"))
    if reason:
        raise LeukexpError(f"features.views=device: {reason}; use features.views=auto (the CPU for these) or cpu")


def check_external(cfg: DictConfig) -> None:
    """`evaluation.external`: a data config, folder or mapping whose class folders map onto the task's classes."""
    from leukexp.config.compose import build
    from leukexp.config.external import external_config
    from leukexp.data.external import check_external as check_folders

    config = external_config(cfg)
    if config is None or "task" not in cfg:
        return
    check_folders(config, build(cfg.task, "task", _convert_="all"))


def validate(cfg: DictConfig) -> None:
    """Every check of the composed config, in the order a user would fix them."""
    check_rules(cfg)
    check_top_level(cfg)
    check_config_targets(cfg)
    check_accelerator(cfg)
    check_model(cfg)
    check_bags(cfg, check_head(cfg))
    check_stain(cfg)
    check_view_path(cfg)
    check_external(cfg)


def check_against_data(plan: RunPlan, fold_data: FoldData, cell_study: CellStudy | None = None) -> None:
    """What a head asks of the fold's bags, checked once they are read and before any MLflow run: instances with their
    own labels that are classes (`head.labels=own`), two cell types in the training bags (`head.cells=own`), a
    `head.topk` no larger than the largest training bag, and a cell study (`head.cells=URI`) of the same stain that
    was fitted on none of the study's pictures."""
    if cell_study is not None:
        cell_study.check_stain(fold_data.stain.name if fold_data.stain.active else "none")
        cell_study.check_pictures(fold_data.catalog.frame, fold_data.catalog.root)
    if fold_data.bags is None:
        return
    from leukexp.data.bags import check_own_labels

    if plan.head.get("labels") == "own":
        check_own_labels(fold_data.bags, fold_data.classes, fold_data.catalog.root)
    if plan.head.get("labels") == "self":
        from leukexp.heads.mil import check_self_training

        check_self_training(len(fold_data.classes))
    topk = plan.head.get("topk")
    if plan.head.get("cells") is not None or topk is not None:  # the differential's
        from leukexp.heads.differential import check_training_bags

        train = fold_data.samples.train
        check_training_bags(train.groupby("unit").size().to_numpy(), sorted(set(train["instance_label"]) - {""}),
                            topk if isinstance(topk, int) and not isinstance(topk, bool) else 0,
                            plan.head.get("cells") == "own", f"{fold_data.catalog.root}/instances.csv")
