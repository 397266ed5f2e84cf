"""A warm job's read measured in fresh processes, against `np.load` of the same bytes in another one."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path


def warm_read(program: str, root: Path, argument: str) -> dict[str, float]:
    """A warm job's read in a fresh process (`program`: `warm_job` or `store_job`, a module of this package), and
    `np.load` of the same bytes in another one (written first by a third)."""
    scripts = str(Path(__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [scripts, os.environ.get("PYTHONPATH")]))}

    def job(mode: str) -> dict[str, float]:
        done = subprocess.run([sys.executable, "-m", f"benchmarks.{program}", mode, str(root), argument],
                              capture_output=True, text=True, timeout=3600, env=env)
        if done.returncode:
            raise RuntimeError(done.stderr[-2000:])
        lines = done.stdout.strip().splitlines()
        return json.loads(lines[-1]) if lines else {}

    job("write_baseline")
    measured = job("store") | job("np_load")
    (root / "contiguous.npy").unlink()
    return measured
