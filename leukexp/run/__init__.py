"""One study cell from a composed config: validated, turned into objects, run (data, backbone, features, head,
metrics) and written (artifacts, MLflow run)."""
