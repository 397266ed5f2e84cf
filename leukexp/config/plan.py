"""The run plan: the composed config read once at the run's door into frozen, typed settings.

`RunPlan.from_config` is the only place that reads a composed `DictConfig` for a run (after `validate` has checked
it); below the entry points every module takes the plan or one of its parts. The plan is also what a run writes
about itself: its MLflow params (`params`), its `config.yaml` (`config_yaml`) and its identity (`identity`).
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

from omegaconf import DictConfig, OmegaConf

from leukexp.config.compose import build, plain_mapping
from leukexp.config.identity import Identity, run_identity
from leukexp.config.schema import setting
from leukexp.errors import LeukexpError

# the groups a run builds objects from, in the order a run builds them
COMPONENT_GROUPS = ("data", "task", "fold", "protocol", "augmentation", "stain", "bags", "model", "head",
                    "optimizer", "trainer")
# the choice of a group a config may lack (composed before the group existed)
ABSENT_DEFAULTS = {"stain": {"_target_": "leukexp.data.NoStain"},
                   "bags": {"_target_": "leukexp.data.NoBags"}}


def _frozen(value: Any) -> Any:
    """A read-only view of a plain container (mappings as `MappingProxyType`, lists as tuples)."""
    if isinstance(value, Mapping):
        return MappingProxyType({k: _frozen(v) for k, v in value.items()})
    if isinstance(value, list | tuple):
        return tuple(_frozen(v) for v in value)
    return value


def _thawed(value: Any) -> Any:
    """A plain, mutable copy of a frozen container (what Hydra's `instantiate` and YAML writers take)."""
    if isinstance(value, Mapping):
        return {k: _thawed(v) for k, v in value.items()}
    if isinstance(value, tuple):
        return [_thawed(v) for v in value]
    return copy.copy(value)


@dataclass(frozen=True)
class Component:
    """One config group's choice: the option's name and its resolved node (`_target_` and its arguments)."""

    group: str
    choice: str
    node: Mapping[str, Any]
    # the user's declared `_target_`s (`allowed_targets`), besides leukexp's own and the libraries it builds from
    allowed_targets: tuple[str, ...] = ()

    def build(self, **kwargs: Any) -> Any:
        """The object the node describes (`config.compose.build`: a failure is one line naming the group)."""
        return build(self.values(), self.group, allowed=self.allowed_targets, **kwargs)

    def values(self) -> dict[str, Any]:
        """The node as a plain dict."""
        return _thawed(self.node)

    def get(self, key: str, default: Any = None) -> Any:
        """One key of the node (a plain value)."""
        return _thawed(self.node.get(key, default))

    def with_values(self, **values: Any) -> Component:
        """The same choice with some keys set (`fold.with_values(index=3)`)."""
        return dataclasses.replace(self, node=_frozen(self.values() | values))


@dataclass(frozen=True)
class TrainingSettings:
    """How a head trains: the `training` section."""

    batch_size: int
    binary_outputs: int
    early_stopping_patience: int | None
    num_workers: int
    torch_threads: int | None
    head_threads: int | str | None


@dataclass(frozen=True)
class FeatureSettings:
    """Where and how the backbone embeds, and where embeddings are kept: the `features` section."""

    cache: bool
    dir: str
    device: str
    precision: str
    storage: str
    batch_size: int | str
    num_workers: int | str
    views: str = "auto"

    @property
    def cache_dir(self) -> str | None:
        """The feature store's folder, None when `features.cache=false`."""
        return self.dir if self.cache else None


@dataclass(frozen=True)
class EvaluationSettings:
    """What is measured after fitting: the `evaluation` section (`external`: the external set's resolved data
    config, or None)."""

    tta: str
    cam_panel: bool
    cam_per_class: int
    calibration: str
    target_sensitivity: float
    external: Mapping[str, Any] | None

    @property
    def calibrate(self) -> bool:
        """Whether a temperature is fitted on validation."""
        return self.calibration == "temperature"

    @property
    def cam_images(self) -> int:
        """Images per class in the activation-map panel (0: no panel)."""
        return self.cam_per_class if self.cam_panel else 0


@dataclass(frozen=True)
class TrackingSettings:
    """Where the run is logged: the `mlflow` section and `sweep.resume`."""

    enabled: bool
    tracking_uri: str
    experiment_name: str
    artifact_location: str
    http_timeout: float
    http_max_retries: int
    create_store_folder: bool
    resume: bool


@dataclass(frozen=True)
class LaunchSettings:
    """What a run needs of how Hydra launched it, read once at the door: whether it is one job of a multirun (its
    fold run may then resume an earlier one), and how many jobs its launcher runs at once (-1: one per core)."""

    multirun: bool = False
    parallel_jobs: int = 1

    @classmethod
    def of_hydra_job(cls) -> LaunchSettings:
        """The running Hydra job's (a plan composed outside a Hydra app: a single run)."""
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
            return cls()
        return cls(multirun=True, parallel_jobs=int(HydraConfig.get().launcher.get("n_jobs") or 1))


@dataclass(frozen=True)
class Paths:
    """The run's folders."""

    root_dir: Path
    cache_dir: Path
    output_dir: Path


@dataclass(frozen=True)
class RunPlan:
    """One run, typed and frozen: its components, settings, folders and identity."""

    seed: int
    components: Mapping[str, Component]
    training: TrainingSettings
    features: FeatureSettings
    evaluation: EvaluationSettings
    tracking: TrackingSettings
    paths: Paths
    identity: Identity
    search: Mapping[str, Any]
    optimized_metric: str
    resolved: Mapping[str, Any]  # the composed config, resolved: params and config.yaml are written from it
    launch: LaunchSettings = LaunchSettings()

    def __getattr__(self, group: str) -> Component:
        """A component by its group (`plan.model`, `plan.head`, ...)."""
        components = self.__dict__.get("components", {})
        if group in components:
            return components[group]
        raise AttributeError(group)

    @classmethod
    def from_config(cls, cfg: DictConfig) -> RunPlan:
        """The plan of a composed (and validated) config; the job's Hydra runtime gives its group choices."""
        for key in sorted(OmegaConf.missing_keys(cfg)):  # `???` left in a key the run reads (`data.root`)
            raise LeukexpError(f"config key '{key}' has no value: set it on the command line, e.g. {key}=...")
        resolved = plain_mapping(cfg)
        identity = run_identity(cfg)
        declared = tuple(str(name) for name in resolved.get("allowed_targets") or ())
        components = {group: Component(group, identity.choices.get(group, str(resolved[group].get("name", "?"))),
                                       _frozen(resolved[group]), declared)
                      for group in COMPONENT_GROUPS if group in resolved}
        for group, node in ABSENT_DEFAULTS.items():
            components.setdefault(group, Component(group, "none", _frozen(node)))
        return cls(
            seed=int(cfg.seed),
            components=MappingProxyType(components),
            training=TrainingSettings(
                batch_size=int(cfg.training.batch_size), binary_outputs=int(cfg.training.binary_outputs),
                early_stopping_patience=_optional_int(setting(cfg, "training.early_stopping_patience")),
                num_workers=int(cfg.training.num_workers),
                torch_threads=_optional_int(setting(cfg, "training.torch_threads")),
                head_threads=_head_threads(setting(cfg, "training.head_threads"))),
            features=FeatureSettings(
                cache=bool(cfg.features.cache), dir=str(cfg.features.dir), device=str(setting(cfg, "features.device")),
                precision=str(setting(cfg, "features.precision")), storage=str(setting(cfg, "features.storage")),
                batch_size=_auto_or_int(cfg.features.batch_size), num_workers=_auto_or_int(cfg.features.num_workers),
                views=str(setting(cfg, "features.views"))),
            evaluation=EvaluationSettings(
                tta=str(setting(cfg, "evaluation.tta")), cam_panel=bool(cfg.evaluation.cam_panel),
                cam_per_class=int(cfg.evaluation.cam_per_class),
                calibration=str(setting(cfg, "evaluation.calibration")),
                target_sensitivity=float(setting(cfg, "evaluation.target_sensitivity")),
                external=_frozen(_external(cfg))),
            tracking=TrackingSettings(
                enabled=bool(cfg.mlflow.enabled), tracking_uri=str(cfg.mlflow.tracking_uri),
                experiment_name=str(cfg.mlflow.experiment_name),
                artifact_location=str(cfg.mlflow.artifact_location), http_timeout=float(cfg.mlflow.http_timeout),
                http_max_retries=int(cfg.mlflow.http_max_retries),
                create_store_folder=bool(setting(cfg, "mlflow.create_store_folder")),
                resume=bool(cfg.sweep.resume)),
            paths=Paths(Path(cfg.paths.root_dir), Path(cfg.paths.cache_dir), Path(cfg.paths.output_dir)),
            identity=identity,
            search=_frozen({k: v for k, v in (resolved.get("search") or {}).items() if v is not None}),
            optimized_metric=str(cfg.optimized_metric),
            resolved=_frozen(resolved),
            launch=LaunchSettings.of_hydra_job(),
        )

    def for_fold(self, index: int) -> RunPlan:
        """The same plan with fold `index` held out (`leukexp-extract` walks every fold)."""
        fold = self.components["fold"]
        name = fold.get("name")
        folded = fold.with_values(index=index, name=f"f{index}" if name == f"f{fold.get('index')}" else name)
        return dataclasses.replace(self, components=MappingProxyType({**self.components, "fold": folded}))

    def plain(self) -> dict[str, Any]:
        """The resolved config as a plain dict (what the run's MLflow params are flattened from)."""
        return _thawed(self.resolved)

    def config_yaml(self) -> str:
        """The run's `config.yaml`: the resolved config, credentials redacted."""
        from leukexp.runtime.secrets import redact

        return redact(OmegaConf.to_yaml(OmegaConf.create(_thawed(self.resolved))))


def _optional_int(value: Any) -> int | None:
    return None if value is None else int(value)


def _auto_or_int(value: Any) -> int | str:
    return value if value == "auto" else int(value)


def _head_threads(value: Any) -> int | str | None:
    """`training.head_threads`: `auto`, a number or null (as is)."""
    return value if value == "auto" or value is None else int(value)


def _external(cfg: DictConfig) -> dict[str, Any] | None:
    """`evaluation.external` resolved to a data config once, here (the data wing composes nothing)."""
    from leukexp.config.external import external_config

    return external_config(cfg)
