"""Reaching a tracking server: an account the server refuses is one line naming what fixes it, before any work."""

import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from leukexp.errors import LeukexpError
from leukexp.tracking.reach import ACCOUNT_ENV, account_refusal, probe_server


class Guarded(BaseHTTPRequestHandler):
    """A server that wants `alice:right` (HTTP basic auth) and answers 401 otherwise."""

    def do_GET(self) -> None:
        import base64

        expected = "Basic " + base64.b64encode(b"alice:right").decode()
        self.send_response(200 if self.headers.get("Authorization") == expected else 401)
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def guarded():
    server = HTTPServer(("127.0.0.1", 0), Guarded)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_a_server_that_wants_an_account_is_one_line_naming_the_variables(guarded: str,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ACCOUNT_ENV:
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(LeukexpError, match=rf"^mlflow.tracking_uri={guarded}: the server wants an account: set"
                                           r" MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD"):
        probe_server(guarded)
    monkeypatch.setenv(ACCOUNT_ENV[0], "alice")
    monkeypatch.setenv(ACCOUNT_ENV[1], "wrong")
    with pytest.raises(LeukexpError, match=r"refused the account 'alice' \(wrong name or password\)") as refused:
        probe_server(guarded, "--tracking-uri ")
    assert str(refused.value).startswith("--tracking-uri http") and "wrong" not in str(refused.value).split(")")[1]
    monkeypatch.setenv(ACCOUNT_ENV[1], "right")
    probe_server(guarded)  # the right account passes


def test_a_refused_write_names_the_account_and_the_permission_to_ask_for(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ACCOUNT_ENV[0], "reader")
    line = str(account_refusal(403, "mlflow.experiment_name=lab on http://h:5000"))
    assert line.startswith("mlflow.experiment_name=lab on http://h:5000: the account 'reader' may read at most")
    assert "EDIT" in line


def test_stores_that_are_not_servers_are_not_probed() -> None:
    probe_server("sqlite:////nowhere/mlflow.db")  # no request, no error: the store's own check opens it
