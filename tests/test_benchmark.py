"""scripts/benchmark.py as a user runs it: the measures it takes by default, and the store measure end to end (its
fresh-process programs included)."""

import json
import subprocess
import sys
from pathlib import Path

import benchmark

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "benchmark.py"


def test_the_team_server_is_measured_only_when_asked_for() -> None:
    assert "team_server" in benchmark.MEASURES and "team_server" not in benchmark.DEFAULT_MEASURES


def test_the_store_measure_runs_its_programs_and_writes_its_table(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, str(SCRIPT), "--store", "1650", "--root", str(tmp_path)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    (row,) = json.loads((tmp_path / "store.json").read_text())["rows"]
    assert row["views"] == 1650 and row["files"] >= 1
    assert row["job_rows"] == 40 * 33 + 10, "the fold's training images' views and the others' originals"
    assert row["np_load_s"] > 0 and row["job_peak_rss_bytes"] > row["job_bytes"]
    assert "| 1,650 |" in done.stdout
