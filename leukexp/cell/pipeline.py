"""One study cell from a composed config: data, frozen backbone, features, head, metrics, MLflow run."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import torch
from omegaconf import DictConfig, OmegaConf

from leukexp.backbones.base import Backbone
from leukexp.cell.external import external_views, score_external
from leukexp.cell.fit import FitResult, fit_head
from leukexp.cell.settings import backbone_from_config, head_from_config
from leukexp.cell.validation import validate
from leukexp.config.schema import setting
from leukexp.console import Stopwatch, console, describe_study, print_frame
from leukexp.data.dataset import ViewDataset
from leukexp.data.external import scan_external
from leukexp.data.sources import Catalog
from leukexp.data.study import Study, build_study
from leukexp.errors import LeukexpError
from leukexp.evaluation.calibration import (
    apply_temperature,
    brier_score,
    expected_calibration_error,
    fit_temperature,
)
from leukexp.evaluation.metrics import best_epoch_metrics, classification_metrics
from leukexp.evaluation.operating import choose, operating_metrics
from leukexp.features.extract import cache_note as cache_note_of
from leukexp.features.extract import part_caches, study_features
from leukexp.inference.tta import score_with_views, view_mean
from leukexp.runtime.process import seed_everything, torch_threads
from leukexp.runtime.secrets import redact
from leukexp.runtime.signals import Interrupted
from leukexp.sweeps.multirun import is_multirun, job_threads
from leukexp.tracking.identity import run_tags
from leukexp.tracking.sync import save_pending
from leukexp.vocabulary import (
    DATA_TAG,
    EXTERNAL,
    MANIFEST_FILE,
    RAW,
    TEMPERATURE,
    TEST,
    TEST_BRIER,
    TEST_ECE,
    THRESHOLD,
)

if TYPE_CHECKING:
    from leukexp.tracking.cv import FoldRun

# MLflow, Lightning and matplotlib load when a run gets to them: a mistake in the data is reported first


def scrub_secrets(out: Path) -> None:
    """Hydra's own copies of the command line and config (the run folder's `.hydra/*.yaml`, a sweep's
    `multirun.yaml`) without credentials."""
    files = list((out / ".hydra").glob("*.yaml"))
    if is_multirun():
        from hydra.core.hydra_config import HydraConfig

        files.append(Path(HydraConfig.get().sweep.dir) / "multirun.yaml")
    for path in files:
        if not path.is_file():
            continue
        text = path.read_text()
        if (clean := redact(text)) != text:
            path.write_text(clean)


def open_fold_run(cfg: DictConfig, study: Study) -> tuple[FoldRun | None, dict[str, float] | None]:
    """The fold's MLflow run (None when tracking is off), or the metrics to return instead of running it."""
    if not cfg.mlflow.enabled:
        return None, None
    from leukexp.tracking.cv import FoldRun
    from leukexp.tracking.store import RunLogger, configure_http, flatten

    configure_http(float(cfg.mlflow.http_timeout), int(cfg.mlflow.http_max_retries))
    logger = RunLogger(cfg.mlflow.tracking_uri, cfg.mlflow.experiment_name, cfg.mlflow.artifact_location,
                       bool(setting(cfg, "mlflow.create_store_folder")), cfg.paths.root_dir)
    fold_run = FoldRun(logger, run_tags(cfg, study), Path(cfg.paths.cache_dir) / "locks")
    params = flatten(OmegaConf.to_container(cfg, resolve=True))
    try:
        claimed = fold_run.open(resume=bool(cfg.sweep.resume) and is_multirun(), params=params)
        if claimed is None:
            fold_run.log_dataset(study.manifest(), f"{fold_run.tags[DATA_TAG]} · {study.task.name}",
                                 str(study.catalog.root), study.data_fingerprint())
    except Exception as error:  # the server went away, or refused what was logged, while the run was set up
        fold_run.abandon()
        raise LeukexpError(f"mlflow.tracking_uri={logger.tracking_uri}: {store_failure(error)} while the run was"
                           " set up; nothing was computed yet: run the command again when it is fixed") from error
    if isinstance(claimed, str):
        console.print(f"[yellow]skipped:[/] fold {study.fold.name} of this configuration is running in {claimed}")
        return None, {}
    if claimed is not None:
        console.print(f"[green]skipped:[/] fold {study.fold.name} of this configuration already FINISHED"
                      f" (run {claimed.info.run_id})")
        return None, dict(claimed.data.metrics)
    return fold_run, None


def store_failure(error: BaseException) -> str:
    """What went wrong with the store, in words: a refusal (MLflow's own message) or a store that stopped answering."""
    from mlflow.exceptions import MlflowException, RestException

    if isinstance(error, MlflowException) and not _is_connection_failure(error):
        kind = "the server refused" if isinstance(error, RestException) else "the store refused"
        return f"{kind} what was logged ({error.error_code}: {error.message.splitlines()[0][:300]})"
    return f"the store stopped answering ({type(error).__name__})"


