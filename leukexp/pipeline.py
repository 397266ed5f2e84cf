"""One study cell from a composed config: data, frozen backbone, features, head, metrics, MLflow run."""

from __future__ import annotations

import time
from pathlib import Path

import lightning as L
import pandas as pd
import torch
from omegaconf import DictConfig, OmegaConf

from leukexp.artifacts import write_run_artifacts
from leukexp.backbones.base import Backbone
from leukexp.console import console, describe_study, print_frame
from leukexp.cv import FoldRun
from leukexp.data.dataset import ViewDataset
from leukexp.data.study import Study, build_study
from leukexp.evaluation import best_epoch_metrics, classification_metrics
from leukexp.features.cache import FeatureCache
from leukexp.features.extract import study_features
from leukexp.fit import FitResult, fit_head
from leukexp.identity import run_tags
from leukexp.logs import quiet_libraries
from leukexp.settings import build_backbone, build_head
from leukexp.sweep import is_multirun, job_threads
from leukexp.tracking import RunLogger, flatten
from leukexp.vocabulary import MANIFEST_FILE, TEST


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


def fit_and_evaluate(cfg: DictConfig, study: Study, backbone: Backbone
                     ) -> tuple[FitResult, dict[str, float], list[Path], str]:
    """Features (cached), the trained head, its test metrics and the run's artifacts."""
    cache = FeatureCache(cfg.features.dir, backbone.fingerprint) if cfg.features.cache else None
    features = study_features(study, backbone, cache, int(cfg.features.batch_size), int(cfg.features.num_workers))
    L.seed_everything(int(cfg.seed), workers=True, verbose=False)  # after extraction: warm and cold runs agree
    head = build_head(cfg, backbone, len(study.classes), study.samples.class_weights)
    images = (ViewDataset(study.catalog.frame, study.samples.train, study.augmentation, backbone.preprocess,
                          random=True) if features.train is None else None)
    result = fit_head(head, study.samples, features, images)
    metrics = classification_metrics(study.samples.test["label_index"].to_numpy(), result.test_probs, study.classes)
    metrics |= best_epoch_metrics(result.history, result.best_epoch)
    artifacts = write_run_artifacts(Path(cfg.paths.output_dir), OmegaConf.to_yaml(cfg, resolve=True), study,
                                    backbone, OmegaConf.to_container(cfg.model, resolve=True), result, metrics)
    cache_note = f"feature cache: {cache.hits} hits, {cache.misses} misses ({cache.folder})" if cache else ""
    return result, metrics, artifacts, cache_note


def train(cfg: DictConfig) -> dict[str, float]:
    """Run one study cell: data, frozen backbone, features, head, test metrics, MLflow run."""
    started = time.perf_counter()
    quiet_libraries()
    if threads := job_threads(cfg.training.get("torch_threads")):
        torch.set_num_threads(threads)
    study = build_study(cfg)
    describe_study(study)
    out = Path(cfg.paths.output_dir)
    study.write_manifest(out / MANIFEST_FILE)
    L.seed_everything(int(cfg.seed), workers=True, verbose=False)  # random-init backbones are reproducible too
    backbone = build_backbone(cfg)
    fold_run, earlier = open_fold_run(cfg, study)
    if earlier is not None:
        return earlier
    try:
        result, metrics, artifacts, cache_note = fit_and_evaluate(cfg, study, backbone)
    except BaseException:
        if fold_run:
            fold_run.fail()
        raise
    if fold_run and fold_run.finish(result.history, metrics, artifacts):
        console.print(f"all {study.fold.n_splits} folds finished: aggregates on parent run {fold_run.parent_id}")
    summary = {k: v for k, v in metrics.items() if k.count("/") == 1 and k.startswith(TEST)}
    print_frame(pd.DataFrame({"value": summary}), "test metrics", "metric")
    console.print(f"done in {time.perf_counter() - started:.1f} s; outputs: {out}")
    if cache_note:
        console.print(cache_note)
    if fold_run:
        console.print(f"MLflow run {fold_run.logger.run_id}; open the UI with: {fold_run.logger.ui_hint()}")
    return metrics
