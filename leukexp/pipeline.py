"""One study cell from a composed config: data, frozen backbone, features, head, metrics, MLflow run."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import pandas as pd
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from leukexp.console import console, print_frame
from leukexp.cv import FoldRun
from leukexp.data.study import Study, build_study
from leukexp.evaluation import classification_metrics, confusion
from leukexp.features.cache import FeatureCache
from leukexp.features.extract import extract_features
from leukexp.fit import Features, FitResult, fit_head, num_outputs
from leukexp.logs import quiet_libraries
from leukexp.models.backbones import FrozenBackbone
from leukexp.plots import plot_confusion, plot_curves, plot_roc
from leukexp.predict import save_classifier
from leukexp.sweep import is_multirun
from leukexp.tracking import RunLogger, flatten, git_commit

log = logging.getLogger("leukexp")

# groups whose choice identifies a configuration (the fold does not: its runs form one CV group)
CONFIG_GROUPS = ("data", "task", "augmentation", "protocol", "model", "head")
UNGROUPED_PREFIXES = ("fold=", "fold.index=", "hydra", "paths.", "mlflow.", "sweep.", "experiment=")


def describe_study(study: Study) -> None:
    """Print the fold's split (source images) and the samples the protocol makes of it."""
    catalog = study.catalog
    console.print(
        f"[bold]data[/] {catalog.root}  [bold]task[/] {study.task.name} ({', '.join(study.classes)})"
        f"  [bold]fold[/] {study.fold.index + 1}/{study.fold.n_splits}  [bold]protocol[/] {study.protocol.name}"
        f"  [bold]augmentation[/] {study.augmentation.name} ({study.augmentation.n_views} views)"
    )
    print_frame(study.split_summary(), "source images per split", "class")
    print_frame(study.samples.counts(study.classes), "samples per split (views, after balancing)", "class")
    if catalog.skipped:
        console.print(f"[yellow]skipped {len(catalog.skipped)} bad image(s):[/]")
        for message in catalog.skipped:
            console.print(f"  {message}")
    if catalog.duplicates:
        shown = catalog.duplicates[:5]
        console.print(f"[yellow]{len(catalog.duplicates)} set(s) of identical images, each kept in one split"
                      f" (all listed in the manifest's group column):[/]")
        for files in shown:
            console.print("  " + " = ".join(files))
        if len(catalog.duplicates) > len(shown):
            console.print(f"  ... and {len(catalog.duplicates) - len(shown)} more")


