"""Reaching a tracking server without loading MLflow: the HTTP budget of MLflow's client, one probe with one
deadline, and a refused account as one line (a run checks its server before it reads any data)."""

from __future__ import annotations

import os

from leukexp.errors import LeukexpError
from leukexp.runtime.secrets import redact

ACCOUNT_ENV = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")


def configure_http(timeout: float = 10, max_retries: int = 2) -> None:
    """MLflow's HTTP timeout and retry budget for a tracking server (the environment's own settings win).

    MLflow's defaults (120 s timeout, 7 retries with exponential backoff) make an unreachable server take
    about four minutes to fail; these make it a few seconds.
    """
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", str(max(1, round(timeout))))
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", str(int(max_retries)))
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_JITTER", "0.5")


def http_deadline() -> float:
    """Seconds a tracking server has to answer a leukexp command's first request (`mlflow.http_timeout`)."""
    try:
        return float(os.environ.get("MLFLOW_HTTP_REQUEST_TIMEOUT", "10"))
    except ValueError:
        return 10.0


def probe_server(tracking_uri: str, option: str = "mlflow.tracking_uri=") -> None:
    """One request to a tracking server with one deadline and no retries: a server that is down, unreachable or
    accepts connections and never answers is one line within `http_deadline()` seconds (MLflow's own client
    would retry and wait per request: 30-250 s)."""
    if not tracking_uri.startswith(("http://", "https://")):
        return
    import requests

    deadline = http_deadline()
    user, password = (os.environ.get(name) for name in ACCOUNT_ENV)
    try:
        answer = requests.get(f"{tracking_uri.rstrip('/')}/api/2.0/mlflow/experiments/search",
                              params={"max_results": 1}, timeout=(deadline, deadline),
                              auth=(user, password) if user and password else None)
    except requests.RequestException as error:
        raise LeukexpError(f"{option}{redact(tracking_uri)}: the server does not answer within {deadline:g} s"
                           f" ({type(error).__name__}); start it or fix the URI") from error
    if answer.status_code == 401:
        raise account_refusal(401, f"{option}{redact(tracking_uri)}")


def account_refusal(status: int, where: str) -> LeukexpError:
    """A tracking server's refusal of this account (HTTP 401: who are you, 403: not allowed) as one line that says
    what fixes it."""
    user = os.environ.get(ACCOUNT_ENV[0])
    if status == 401 and not (user and os.environ.get(ACCOUNT_ENV[1])):
        return LeukexpError(f"{where}: the server wants an account: set {ACCOUNT_ENV[0]} and {ACCOUNT_ENV[1]}"
                            " (its administrator creates one)")
    if status == 401:
        return LeukexpError(f"{where}: the server refused the account '{user}' (wrong name or password): check"
                            f" {ACCOUNT_ENV[0]} and {ACCOUNT_ENV[1]}")
    return LeukexpError(f"{where}: the account '{user}' may read at most, not write (READ or no permission): ask the"
                        " experiment's owner or an administrator for EDIT, or use an experiment of your own")
