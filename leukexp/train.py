"""`leukexp-train`: the Hydra entry point. Composes the config, runs one study cell, returns its metric."""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from leukexp.config import config_dir
from leukexp.errors import user_errors


@hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="train")
def main(cfg: DictConfig) -> float | None:
    """Run the configuration and return `optimized_metric` (for sweepers)."""
    with user_errors("leukexp-train"):
        from leukexp.pipeline import train  # torch, Lightning and MLflow load only when a run starts

        metrics = train(cfg)
        return metrics.get(cfg.optimized_metric)
    return None


if __name__ == "__main__":
    main()