def set_torch_threads(cfg: DictConfig) -> None:
    """Share the CPU between parallel jobs instead of oversubscribing it."""
    threads = cfg.training.get("torch_threads")
    if threads is None and HydraConfig.initialized():
        n_jobs = HydraConfig.get().launcher.get("n_jobs") or 1
        if is_multirun() and n_jobs != 1:
            jobs = os.cpu_count() if n_jobs < 0 else n_jobs
            threads = max(1, (os.cpu_count() or 1) // max(1, jobs))
    if threads:
        torch.set_num_threads(int(threads))


def group_choices() -> dict[str, str]:
    """The option chosen in each config group (empty outside a Hydra run)."""
    if not HydraConfig.initialized():
        return {}
    return {k: str(v) for k, v in HydraConfig.get().runtime.choices.items() if v is not None}


def cv_group(cfg: DictConfig) -> str:
    """The configuration's identity without the fold: group choices plus the other overrides."""
    choices = group_choices()
    parts = [f"{group}={choices.get(group, cfg[group].get('name', '?'))}" for group in CONFIG_GROUPS]
    if HydraConfig.initialized():
        overrides = HydraConfig.get().overrides.task
        parts += [o for o in overrides if not o.startswith(UNGROUPED_PREFIXES)
                  and o.split("=", 1)[0].lstrip("+~") not in CONFIG_GROUPS]
    parts.append(f"seed={cfg.seed}")
    return " ".join(sorted(set(parts)))


def run_tags(cfg: DictConfig, study: Study) -> dict[str, str]:
    """The tags every run carries, for filtering and grouping in MLflow and reports."""
    choices = group_choices()
    return {
        "model": choices.get("model", str(cfg.model.get("label") or cfg.model.name)),
        "head": choices.get("head", "custom"),
        "task": study.task.name,
        "fold": study.fold.name or f"f{study.fold.index}",
        "augmentation": study.augmentation.name,
        "data": str(cfg.data.get("name", "folder")),
        "protocol": study.protocol.name,
        "seed": str(cfg.seed),
        "git_commit": git_commit(Path(__file__).parent),
        "cv_group": cv_group(cfg),
        "data_hash": study.data_fingerprint(),
        "n_splits": str(study.fold.n_splits),
        "leukexp.kind": "fold",
    }


def compute_features(cfg: DictConfig, study: Study, backbone: FrozenBackbone) -> tuple[Features, FeatureCache | None]:
    """Features of every split from the cache (computing only misses); train stays None for online views."""
    cache = FeatureCache(cfg.features.dir, backbone.fingerprint) if cfg.features.cache else None
    frame, samples = study.catalog.frame, study.samples

    def run(part: pd.DataFrame, name: str) -> np.ndarray:
        return extract_features(backbone, frame, part, study.augmentation, cache,
                                batch_size=int(cfg.features.batch_size), num_workers=int(cfg.features.num_workers),
                                description=f"{name} features")

    train = None if study.augmentation.online else run(samples.train, "train")
    return Features(train=train, val=run(samples.val, "val"), test=run(samples.test, "test")), cache


def write_artifacts(out: Path, cfg: DictConfig, study: Study, backbone: FrozenBackbone, result: FitResult,
                    metrics: dict[str, float]) -> list[Path]:
    """Config, manifest, figures, predictions and the trained head, in the run's output folder."""
    classes = study.classes
    test_labels = study.samples.test["label_index"].to_numpy()
    config_path = out / "config.yaml"
    config_path.write_text(OmegaConf.to_yaml(cfg, resolve=True))
    matrix = confusion(test_labels, result.test_probs, classes)
    matrix.to_csv(out / "confusion_matrix.csv")
    test = study.samples.test
    predictions = pd.DataFrame({
        "file": study.catalog.frame["file"].to_numpy()[test["source"].to_numpy()],
        "view": test["view"].to_numpy(),
        "label": [classes[i] for i in test_labels],
        "predicted": [classes[i] for i in result.test_probs.argmax(1)],
        **{f"p_{c}": result.test_probs[:, i] for i, c in enumerate(classes)},
    })
    predictions.to_csv(out / "predictions.csv", index=False)
    result.history.to_csv(out / "history.csv", index=False)
    title = f"{study.task.name} {study.fold.name}: acc {metrics['test/acc']:.3f}"
    model_dir = save_classifier(
        out / "model", result.head, OmegaConf.to_container(cfg.head, resolve=True), backbone,
        OmegaConf.to_container(cfg.model, resolve=True), classes, result.single_logit,
    )
    return [
        config_path, out / "manifest.csv", out / "confusion_matrix.csv", out / "predictions.csv",
        out / "history.csv",
        plot_confusion(matrix, out / "confusion_matrix.png", title),
        plot_roc([("test", test_labels, result.test_probs)], classes, out / "roc.png"),
        plot_curves(result.history, out / "curves.png", result.best_epoch),
        model_dir,
    ]


def fit_and_evaluate(cfg: DictConfig, study: Study, backbone: FrozenBackbone
                     ) -> tuple[FitResult, dict[str, float], FeatureCache | None]:
    """Features (cached), the trained head, and its test metrics plus the best epoch's train/val values."""
    features, cache = compute_features(cfg, study, backbone)
    # seeded after extraction, so a warm cache and a cold one train the same head
    L.seed_everything(int(cfg.seed), workers=True, verbose=False)
    factory = instantiate(cfg.head)
    head: Any = factory(in_features=backbone.num_features, num_outputs=num_outputs(cfg, len(study.classes)))
    result = fit_head(cfg, study, backbone, head, features)
    metrics = classification_metrics(study.samples.test["label_index"].to_numpy(), result.test_probs, study.classes)
    best = result.history.iloc[result.best_epoch] if len(result.history) else {}
    metrics.update({f"best/{k}": float(v) for k, v in dict(best).items() if k != "epoch"})
    metrics["best/epoch"] = float(result.best_epoch)
    return result, metrics, cache


def open_fold_run(cfg: DictConfig, study: Study) -> tuple[FoldRun | None, dict[str, float] | None]:
    """The fold's MLflow run (None when tracking is off), or the metrics of an earlier finished run to reuse."""
    if not cfg.mlflow.enabled:
        return None, None
    logger = RunLogger(cfg.mlflow.tracking_uri, cfg.mlflow.experiment_name, cfg.mlflow.artifact_location)
    fold_run = FoldRun(logger, run_tags(cfg, study), Path(cfg.paths.cache_dir) / "locks")
    done = fold_run.open(resume=bool(cfg.sweep.resume) and is_multirun())
    if done is not None:
        console.print(f"[green]skipped:[/] fold {study.fold.name} of this configuration already FINISHED"
                      f" (run {done.info.run_id})")
        return None, dict(done.data.metrics)
    fold_run.start(flatten(OmegaConf.to_container(cfg, resolve=True)))
    return fold_run, None


def train(cfg: DictConfig) -> dict[str, float]:
    """Run one study cell: data, frozen backbone, features, head, test metrics, MLflow run."""
    started = time.perf_counter()
    quiet_libraries()
    set_torch_threads(cfg)
    study = build_study(cfg)
    describe_study(study)
    out = Path(cfg.paths.output_dir)
    study.write_manifest(out / "manifest.csv")
    L.seed_everything(int(cfg.seed), workers=True, verbose=False)  # random-init backbones are reproducible too
    backbone: FrozenBackbone = instantiate(cfg.model)
    fold_run, earlier = open_fold_run(cfg, study)
    if earlier is not None:
        return earlier
    try:
        result, metrics, cache = fit_and_evaluate(cfg, study, backbone)
        artifacts = write_artifacts(out, cfg, study, backbone, result, metrics)
    except BaseException:
        if fold_run:
            fold_run.fail()
        raise
    if fold_run and fold_run.finish(result.history, metrics, artifacts):
        console.print(f"all {study.fold.n_splits} folds finished: aggregates on parent run {fold_run.parent_id}")
    summary = {k: v for k, v in metrics.items() if k.count("/") == 1 and k.startswith("test/")}
    print_frame(pd.DataFrame({"value": summary}), "test metrics", "metric")
    console.print(f"done in {time.perf_counter() - started:.1f} s; outputs: {out}")
    if cache is not None:
        console.print(f"feature cache: {cache.hits} hits, {cache.misses} misses ({cache.folder})")
    if fold_run:
        console.print(f"MLflow run {fold_run.logger.run_id}; open the UI with: {fold_run.logger.ui_hint()}")
    return metrics