def _is_connection_failure(error: BaseException) -> bool:
    """Whether an MLflow error is a transport failure (refused, timed out, retries spent) rather than a refusal."""
    text = f"{getattr(error, 'message', '')} {error.__cause__!r} {error.__context__!r}"
    markers = ("Max retries", "ConnectionError", "Connection refused", "timed out", "Timeout", "API request to")
    return any(marker in text for marker in markers)


def log_to_mlflow(fold_run: FoldRun, out: Path, result: FitResult, metrics: dict[str, float],
                  artifacts: list[Path]) -> None:
    """Finish the MLflow run; if the store stops answering, keep everything for `leukexp-sync` and say so; if it
    refuses what was logged, mark the run FAILED and say what it refused."""
    try:
        if fold_run.finish(result.history, metrics, artifacts):
            console.print(f"all {fold_run.n_splits} folds finished: aggregates on parent run {fold_run.parent_id}")
    except Exception as error:  # a server that went away, or a store that refused a key or value
        save_pending(out, fold_run, metrics, artifacts)
        fold_run.abandon()  # FAILED where the store still answers, so nothing stays RUNNING
        raise LeukexpError(
            f"mlflow.tracking_uri={fold_run.logger.tracking_uri}: {store_failure(error)}; the results are kept in"
            f" {out}; upload them with: leukexp-sync {out}"
        ) from error
    console.print(f"MLflow run {fold_run.logger.run_id}; open the UI with: {fold_run.logger.ui_hint()}")


def calibrated(result: FitResult, val_labels: np.ndarray) -> FitResult:
    """The result with one temperature fitted on the validation predictions (never on test) and applied to the
    validation and test probabilities; the saved model and `leukexp-predict` apply it too."""
    temperature = fit_temperature(val_labels, result.val_probs)
    return dataclasses.replace(result, val_probs=apply_temperature(result.val_probs, temperature),
                               test_probs=apply_temperature(result.test_probs, temperature), temperature=temperature)


def check_finite(result: FitResult, cfg: DictConfig) -> None:
    """Training that diverged (NaN or infinite outputs) is one line naming the cause and the fix."""
    if np.isfinite(result.val_probs).all() and np.isfinite(result.test_probs).all():
        return
    lr = OmegaConf.select(cfg, "optimizer.lr", default=None)
    raise LeukexpError(f"training diverged: the head's outputs are NaN or infinite (optimizer.lr={lr}); lower"
                       " optimizer.lr (e.g. optimizer.lr=0.001) or use a head without gradient steps (head=logreg)")


def check_sizes(cfg: DictConfig, backbone: Backbone, num_classes: int) -> None:
    """A head or a batch larger than this machine's memory is refused before any work (one line, the key)."""
    from leukexp.heads.base import available_memory

    memory = available_memory()
    side = max(max(part.preprocess.input_size[-2:]) for part in backbone.parts())  # a fusion's largest member
    batch = cfg.features.batch_size
    if isinstance(batch, int) and batch * 3 * side * side * 4 * 8 > memory:  # input + ~7x activations, float32
        raise LeukexpError(f"features.batch_size={batch}: {batch} views of {side}x{side} px need more memory than"
                           f" this machine has ({memory / 2**30:.0f} GiB free); use features.batch_size=auto")
    with torch.device("meta"):  # the head's own size check runs; nothing is allocated
        head_from_config(cfg, backbone, num_classes, None)


