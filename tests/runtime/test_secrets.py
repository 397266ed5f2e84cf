"""Credentials in URIs never reach a log, a param, a file or an error line."""

from leukexp.runtime.secrets import redact


def test_user_info_of_every_uri_is_redacted() -> None:
    text = "tracking http://alice:s3cr:et@host:5000/x, artifacts s3://KEY@bucket/p, db postgresql://bob@db/m"
    clean = redact(text)
    assert clean == "tracking http://***@host:5000/x, artifacts s3://***@bucket/p, db postgresql://***@db/m"
    assert "s3cr" not in clean and "alice" not in clean and "KEY" not in clean


def test_uris_without_credentials_and_plain_text_are_unchanged() -> None:
    text = "sqlite:////data/mlruns/mlflow.db and https://host:5000 and mail me at a@b.org"
    assert redact(text) == text


def test_hydras_escaped_overrides_and_log_records_are_redacted(caplog) -> None:
    import logging

    from leukexp.runtime.secrets import redact_logs

    line = r"#1 : fold=f1 mlflow.tracking_uri=http\://alice\:hunter2@127.0.0.1\:5000 model=timm"
    assert redact(line) == r"#1 : fold=f1 mlflow.tracking_uri=http\://***@127.0.0.1\:5000 model=timm"
    redact_logs()
    redact_logs()  # idempotent
    logging.getLogger("hydra.launcher").warning("\t%s", line)
    assert "hunter2" not in caplog.text and "http\\://***@127.0.0.1" in caplog.text
