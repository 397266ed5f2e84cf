"""Where a saved model is: a local folder, `runs:/<run id>/model`, `models:/NAME/VERSION` or `models:/NAME@ALIAS`
on the tracking store (downloaded, then read by `inference.classifier`'s safe loading)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from leukexp.errors import LeukexpError


def is_store_uri(model: str) -> bool:
    """Whether `model` names a model on the tracking store rather than a local folder."""
    return "://" in model or ":/" in model


@contextmanager
def _store(model: str, tracking_uri: str | None, key: str) -> Iterator[tuple[Any, str]]:
    """A client of the tracking store (and its URI) for `model`, probed once; a failure inside is one line naming
    `key` and `model`."""
    from mlflow.tracking import MlflowClient

    from leukexp.tracking.reach import configure_http, probe_server
    from leukexp.tracking.store import resolve_tracking_uri

    configure_http()
    uri = resolve_tracking_uri(tracking_uri)
    probe_server(uri, "--tracking-uri " if key == "MODEL " else "mlflow.tracking_uri=")
    try:  # resolved on this store's registry (no global MLflow state touched)
        yield MlflowClient(tracking_uri=uri, registry_uri=uri), uri
    except LeukexpError:
        raise
    except Exception as error:  # unknown run, model, version or alias; a store that does not answer
        detail = str(error).splitlines()[0][:200] if str(error) else type(error).__name__
        raise LeukexpError(f"{key}{model}: cannot be loaded from {uri} ({detail})") from error


def resolve_model(model: str, tracking_uri: str | None = None, key: str = "MODEL ") -> Path:
    """A local folder for `model`: the folder itself, or `runs:/` / `models:/` downloaded from the store; a failure
    is one line naming `key` (`MODEL `, `head.cells=`)."""
    if not is_store_uri(model):
        folder = Path(model).expanduser()
        if not folder.is_dir():
            raise LeukexpError(f"{key}{model}: no such folder; give a run folder, runs:/<id>/model or"
                               " models:/NAME/VERSION")
        return folder
    import mlflow.artifacts

    with _store(model, tracking_uri, key) as (client, uri):
        source = registered_source(client, model, key) if model.startswith("models:/") else model
        return Path(mlflow.artifacts.download_artifacts(artifact_uri=source, tracking_uri=uri))


def pin_model(model: str, tracking_uri: str | None = None, key: str = "MODEL ") -> tuple[str, str]:
    """`models:/NAME@ALIAS` (or `models:/NAME/VERSION`) as `models:/NAME/VERSION` of the version it names now, and
    that version as `NAME/VERSION`."""
    with _store(model, tracking_uri, key) as (client, _):
        name, version = registered_version(client, model, key)
    return f"models:/{name}/{version}", f"{name}/{version}"


def registered_source(client: Any, model: str, key: str = "MODEL ") -> str:
    """The artifact location of `models:/NAME/VERSION` or `models:/NAME@ALIAS`."""
    name, version = registered_version(client, model, key)
    return client.get_model_version_download_uri(name, version)


def registered_version(client: Any, model: str, key: str = "MODEL ") -> tuple[str, str]:
    """The name and version `models:/NAME/VERSION` or `models:/NAME@ALIAS` points at now."""
    reference = model.removeprefix("models:/")
    if "@" in reference:
        name, alias = reference.split("@", 1)
        return name, str(client.get_model_version_by_alias(name, alias).version)
    name, _, version = reference.rpartition("/")
    if not name or not version.isdigit():
        raise LeukexpError(f"{key}{model}: expected models:/NAME/VERSION or models:/NAME@ALIAS")
    return name, version
