"""`leukexp-train`: the Hydra entry point. Composes the config, runs one study cell, returns its metric."""

from __future__ import annotations

import logging

import hydra
from omegaconf import DictConfig

from leukexp.config import config_dir
from leukexp.errors import LeukexpError, user_errors
from leukexp.sweep import is_multirun, record_failure

log = logging.getLogger("leukexp")


@hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="train")
def main(cfg: DictConfig) -> float | None:
    """Run the configuration and return `optimized_metric` (for sweepers).

    In a multirun a failing job is recorded and the sweep goes on; the failures are listed at its end.
    """
    if is_multirun():
        try:
            return _run(cfg)
        except (Exception, SystemExit) as error:  # one job's failure must not stop the sweep
            log.error("job failed: %s", error if isinstance(error, LeukexpError) else repr(error))
            record_failure(error)
            return None
    with user_errors("leukexp-train"):
        return _run(cfg)
    return None


def _run(cfg: DictConfig) -> float | None:
    from leukexp.validation import validate

    validate(cfg)  # config mistakes are reported in seconds, before Lightning and MLflow load
    from leukexp.pipeline import train

    return train(cfg).get(cfg.optimized_metric)


if __name__ == "__main__":
    main()
