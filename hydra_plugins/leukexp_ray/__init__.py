"""Hydra's plugin entry for `hydra/launcher=ray`: leukexp's settings (`leukexp.sweeps.ray_cluster`) stored over
hydra-ray-launcher's own `ray` node. Its module is imported first, so its node is stored first whatever order Hydra
finds the plugins in; without the plugin installed this stores nothing."""

from hydra.core.config_store import ConfigStore

try:
    import hydra_plugins.hydra_ray_launcher._config  # noqa: F401  (stores the plugin's `ray` node, once)
except ImportError:
    pass
else:
    from leukexp.sweeps.ray_cluster import RayLauncherSettings

    ConfigStore.instance().store(group="hydra/launcher", name="ray", node=RayLauncherSettings,
                                 provider="leukexp")
