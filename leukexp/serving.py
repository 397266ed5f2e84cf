"""The MLflow loader that models written before the `inference` wing name (`loader_module: leukexp.serving`)."""

from leukexp.inference.serving import _load_pyfunc

__all__ = ["_load_pyfunc"]
