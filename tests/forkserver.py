"""Run leukexp's commands as real processes without paying their imports each time.

A server process imports torch, timm, Lightning, MLflow and leukexp once; each command is then a forked child of
it (its own process, exit code, stdout and stderr, working folder and environment) that runs the command's module
as `python -m MODULE ARGS` would. A table of many short failing commands spends most of its time importing; this
keeps what the table checks (exit code, printed lines, files left behind) and drops the imports.

    with CommandServer() as server:
        result = server.run(["leukexp.commands.train", "head.dropout=1.5"], cwd=root, env=env, timeout=240)
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PRELOAD = ("torch", "timm", "lightning", "mlflow", "hydra", "sklearn", "leukexp.commands.train",
           "leukexp.commands.report", "leukexp.commands.sync", "leukexp.commands.predict")


class CommandServer:
    """A preloaded server process; `run` forks one child per command and waits for it."""

    def __init__(self) -> None:
        self.process: subprocess.Popen | None = None

    def __enter__(self) -> CommandServer:
        self.process = subprocess.Popen([sys.executable, __file__], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        text=True, env={**os.environ, "PYTHONPATH": _pythonpath()})
        assert self.process.stdout.readline().strip() == "ready", "the command server did not start"
        return self

    def __exit__(self, *exc: object) -> None:
        if self.process is not None:
            self.process.stdin.close()
            self.process.wait(timeout=60)

    def run(self, command: list[str], cwd: Path, env: dict[str, str], timeout: float) -> subprocess.CompletedProcess:
        """Run `python -m command[0] command[1:]` in `cwd` with exactly `env`; like `subprocess.run` with
        captured text output (a command past its timeout is killed with its process group, exit -9)."""
        with tempfile.TemporaryDirectory() as folder:
            out, err = Path(folder, "stdout"), Path(folder, "stderr")
            request = {"command": command, "cwd": str(cwd), "env": env, "timeout": timeout,
                       "stdout": str(out), "stderr": str(err)}
            self.process.stdin.write(json.dumps(request) + "\n")
            self.process.stdin.flush()
            code = int(json.loads(self.process.stdout.readline())["code"])
            return subprocess.CompletedProcess([sys.executable, "-m", *command], code,
                                               out.read_text(errors="replace"), err.read_text(errors="replace"))


def _pythonpath() -> str:
    tests = str(Path(__file__).resolve().parent)
    return os.pathsep.join(filter(None, [tests, os.environ.get("PYTHONPATH", "")]))


def _child(request: dict) -> None:
    """In the forked child: become the command (never returns)."""
    import runpy

    code = 1
    try:
        os.setpgid(0, 0)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        for fd, name in ((1, "stdout"), (2, "stderr")):
            os.dup2(os.open(request[name], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), fd)
        sys.stdin = open(0, encoding="utf-8", closefd=False)  # noqa: SIM115
        sys.stdout = open(1, "w", encoding="utf-8", closefd=False, buffering=1)  # noqa: SIM115
        sys.stderr = open(2, "w", encoding="utf-8", errors="backslashreplace", closefd=False,  # noqa: SIM115
                          buffering=1)
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        module, *args = request["command"]
        sys.argv = [module, *args]
        sys.modules.pop(module, None)  # preloaded as a module: run afresh as __main__, as `python -m` does
        runpy.run_module(module, run_name="__main__", alter_sys=True)
        code = 0
    except SystemExit as stop:
        code = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
        if stop.code is not None and not isinstance(stop.code, int):
            print(stop.code, file=sys.stderr)
    except BaseException:  # as the interpreter would: the traceback, exit 1
        import traceback

        traceback.print_exc()
    finally:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):  # a closed stream at exit is the command's business
                stream.flush()
        os._exit(code)


def _wait(pid: int, timeout: float) -> int:
    deadline = time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        if time.monotonic() > deadline:
            os.killpg(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            return -9
        time.sleep(0.02)


def serve() -> None:
    """The server loop: preload, then one forked child per request line on stdin."""
    import importlib

    for module in PRELOAD:
        importlib.import_module(module)
    from leukexp.backbones.loading import backbone_kinds

    backbone_kinds()
    print("ready", flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        sys.stdout.flush()
        pid = os.fork()
        if pid == 0:
            _child(request)
        code = _wait(pid, float(request["timeout"]))
        print(json.dumps({"code": code}), flush=True)


if __name__ == "__main__":
    serve()
