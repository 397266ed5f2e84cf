"""The benchmark's plain-text table: every measure set against its limit."""

from __future__ import annotations

from benchmarks.common import Result


def table(result: Result) -> str:
    """The result as the plain-text table docs/benchmarks.md quotes."""
    lines = [f"machine: {result.machine}"]
    if result.raw:
        lines.append(f"raw backbone forward        {result.raw['images_per_s']:9.1f} img/s"
                     f"  (batch {int(result.raw['batch_size'])})")
    if result.extraction:
        ratio = result.extraction["images_per_s"] / result.raw["images_per_s"] if result.raw else float("nan")
        lines.append(f"leukexp extraction          {result.extraction['images_per_s']:9.1f} img/s  ratio {ratio:.2f}"
                     f"  ({int(result.extraction['views'])} views in {result.extraction['seconds']:.1f} s,"
                     f" peak RSS {result.extraction['peak_rss_mb']:.0f} MB)")
        for made_on, measured in list(result.extraction_by_views.items())[1:]:
            other = measured["images_per_s"] / result.raw["images_per_s"] if result.raw else float("nan")
            lines.append(f"  views on {made_on:<17} {measured['images_per_s']:9.1f} img/s  ratio {other:.2f}"
                         f"  ({int(measured['views'])} views in {measured['seconds']:.1f} s)")
    if result.head_loop:
        loop = result.head_loop
        lines.append(f"bare head loop              {loop['seconds']:7.1f} s  ({int(loop['steps'])} steps,"
                     f" {int(loop['epochs'])} epochs)")
    for head, job in result.jobs.items():
        line = f"warm job head={head:<13} {job['run_s']:7.1f} s in run, {job['wall_s']:6.1f} s wall"
        if head in ("mlp1", "abmil") and result.head_loop:
            line += f"  ({job['run_s'] / result.head_loop['seconds']:.2f}x the bare head loop)"
        if head == "differential" and result.differential_loop and "head_s" in job:
            loop = result.differential_loop["seconds"]
            line += (f"  (head phase {job['head_s']:.2f} s: {job['head_s'] / max(loop, 1e-9):.2f}x the bare"
                     f" differential loop, {loop:.3f} s)")
        if head in result.load:
            loaded = result.load[head]
            line += (f" | under 2-process load {loaded['run_s']:6.1f} s in run"
                     f" ({loaded['run_s'] / job['run_s']:.2f}x)")
        lines.append(line)
    for head, job in result.team_server.items():
        line = f"  on the team server        {job['run_s']:7.1f} s in run (MLflow {job.get('MLflow_s', 0):.1f} s)"
        if head in ("mlp1", "abmil") and result.head_loop:
            line += f"  ({job['run_s'] / result.head_loop['seconds']:.2f}x the bare head loop)"
        lines.append(line)
    if result.sweep:
        ratio = result.sweep["wall_s"] / result.extraction["seconds"] if result.extraction else float("nan")
        lines.append(f"warm quickstart sweep       {result.sweep['wall_s']:7.1f} s wall"
                     f"  ({ratio:.2f}x one extraction pass)")
    if result.cold_sweep:
        ratio = result.cold_sweep.get("ratio_to_pass_plus_warm", float("nan"))
        lines.append(f"cold quickstart sweep       {result.cold_sweep['wall_s']:7.1f} s wall"
                     f"  ({ratio:.2f}x one pass + warm sweep)")
    return "\n".join(lines)
