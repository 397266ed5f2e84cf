"""One run of a plan: its fold's data, the frozen backbone, the embeddings it needs, the head, the steps after
fitting (`run.steps`) and its MLflow run."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import torch
from omegaconf import DictConfig

from leukexp.backbones.base import Backbone
from leukexp.config.identity import changes_the_result, identity_groups
from leukexp.config.plan import RunPlan
from leukexp.console import Stopwatch, console, describe_fold, print_frame
from leukexp.data.dataset import ViewDataset
from leukexp.data.external import scan_external
from leukexp.data.fold_data import FoldData, build_fold_data
from leukexp.errors import LeukexpError, fault_path, file_system_fault, os_error_reason
from leukexp.heads.differential import DifferentialHead
from leukexp.run.embeds import SPLITS, cache_note, caches_for, find, fold_embeds, split_features
from leukexp.run.fit import FitResult, fit_head
from leukexp.run.settings import backbone_from_plan, cell_study_from_plan, head_from_plan
from leukexp.run.steps import POST_FIT_STEPS, Outcome
from leukexp.run.validation import check_against_data, validate
from leukexp.runtime.process import seed_everything, torch_threads
from leukexp.runtime.signals import Interrupted
from leukexp.sweeps.multirun import job_threads
from leukexp.tracking import warmup
from leukexp.tracking.identity import run_tags
from leukexp.tracking.reach import configure_http, probe_server
from leukexp.tracking.sync import save_pending
from leukexp.vocabulary import CELL_STUDY_PREFIX, CV_GROUP_TAG, DATA_TAG, EXTERNAL, MANIFEST_FILE, TEST

if TYPE_CHECKING:
    from leukexp.data.sources import Catalog
    from leukexp.inference.cell_study import CellStudy
    from leukexp.tracking.cv import FoldRun

# MLflow, Lightning and matplotlib load when a run gets to them: a mistake in the data is reported first


def open_fold_run(plan: RunPlan, fold_data: FoldData, lineage: dict[str, str] | None = None
                  ) -> tuple[FoldRun | None, dict[str, float] | None]:
    """The fold's MLflow run (None when tracking is off), or the metrics to return instead of running it;
    `lineage`: params of the fold and its parent naming what the run was built on (a cell study)."""
    tracking = plan.tracking
    if not tracking.enabled:
        return None, None
    from leukexp.tracking.cv import FoldRun
    from leukexp.tracking.store import RunLogger, flatten

    prepared = warmup.wait(warmup.STORE)  # `run_plan` set the HTTP budget and began the store's check
    logger = RunLogger(tracking.tracking_uri, tracking.experiment_name, tracking.artifact_location,
                       tracking.create_store_folder, str(plan.paths.root_dir), prepared=prepared)
    tags = run_tags(plan, fold_data)
    if lineage:  # another cell study (or version of one) is another configuration: never resumed as this one
        tags[CV_GROUP_TAG] += (f" {CELL_STUDY_PREFIX}version={lineage[f'{CELL_STUDY_PREFIX}version']}"
                               f"@{lineage[f'{CELL_STUDY_PREFIX}data']}")
    fold_run = FoldRun(logger, tags, plan.paths.cache_dir / "locks")
    try:
        params = flatten(plan.plain())
        # the parent's params: the settings its folds share (not fold.index...) and each identifying group's choice
        shared = {key: value for key, value in params.items() if changes_the_result(key)} | {
            group: plan.identity.choices[group] for group in identity_groups(dict(plan.identity.choices))
            if "@" not in group}  # a group placed under another key (aliases@task.aliases) is in its key's params
        params, shared = params | (lineage or {}), shared | (lineage or {})
        claimed = fold_run.open(resume=tracking.resume and plan.launch.multirun, params=params, parent_params=shared)
        if claimed is None:
            fold_run.log_dataset(fold_data.manifest(), f"{fold_run.tags[DATA_TAG]} · {fold_data.task.name}",
                                 str(fold_data.catalog.root), fold_data.data_fingerprint())
    except Interrupted:  # stopped between the claim and the training: the claimed run ends KILLED, not RUNNING
        fold_run.kill()
        raise
    except Exception as error:  # the server went away, or refused what was logged, while the run was set up
        fold_run.abandon()
        raise LeukexpError(f"mlflow.tracking_uri={logger.tracking_uri}: {store_failure(error)} while the run was"
                           " set up; nothing was computed yet: run the command again when it is fixed") from error
    if isinstance(claimed, str):
        console.print(f"[yellow]skipped:[/] fold {fold_data.fold.name} of this configuration is running in {claimed}")
        return None, {}
    if claimed is not None:
        console.print(f"[green]skipped:[/] fold {fold_data.fold.name} of this configuration already FINISHED"
                      f" (run {claimed.info.run_id})")
        return None, dict(claimed.data.metrics)
    return fold_run, None


def store_failure(error: BaseException) -> str:
    """What went wrong with the store, in words: a refusal (MLflow's own message) or a store that stopped answering."""
    from mlflow.exceptions import MlflowException, RestException

    if isinstance(error, MlflowException) and error.get_http_status_code() in (401, 403):
        return f"the server refused this account (HTTP {error.get_http_status_code()})"
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
    except Interrupted:  # stopped while the results were logged: KILLED (a resumed sweep runs the fold again)
        fold_run.kill()
        raise
    except Exception as error:  # a server that went away, a store that refused a key or value, a disk that did
        save_pending(out, fold_run, metrics, artifacts)
        fold_run.abandon()  # FAILED where the store still answers, so nothing stays RUNNING
        fault = file_system_fault(error)
        if fault is not None:  # the store answers; its artifact folder cannot take the files
            where = fault_path(fault) or fold_run.logger.artifact_location or "the store's artifact folder"
            raise LeukexpError(
                f"{where}: {os_error_reason(fault)}, so the run's artifacts could not be stored; the results are"
                f" kept in {out}; make that folder writable (or free space), then upload them with: leukexp-sync"
                f" {out}"
            ) from error
        raise LeukexpError(
            f"mlflow.tracking_uri={fold_run.logger.tracking_uri}: {store_failure(error)}; the results are kept in"
            f" {out}; upload them with: leukexp-sync {out}"
        ) from error
    console.print(f"MLflow run {fold_run.logger.run_id}; open the UI with: {fold_run.logger.ui_hint()}")


def check_finite(result: FitResult, plan: RunPlan) -> None:
    """Training that diverged (NaN or infinite outputs) is one line naming the cause and the fix."""
    if np.isfinite(result.val_probs).all() and np.isfinite(result.test_probs).all():
        return
    lr = plan.optimizer.get("lr")
    raise LeukexpError(f"training diverged: the head's outputs are NaN or infinite (optimizer.lr={lr}); lower"
                       " optimizer.lr (e.g. optimizer.lr=0.001) or use a head without gradient steps (head=logreg)")


def check_sizes(plan: RunPlan, backbone: Backbone, num_classes: int) -> None:
    """A head or a batch larger than this machine's memory is refused before any work (one line, the key)."""
    from leukexp.heads.base import available_memory

    memory = available_memory()
    side = max(max(part.preprocess.input_size[-2:]) for part in backbone.parts())  # a fusion's largest member
    batch = plan.features.batch_size
    if isinstance(batch, int) and batch * 3 * side * side * 4 * 8 > memory:  # input + ~7x activations, float32
        raise LeukexpError(f"features.batch_size={batch}: {batch} views of {side}x{side} px need more memory than"
                           f" this machine has ({memory / 2**30:.0f} GiB free); use features.batch_size=auto")
    with torch.device("meta"):  # the head's own size check runs; nothing is allocated
        head_from_plan(plan, backbone, num_classes, None)


def fit_and_evaluate(plan: RunPlan, fold_data: FoldData, backbone: Backbone, clock: Stopwatch,
                     external: Catalog | None = None, cell_study: CellStudy | None = None) -> tuple[Outcome, str]:
    """The embeddings the plan derives (from the store where present), the trained head (given the cell study's
    classifier, where the head reads cell types from one), then every step after fitting (`POST_FIT_STEPS`):
    metrics, artifacts, the MLflow model. Returns the outcome and the store's note."""
    embeds = fold_embeds(plan, fold_data, external)
    caches = caches_for(plan, backbone, fold_data.stain)
    with clock.phase("features"):
        features = split_features(fold_data, find(embeds, SPLITS).features(backbone, caches, plan.features))
        samples = fold_data.samples
    with clock.phase("head"):
        seed_everything(plan.seed)  # after extraction: warm and cold runs agree
        positive = fold_data.task.positive_class
        head = head_from_plan(plan, backbone, len(fold_data.classes), samples.class_weights,
                              fold_data.classes.index(positive) if positive in fold_data.classes else None)
        if cell_study is not None:
            if not isinstance(head, DifferentialHead):
                raise ValueError("a cell study is read for head=differential only")
            head.use_cells(cell_study.head, cell_study.types)
        images = (ViewDataset(fold_data.catalog.frame, samples.train, fold_data.augmentation, backbone.preprocess,
                              random=True, stain=fold_data.stain if fold_data.stain.active else None)
                  if features.train is None else None)
        result = fit_head(head, fold_data, features, images)
        check_finite(result, plan)
    outcome = Outcome(plan, fold_data, backbone, embeds, caches, result, raw_test_probs=result.test_probs,
                      features=features)
    for step in POST_FIT_STEPS:
        if step.applies(outcome):
            with clock.phase(step.phase):
                try:
                    step.run(outcome)
                except OSError as error:  # a write that failed unnamed (a full disk mid-file): name the run folder
                    if error.filename is None and file_system_fault(error) is error:
                        raise OSError(error.errno, error.strerror, str(plan.paths.output_dir)) from error
                    raise
    return outcome, cache_note(caches)


def train(cfg: DictConfig) -> dict[str, float]:
    """Run one composed config: validated, read into its plan, run (the programmatic door; `leukexp-train`'s is
    `commands.train`)."""
    validate(cfg)
    return train_plan(RunPlan.from_config(cfg))


def train_plan(plan: RunPlan) -> dict[str, float]:
    """Run a plan with the job's torch threads while it runs."""
    with torch_threads(job_threads(plan.training.torch_threads, plan.launch.parallel_jobs)):
        return run_plan(plan)


def run_plan(plan: RunPlan) -> dict[str, float]:
    """The run's steps, timed per phase."""
    clock = Stopwatch()
    tracking = plan.tracking
    if tracking.enabled:  # a server that is down or wants an account: one line before any data is read
        configure_http(tracking.http_timeout, tracking.http_max_retries)
        probe_server(tracking.tracking_uri)
    warmup.begin(tracking.tracking_uri if tracking.enabled else None, tracking.create_store_folder,
                 str(plan.paths.root_dir))
    with clock.phase("data"):
        cell_study = cell_study_from_plan(plan)  # head.cells=URI: loaded and checked before the data is read
        fold_data = build_fold_data(plan)
        check_against_data(plan, fold_data, cell_study)  # what the head asks of the bags, before any MLflow run
        describe_fold(fold_data)
        out = plan.paths.output_dir
        fold_data.write_manifest(out / MANIFEST_FILE)
        if fold_data.stain.active:
            console.print(fold_data.stain.describe())
        external = scan_external(plan.evaluation.external, fold_data.task, fold_data.classes,
                                 fold_data.catalog)
        if external is not None:
            console.print(f"external validation: {len(external)} images of {external.root}")
    with clock.phase("backbone"):
        seed_everything(plan.seed)  # random-init backbones are reproducible too
        backbone = backbone_from_plan(plan)
        check_sizes(plan, backbone, len(fold_data.classes))
        if cell_study is not None:
            cell_study.check_fingerprint(backbone.fingerprint)
    with clock.phase("MLflow"):
        fold_run, earlier = open_fold_run(plan, fold_data, cell_study.lineage() if cell_study is not None else None)
    if earlier is not None:
        return earlier
    try:
        outcome, note = fit_and_evaluate(plan, fold_data, backbone, clock, external, cell_study)
    except Interrupted:
        if fold_run:
            fold_run.kill()
        raise
    except BaseException:
        if fold_run:
            fold_run.fail()
        raise
    metrics = outcome.metrics
    summary = {k: v for k, v in metrics.items() if k.count("/") == 1 and k.startswith((TEST, EXTERNAL))}
    print_frame(pd.DataFrame({"value": summary}), "test metrics", "metric")
    if note:
        console.print(note)
    if fold_run:
        with clock.phase("MLflow"):
            log_to_mlflow(fold_run, out, outcome.result, metrics, outcome.artifacts)
    console.print(f"done in {clock.summary()}; outputs: {out}")
    return metrics
