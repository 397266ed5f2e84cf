"""Hydra multirun support: create the tracking store before jobs start, keep going when a job fails,
and report the failures (with their errors) when the sweep ends."""

from __future__ import annotations

import json
import logging
import os
import traceback
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig
from rich.markup import escape

from leukexp.console import console
from leukexp.runtime.process import usable_cores
from leukexp.vocabulary import NON_IDENTITY_GROUPS, SWEPT_KEYS_ENV

log = logging.getLogger(__name__)
FAILURES = "failures.jsonl"


def is_multirun() -> bool:
    """True inside a Hydra multirun job (read by the command's door; below it, the plan's `launch` says)."""
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def job_threads(requested: int | None, parallel_jobs: int) -> int | None:
    """Torch CPU threads for this job: `requested`, or cores / parallel jobs under a parallel launcher
    (`parallel_jobs`: the plan's `launch.parallel_jobs`, -1 for one job per core)."""
    if requested:
        return int(requested)
    if parallel_jobs == 1:
        return None
    cores = usable_cores()
    return max(1, cores // max(1, cores if parallel_jobs < 0 else parallel_jobs))


def record_failure(error: BaseException) -> None:
    """Append this job's error to the sweep's failure list (read back at the end of the sweep)."""
    from leukexp.runtime.secrets import redact

    hydra = HydraConfig.get()
    entry = {  # redacted before JSON escapes the URIs' backslashes
        "job": hydra.job.num,
        "overrides": [redact(str(override)) for override in hydra.overrides.task],
        "error": redact(f"{type(error).__name__}: {error}".splitlines()[0][:500]),
        "where": redact("".join(traceback.format_exception(error)[-2:]).strip()[:800]),
    }
    with open(Path(hydra.sweep.dir) / FAILURES, "a") as handle:
        handle.write(json.dumps(entry) + "\n")


def scrub_hydra_files(out: Path) -> None:
    """Hydra's own copies of the command line and config (the job folder's `.hydra/*.yaml`, a sweep's
    `multirun.yaml`) without credentials: done as a job starts, before anything can fail."""
    from leukexp.runtime.secrets import redact

    files = list((out / ".hydra").glob("*.yaml"))
    if is_multirun():
        files.append(Path(HydraConfig.get().sweep.dir) / "multirun.yaml")
    for path in files:
        if not path.is_file():
            continue
        text = path.read_text()
        if (clean := redact(text)) != text:
            path.write_text(clean)


def sweep_description(command: list[str], data: str, started: str, jobs: int | None) -> str:
    """The experiment's description for a sweep: the command, the data and when it started."""
    from leukexp.runtime.secrets import redact

    count = f" ({jobs} jobs)" if jobs else ""
    return redact(f"Last sweep{count}, started {started}:\n\n```\nleukexp-train {' '.join(command)}\n```\n\n"
            f"Data: `{data}`. Each configuration is a parent run (`leukexp.kind=cv`) named by what varies;"
            " its description holds the per-fold table and the aggregates (`cv/test/acc_mean` ...).")


def swept(overrides: list[str], params: dict[str, object]) -> list[str]:
    """The keys a sweep varies: command-line sweep overrides (`head=mlp1,svm`) and the sweeper's params."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    keys = [o.key_or_group for o in OverridesParser.create().parse_overrides(overrides) if o.is_sweep_override()]
    keys += [str(k) for k, v in params.items()
             if "," in str(v) or str(v).replace(" ", "").startswith(("range(", "choice(", "interval(", "tag("))]
    return list(dict.fromkeys(keys))


def describe_sweep(config: DictConfig) -> None:
    """Write what this sweep is into its experiment's description."""
    import sys
    from datetime import UTC, datetime

    from mlflow.tracking import MlflowClient
    from omegaconf import OmegaConf

    from leukexp.config.identity import changes_the_result, config_groups
    from leukexp.tracking.store import artifact_root, describe_experiment, ensure_experiment
    from leukexp.tracking.views import save_ranking_view

    uri = str(config.mlflow.tracking_uri)
    client = MlflowClient(uri)
    experiment_id = ensure_experiment(client, str(config.mlflow.experiment_name),
                                      artifact_root(uri, config.mlflow.get("artifact_location")))
    root = OmegaConf.select(config, "data.root", default=None, throw_on_resolution_failure=False)
    data = f"{config.data.get('name', 'folder')}" + (f" ({root})" if root else "")
    started = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    describe_experiment(client, experiment_id, sweep_description(sys.argv[1:], data, started, None))
    metric, maximize = compared_metric(config)
    keys = swept(list(config.hydra.overrides.task), dict(config.hydra.sweeper.get("params") or {}))
    shown = [k for k in keys if ("." not in k and k in config_groups() and k not in NON_IDENTITY_GROUPS)
             or ("." in k and changes_the_result(k))]
    save_ranking_view(client, experiment_id, metric, shown, maximize)


def compared_metric(config: DictConfig) -> tuple[str, bool]:
    """The fold metric a sweep compares its configurations on, and whether higher is better: a search's
    objective (`cv/<metric>_mean`, its direction; `search.fold_metric` checks it), else `evaluation.rank_by`
    (`auto`: test AUROC for a bag study, test accuracy otherwise; a loss, ECE or Brier score lowest first)."""
    from omegaconf import OmegaConf

    from leukexp.sweeps.space import fold_metric
    from leukexp.vocabulary import TEST_ACC, TEST_AUC_MACRO

    objective = config.hydra.sweeper.get("objective")
    if objective:
        return fold_metric(str(objective)), str(config.hydra.sweeper.get("direction", "maximize")) != "minimize"
    metric = str(OmegaConf.select(config, "evaluation.rank_by", default="auto"))
    if metric == "auto":
        bags = str(OmegaConf.select(config, "bags._target_", default="") or "")
        metric = TEST_AUC_MACRO if bags and not bags.endswith(".NoBags") else TEST_ACC
    return metric, metric.rsplit("/", 1)[-1].split("_", 1)[0] not in LOWER_IS_BETTER


LOWER_IS_BETTER = ("loss", "ece", "brier")


class SweepCallback(Callback):
    """Prepares the MLflow store once before jobs start and summarizes failed jobs at the end."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        """Create the SQLite schema in the parent process: parallel jobs race on it otherwise."""
        HydraConfig.instance().set_config(config)  # the paths interpolate hydra:runtime values
        os.environ[SWEPT_KEYS_ENV] = ",".join(swept(list(config.hydra.overrides.task),
                                                    dict(config.hydra.sweeper.get("params") or {})))
        sweep_dir = Path(config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        (sweep_dir / FAILURES).unlink(missing_ok=True)
        if config.mlflow.enabled:
            from leukexp.errors import user_errors
            from leukexp.tracking.reach import configure_http
            from leukexp.tracking.store import prepare_store

            with user_errors("leukexp-train"):
                configure_http(float(config.mlflow.http_timeout), int(config.mlflow.http_max_retries))
                prepare_store(str(config.mlflow.tracking_uri), bool(config.mlflow.get("create_store_folder", False)),
                              config.paths.root_dir)
                describe_sweep(config)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        """List failed jobs with their errors; exit non-zero if any failed."""
        HydraConfig.instance().set_config(config)
        failures_file = Path(config.hydra.sweep.dir) / FAILURES
        if not failures_file.is_file():
            return
        failures = [json.loads(line) for line in failures_file.read_text().splitlines() if line.strip()]
        if not failures:
            return
        console.print(f"[bold red]{len(failures)} job(s) failed[/] (the others finished; re-run the same command"
                      " to retry only what is missing):")
        from leukexp.runtime.secrets import redact

        for failure in failures:
            console.print(escape(redact(f"  job {failure['job']} [{' '.join(failure['overrides'])}]:"
                                        f" {failure['error']}")))
        raise SystemExit(1)
