"""Where a saved model is: a local folder, `runs:/<run id>/model`, `models:/NAME/VERSION` or `models:/NAME@ALIAS`
on the tracking store (downloaded, then read by `inference.classifier`'s safe loading)."""

from __future__ import annotations

from pathlib import Path

from leukexp.errors import LeukexpError


def is_store_uri(model: str) -> bool:
    """Whether `model` names a model on the tracking store rather than a local folder."""
    return "://" in model or ":/" in model


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
    from mlflow.tracking import MlflowClient

    from leukexp.tracking.store import configure_http, probe_server, resolve_tracking_uri

    configure_http()
    uri = resolve_tracking_uri(tracking_uri)
    probe_server(uri, "--tracking-uri " if key == "MODEL " else "mlflow.tracking_uri=")
    try:
        if model.startswith("models:/"):  # resolved on this store's registry (no global MLflow state touched)
            model = registered_source(MlflowClient(tracking_uri=uri, registry_uri=uri), model, key)
        return Path(mlflow.artifacts.download_artifacts(artifact_uri=model, tracking_uri=uri))
    except LeukexpError:
        raise
    except Exception as error:  # unknown run, model or version; a store that does not answer
        detail = str(error).splitlines()[0][:200] if str(error) else type(error).__name__
        raise LeukexpError(f"{key}{model}: cannot be loaded from {uri} ({detail})") from error


def registered_source(client: object, model: str, key: str = "MODEL ") -> str:
    """The artifact location of `models:/NAME/VERSION` or `models:/NAME@ALIAS`."""
    name, version = registered_version(client, model, key)
    return client.get_model_version_download_uri(name, version)


def registered_version(client: object, model: str, key: str = "MODEL ") -> tuple[str, str]:
    """The name and version `models:/NAME/VERSION` or `models:/NAME@ALIAS` points at now."""
    reference = model.removeprefix("models:/")
    if "@" in reference:
        name, alias = reference.split("@", 1)
        return name, str(client.get_model_version_by_alias(name, alias).version)
    name, _, version = reference.rpartition("/")
    if not name or not version.isdigit():
        raise LeukexpError(f"{key}{model}: expected models:/NAME/VERSION or models:/NAME@ALIAS")
    return name, version
