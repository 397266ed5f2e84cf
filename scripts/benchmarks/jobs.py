"""Warm jobs: `leukexp-train` as a user runs it (alone, under load, or logging to a team server), timed whole and by
the phases of its `done in` line."""

from __future__ import annotations

import os
import resource
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.common import PHASE, done_seconds


def run_cli(args: list[str], root: Path, load: int = 0) -> dict[str, float]:
    """`leukexp-train ARGS` as a user runs it (optionally beside `load` busy-loop processes): seconds."""
    env = {**os.environ, "LEUKEXP_ROOT": str(root), "COLUMNS": "200"}
    env.pop("MLFLOW_TRACKING_URI", None)
    burners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(load)]
    try:
        start = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "leukexp.commands.train", *args], cwd=root, env=env,
                              capture_output=True, text=True)
        wall = time.perf_counter() - start
    finally:
        for burner in burners:
            burner.kill()
            burner.wait()
    if done.returncode != 0:
        raise SystemExit(f"leukexp-train {' '.join(args)} failed ({done.returncode}):\n{done.stdout[-2000:]}"
                         f"\n{done.stderr[-2000:]}")
    inside = done_seconds(done.stdout)
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    phases = {f"{name}_s": float(value) for line in done.stdout.splitlines() if "done in" in line
              for name, value in PHASE.findall(line.split("(", 1)[-1])}
    return {"wall_s": wall, "run_s": inside if inside is not None else float("nan"), "peak_rss_mb": peak, **phases}


def on_team_server(root: Path, args: list[str]) -> dict[str, float]:
    """`leukexp-train ARGS` logging to a team server (`leukexp-server --auth`: MLflow on PostgreSQL, accounts on)
    started under ROOT/team-server for this measure and stopped after it."""
    from leukexp.tracking import server
    from leukexp.tracking.reach import ACCOUNT_ENV

    folder = root / "team-server"
    shutil.rmtree(folder, ignore_errors=True)
    account = {ACCOUNT_ENV[0]: "admin", ACCOUNT_ENV[1]: f"bench-{os.getpid()}-{time.time_ns()}"}
    saved = {name: os.environ.get(name) for name in account}
    os.environ.update(account)
    try:
        state = server.start(folder, port=free_port(), auth=True)
        run_cli([*args, f"mlflow.tracking_uri={state['uri']}"], root)  # the server's first run: its experiment
        return run_cli([*args, f"mlflow.tracking_uri={state['uri']}"], root)
    finally:
        server.stop(folder)
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def free_port() -> int:
    """A TCP port nothing listens on."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def fresh_store(root: Path) -> None:
    """An empty MLflow store: every measured job writes to a store of the same size."""
    shutil.rmtree(root / "mlruns", ignore_errors=True)
