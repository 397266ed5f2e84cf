"""`evaluation.external` resolved to a data config at the run's door (`RunPlan.evaluation.external`): another lab's
images, scored by every fold's trained model.

`evaluation.external` is null (none), the name of a `data` option (`synthetic_b`, `all4class`), a folder of class
folders (`evaluation.external=/data/lab_b`), or a mapping of `data` keys: a folder's (`{root: PATH, groups_csv: ...}`),
those of the option named by `config` (`{config: synthetic_b, counts: {ALL: 20, HLT: 20}}`), or a whole data config
with its own `_target_`. Its classes map through the task's aliases exactly as the training data's do, and must give
the same classes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from leukexp.config.compose import plain_mapping
from leukexp.config.schema import MISSING, lookup
from leukexp.errors import LeukexpError

KEY = "evaluation.external"


def external_setting(cfg: DictConfig) -> Any:
    """The raw `evaluation.external` value (None when absent or `none`)."""
    value = lookup(cfg, KEY)
    return None if value is MISSING or value in (None, "none", "") else value


def _path_overrides(cfg: DictConfig) -> list[str]:
    """The run's own folders, so an option's `${paths...}` resolve as the run's do."""
    paths = plain_mapping(cfg.paths, resolve=False) if "paths" in cfg else {}
    keys = [k for k in ("root_dir", "cache_dir", "shared_data_dir") if k in paths]
    return [f"paths.{k}='{OmegaConf.select(cfg, f'paths.{k}')}'" for k in keys]


def external_config(cfg: DictConfig) -> dict[str, Any] | None:
    """The `data` config of the external set (a plain dict with `_target_`), or None without one."""
    from leukexp.config.compose import group_options, load_option

    value = external_setting(cfg)
    if value is None:
        return None
    if isinstance(value, str) and value in group_options("data"):
        return load_option("data", value, _path_overrides(cfg), key=KEY)
    if isinstance(value, str):
        folder = Path(value).expanduser()
        if not folder.is_dir():
            raise LeukexpError(f"{KEY}={value}: neither a data config ({', '.join(group_options('data'))}) nor a"
                               " folder; give a folder of class folders or a data config name")
        value = {"root": str(folder), "name": folder.name}
    if not isinstance(value, dict):
        raise LeukexpError(f"{KEY}={value!r}: expected none, a data config name, a folder, or {{root: PATH}}")
    if "_target_" in value:
        return dict(value)
    value = dict(value)
    option = str(value.pop("config", "folder"))
    base = load_option("data", option, [*_path_overrides(cfg), "data.root=unset"] if option == "folder"
                       else _path_overrides(cfg), key=f"{KEY}.config")
    unknown = sorted(set(value) - set(base))
    if unknown:
        raise LeukexpError(f"{KEY}.{unknown[0]}: not a key of data config {option} (keys:"
                           f" {', '.join(sorted(base))})")
    config = base | value
    if "name" not in value and config.get("root"):
        config["name"] = Path(str(config["root"])).name
    return config
