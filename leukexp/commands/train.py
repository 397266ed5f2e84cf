"""`leukexp-train`: the Hydra entry point. Composes the config, reads it into a run plan, runs it, returns its
metric."""

from __future__ import annotations

import logging
import sys

import hydra
from omegaconf import DictConfig

from leukexp.config.compose import config_dir
from leukexp.errors import EXIT_USER_ERROR, LeukexpError, one_line, user_errors
from leukexp.runtime.secrets import redact
from leukexp.runtime.signals import Interrupted
from leukexp.sweeps.multirun import is_multirun, record_failure, scrub_hydra_files

log = logging.getLogger("leukexp")
PROGRAM = "leukexp-train"


@hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="train")
def run_app(cfg: DictConfig) -> float | None:
    """Run the configuration and return `optimized_metric` (for sweepers).

    In a multirun a failing job is recorded and the sweep goes on; the failures are listed at its end. A stop
    signal is no failure: it ends the sweep (no next job).
    """
    from leukexp.runtime.process import prepare_process

    prepare_process()  # also in launcher workers, which run jobs in processes of their own
    from pathlib import Path

    from hydra.core.hydra_config import HydraConfig

    scrub_hydra_files(Path(HydraConfig.get().runtime.output_dir))  # before anything can fail or be interrupted
    if is_multirun():
        try:
            return _run(cfg)
        except (Exception, SystemExit) as error:  # one job's failure must not stop the sweep
            log.error("job failed: %s", redact(str(error) if isinstance(error, LeukexpError) else repr(error)))
            record_failure(error)
            return None
    with user_errors(PROGRAM):
        return _run(cfg)
    return None


def _run(cfg: DictConfig) -> float | None:
    from leukexp.config.plan import RunPlan
    from leukexp.run.validation import validate

    validate(cfg)  # once per run, before torch, Lightning and MLflow load: a config mistake is reported in a second
    plan = RunPlan.from_config(cfg)  # the door: nothing below reads the composed config
    from leukexp.run.pipeline import train_plan

    return train_plan(plan).get(plan.optimized_metric)


def main() -> None:
    """Command line entry of `leukexp-train`: Hydra's app with every user mistake, file-system fault and stop
    signal (also those Hydra meets before the job starts, e.g. a run folder it cannot create) as one line."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from leukexp.runtime.process import prepare_process
    from leukexp.runtime.signals import reap_children

    prepare_process()  # before torch loads; Hydra re-raises its errors, so they are reported as one line below
    try:
        with user_errors(PROGRAM):
            try:
                run_app()
            except Interrupted:
                reap_children()  # worker pools (an SVM's calibration folds) and launcher workers end with the job
                raise
    except (HydraException, OmegaConfBaseException) as error:
        print(f"{PROGRAM}: error: {redact(one_line(error))}", file=sys.stderr, flush=True)
        raise SystemExit(EXIT_USER_ERROR) from None


if __name__ == "__main__":
    main()
