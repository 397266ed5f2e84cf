"""One run of a study configuration: validated, turned into objects, run (data, backbone, features, head, metrics)
and written (artifacts, MLflow run)."""
