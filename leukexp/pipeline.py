"""One study cell from a composed config: data, frozen backbone, features, head, metrics, MLflow run."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd
import torch
from omegaconf import DictConfig, OmegaConf

from leukexp.backbones.base import Backbone
from leukexp.console import console, describe_study, print_frame
from leukexp.data.dataset import ViewDataset
from leukexp.data.study import Study, build_study
from leukexp.errors import LeukexpError
from leukexp.evaluation import best_epoch_metrics, classification_metrics
from leukexp.features.extract import part_caches, study_features
from leukexp.fit import FitResult, fit_head
from leukexp.identity import run_tags
from leukexp.logs import quiet_libraries
from leukexp.settings import build_backbone, build_head, seed_everything
from leukexp.sweep import is_multirun, job_threads
from leukexp.sync import save_pending
from leukexp.timing import Stopwatch
from leukexp.tta import score_with_views
from leukexp.validation import validate
from leukexp.vocabulary import MANIFEST_FILE, TEST

if TYPE_CHECKING:
    from leukexp.cv import FoldRun

# MLflow, Lightning and matplotlib load when a run gets to them: a mistake in the data is reported first


def open_fold_run(cfg: DictConfig, study: Study) -> tuple[FoldRun | None, dict[str, float] | None]:
    """The fold's MLflow run (None when tracking is off), or the metrics to return instead of running it."""
    if not cfg.mlflow.enabled:
        return None, None
    from leukexp.cv import FoldRun
    from leukexp.tracking import RunLogger, configure_http, flatten

    configure_http(float(cfg.mlflow.http_timeout), int(cfg.mlflow.http_max_retries))
    logger = RunLogger(cfg.mlflow.tracking_uri, cfg.mlflow.experiment_name, cfg.mlflow.artifact_location)
    fold_run = FoldRun(logger, run_tags(cfg, study), Path(cfg.paths.cache_dir) / "locks")
    params = flatten(OmegaConf.to_container(cfg, resolve=True))
    try:
        claimed = fold_run.open(resume=bool(cfg.sweep.resume) and is_multirun(), params=params)
    except Exception as error:  # the server went away while the run was being set up
        raise LeukexpError(f"mlflow.tracking_uri={logger.tracking_uri}: the store stopped answering while the run"
                           f" was set up ({type(error).__name__}); nothing was computed yet: run the command again"
                           " when it answers") from error
    if isinstance(claimed, str):
        console.print(f"[yellow]skipped:[/] fold {study.fold.name} of this configuration is running in {claimed}")
        return None, {}
    if claimed is not None:
        console.print(f"[green]skipped:[/] fold {study.fold.name} of this configuration already FINISHED"
                      f" (run {claimed.info.run_id})")
        return None, dict(claimed.data.metrics)
    return fold_run, None


def log_to_mlflow(fold_run: FoldRun, out: Path, result: FitResult, metrics: dict[str, float],
                  artifacts: list[Path]) -> None:
    """Finish the MLflow run; if the store stops answering, keep everything for `leukexp-sync` and say so."""
    try:
        if fold_run.finish(result.history, metrics, artifacts):
            console.print(f"all {fold_run.n_splits} folds finished: aggregates on parent run {fold_run.parent_id}")
    except Exception as error:  # a server that went away: HTTP, connection and MLflow errors alike
        save_pending(out, fold_run, metrics, artifacts)
        raise LeukexpError(
            f"mlflow.tracking_uri={fold_run.logger.tracking_uri}: the store stopped answering"
            f" ({type(error).__name__}); the results are kept in {out}; upload them with: leukexp-sync {out}"
        ) from error
    console.print(f"MLflow run {fold_run.logger.run_id}; open the UI with: {fold_run.logger.ui_hint()}")


def fit_and_evaluate(cfg: DictConfig, study: Study, backbone: Backbone, clock: Stopwatch
                     ) -> tuple[FitResult, dict[str, float], list[Path], str]:
    """Features (cached), the trained head, its test metrics and the run's artifacts."""
    cache_dir = cfg.features.dir if cfg.features.cache else None
    with clock.phase("features"):
        features, cache_note = study_features(study, backbone, cache_dir, cfg.features.batch_size,
                                              cfg.features.num_workers)
    with clock.phase("head"):
        seed_everything(int(cfg.seed))  # after extraction: warm and cold runs agree
        head = build_head(cfg, backbone, len(study.classes), study.samples.class_weights)
        images = (ViewDataset(study.catalog.frame, study.samples.train, study.augmentation, backbone.preprocess,
                              random=True) if features.train is None else None)
        result = fit_head(head, study.samples, features, images)
    if (tta := str(cfg.evaluation.tta)) != "none":
        with clock.phase("test views"):
            study, probs = score_with_views(study, backbone, head, tta, int(cfg.seed),
                                            part_caches(backbone, cache_dir), cfg.features.batch_size,
                                            cfg.features.num_workers)
        result = dataclasses.replace(result, test_probs=probs)
    with clock.phase("artifacts"):
        metrics = classification_metrics(study.samples.test["label_index"].to_numpy(), result.test_probs,
                                         study.classes)
        metrics |= best_epoch_metrics(result.history, result.best_epoch)
        from leukexp.artifacts import write_run_artifacts

        cam = int(cfg.evaluation.cam_per_class) if cfg.evaluation.cam_panel else 0
        artifacts = write_run_artifacts(Path(cfg.paths.output_dir), OmegaConf.to_yaml(cfg, resolve=True), study,
                                        backbone, OmegaConf.to_container(cfg.model, resolve=True), result, metrics,
                                        cam)
    return result, metrics, artifacts, cache_note


def train(cfg: DictConfig) -> dict[str, float]:
    """Run one study cell: data, frozen backbone, features, head, test metrics, MLflow run."""
    clock = Stopwatch()
    quiet_libraries()
    with clock.phase("data"):
        validate(cfg)
        if threads := job_threads(cfg.training.get("torch_threads")):
            torch.set_num_threads(threads)
        study = build_study(cfg)
        describe_study(study)
        out = Path(cfg.paths.output_dir)
        study.write_manifest(out / MANIFEST_FILE)
    with clock.phase("backbone"):
        seed_everything(int(cfg.seed))  # random-init backbones are reproducible too
        backbone = build_backbone(cfg)
    with clock.phase("MLflow"):
        fold_run, earlier = open_fold_run(cfg, study)
    if earlier is not None:
        return earlier
    try:
        result, metrics, artifacts, cache_note = fit_and_evaluate(cfg, study, backbone, clock)
    except BaseException:
        if fold_run:
            fold_run.fail()
        raise
    summary = {k: v for k, v in metrics.items() if k.count("/") == 1 and k.startswith(TEST)}
    print_frame(pd.DataFrame({"value": summary}), "test metrics", "metric")
    if cache_note:
        console.print(cache_note)
    if fold_run:
        with clock.phase("MLflow"):
            log_to_mlflow(fold_run, out, result, metrics, artifacts)
    console.print(f"done in {clock.summary()}; outputs: {out}")
    return metrics
