"""The Hydra config: where it lives, its key schema, validation and typed settings built from it."""