def fit_and_evaluate(cfg: DictConfig, study: Study, backbone: Backbone, clock: Stopwatch,
                     external: Catalog | None = None) -> tuple[FitResult, dict[str, float], list[Path], str]:
    """Features (cached), the trained head, its test (and external) metrics and the run's artifacts."""
    cache_dir = cfg.features.dir if cfg.features.cache else None
    with clock.phase("features"):
        storage = str(setting(cfg, "features.storage"))
        features, cache_note = study_features(study, backbone, cache_dir, cfg.features.batch_size,
                                              cfg.features.num_workers, storage)
    with clock.phase("head"):
        seed_everything(int(cfg.seed))  # after extraction: warm and cold runs agree
        head = head_from_config(cfg, backbone, len(study.classes), study.samples.class_weights)
        images = (ViewDataset(study.catalog.frame, study.samples.train, study.augmentation, backbone.preprocess,
                              random=True, stain=study.stain if study.stain.active else None)
                  if features.train is None else None)
        result = fit_head(head, study.samples, features, images)
        check_finite(result, cfg)
        raw_test_probs = result.test_probs
        val_labels = study.samples.val["label_index"].to_numpy()
        calibrate = setting(cfg, "evaluation.calibration") == "temperature"
        if calibrate:
            result = calibrated(result, val_labels)
        point = choose(study.classes, study.task.positive_class, val_labels, result.val_probs,
                       float(setting(cfg, "evaluation.target_sensitivity")))
        result = dataclasses.replace(result, operating_point=point)
    if (tta := str(cfg.evaluation.tta)) != "none":
        with clock.phase("test views"):
            study, view_probs = score_with_views(study, backbone, head, tta, int(cfg.seed),
                                                 part_caches(backbone, cache_dir, study.stain, storage),
                                                 cfg.features.batch_size,
                                                 cfg.features.num_workers)
        raw_test_probs = view_mean(view_probs)
        result = dataclasses.replace(result, test_probs=view_mean(view_probs, result.temperature))
    with clock.phase("artifacts"):
        labels = study.samples.test["label_index"].to_numpy()
        metrics = classification_metrics(labels, result.test_probs, study.classes)
        if calibrate:  # raw and calibrated, for a sweep to compare
            metrics |= {TEMPERATURE: result.temperature, TEST_ECE + RAW: expected_calibration_error(labels,
                                                                                                  raw_test_probs),
                        TEST_BRIER + RAW: brier_score(labels, raw_test_probs)}
        if result.operating_point is not None:
            metrics |= operating_metrics(result.operating_point, study.classes, labels, result.test_probs, TEST)
            metrics[THRESHOLD] = result.operating_point.threshold
        metrics |= best_epoch_metrics(result.history, result.best_epoch)
    scores = None
    if external is not None:
        with clock.phase("external"):
            views = external_views(tta, int(cfg.seed))
            caches = part_caches(backbone, cache_dir, study.stain, storage)
            scores = score_external(external, backbone, result, views, caches, study.stain, cfg.features.batch_size,
                                    cfg.features.num_workers)
            metrics |= scores.metrics
            cache_note = "; ".join(filter(None, [cache_note, cache_note_of(caches, "external images' features")]))
    with clock.phase("artifacts"):
        from leukexp.cell.artifacts import write_run_artifacts

        cam = int(cfg.evaluation.cam_per_class) if cfg.evaluation.cam_panel else 0
        artifacts = write_run_artifacts(Path(cfg.paths.output_dir), redact(OmegaConf.to_yaml(cfg, resolve=True)), study,
                                        backbone, OmegaConf.to_container(cfg.model, resolve=True), result, metrics,
                                        cam, scores.predictions if scores is not None else None)
    return result, metrics, artifacts, cache_note


def train(cfg: DictConfig) -> dict[str, float]:
    """Run one study cell: data, frozen backbone, features, head, test metrics, MLflow run (the config is
    validated first)."""
    validate(cfg)
    return train_validated(cfg)


def train_validated(cfg: DictConfig) -> dict[str, float]:
    """`train` on a config `validate` has passed (`leukexp-train` checks it before this module loads), with the
    job's torch threads while the cell runs."""
    with torch_threads(job_threads(setting(cfg, "training.torch_threads"))):
        return run_cell(cfg)


def run_cell(cfg: DictConfig) -> dict[str, float]:
    """The cell's steps, timed per phase."""
    clock = Stopwatch()
    with clock.phase("data"):
        study = build_study(cfg)
        describe_study(study)
        out = Path(cfg.paths.output_dir)
        scrub_secrets(out)
        study.write_manifest(out / MANIFEST_FILE)
        if study.stain.active:
            console.print(study.stain.describe())
        external = scan_external(cfg, study.task, study.classes)
        if external is not None:
            console.print(f"external validation: {len(external)} images of {external.root}")
    with clock.phase("backbone"):
        seed_everything(int(cfg.seed))  # random-init backbones are reproducible too
        backbone = backbone_from_config(cfg)
        check_sizes(cfg, backbone, len(study.classes))
    with clock.phase("MLflow"):
        fold_run, earlier = open_fold_run(cfg, study)
    if earlier is not None:
        return earlier
    try:
        result, metrics, artifacts, cache_note = fit_and_evaluate(cfg, study, backbone, clock, external)
    except Interrupted:
        if fold_run:
            fold_run.kill()
        raise
    except BaseException:
        if fold_run:
            fold_run.fail()
        raise
    summary = {k: v for k, v in metrics.items() if k.count("/") == 1 and k.startswith((TEST, EXTERNAL))}
    print_frame(pd.DataFrame({"value": summary}), "test metrics", "metric")
    if cache_note:
        console.print(cache_note)
    if fold_run:
        with clock.phase("MLflow"):
            log_to_mlflow(fold_run, out, result, metrics, artifacts)
    console.print(f"done in {clock.summary()}; outputs: {out}")
    return metrics
