"""MLflow bookkeeping: the store, CV parents and their fold runs, run identity, offline sync, the model registry."""
