"""Wall-clock of the main job (``recipes/finetune.py --recipe default``), first with an empty cache
(demos and baselines generated), then again with the cache it filled (both read back).

    python benchmarks/main_job_timing.py --out docs/results/main_job_timing.json [--runs 2]
        [--cache DIR] [--label "quiet machine"] [-- --optim.steps 200 ...]   # extra finetune flags

Each run is a fresh ``python recipes/finetune.py`` process (``VLA_EBT_CACHE`` = ``--cache``, emptied
first unless ``--keep-cache``) timed from start to exit. The JSON records the git commit (and whether
the tree had uncommitted changes), the machine (usable cores, CPU model, memory), the load average
sampled every 5 s during each run (what else ran), each run's cache state, wall seconds, peak RSS
of the job's process tree, the job's own ``timing_s`` breakdown, threads / env workers, success per
policy and task, and the printed success table. ``--label`` says under what conditions it was taken.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script: benchmarks/ is a package of this checkout
    sys.path.insert(0, str(REPO))

from benchmarks.provenance import LoadSampler, git_state, machine, split_passthrough  # noqa: E402


def run_job(cache: Path, run_dir: Path, extra: list[str], log_path: Path) -> dict[str, Any]:
    """One finetune process; returns wall, peak RSS, the summary's timing and success, the table."""
    had_cache = cache.exists() and any(cache.rglob("manifest.json"))
    env = dict(os.environ, VLA_EBT_CACHE=str(cache), PYTHONUNBUFFERED="1")
    cmd = [sys.executable, str(REPO / "recipes" / "finetune.py"), "--recipe", "default", "--run-dir", str(run_dir), *extra]
    t0 = time.perf_counter()
    with LoadSampler() as load, open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)  # this job's rusage: its largest process (workers included)
        proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - t0
    peak_mb = usage.ru_maxrss / 1024
    out = log_path.read_text(errors="replace")
    if proc.returncode != 0:
        raise RuntimeError(f"the main job failed (exit {proc.returncode}); see {log_path}:\n{out[-3000:]}")
    summary = json.loads((run_dir / "summary.json").read_text())
    table = [line for line in out.splitlines() if line.startswith("|")]
    return {
        "command": " ".join(["python", *cmd[1:]]),
        "cache_before": "warm (demos present)" if had_cache else "empty",
        "wall_s": round(wall, 1),
        "peak_rss_mb": round(peak_mb),
        "load_avg_1min": load.summary(),
        "timing_s": {k: round(v, 1) for k, v in summary.get("timing_s", {}).items()},
        "threads": summary.get("threads"),
        "env_workers": summary.get("env_workers"),
        "train_steps": summary.get("train_steps"),
        "samples_per_s": round(summary.get("samples_per_s", 0.0), 1),
        "baselines_cached": summary.get("baselines_cached"),
        "success": summary.get("success"),
        "per_task": summary.get("per_task"),
        "table": table,
        "timing_line": next((line for line in out.splitlines() if line.startswith("[timing]")), ""),
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    argv, extra = split_passthrough(list(sys.argv[1:] if argv is None else argv))
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="write the measurement here as JSON")
    p.add_argument("--runs", type=int, default=2, help="1: empty cache only; 2: then again with the cache")
    p.add_argument("--cache", help="VLA_EBT_CACHE for the runs (default: a new temporary folder)")
    p.add_argument("--keep-cache", action="store_true", help="do not empty --cache before the first run")
    p.add_argument("--work", help="folder for the run folders and logs (default: a new temporary folder)")
    p.add_argument("--label", default="", help="conditions of the measurement, e.g. 'quiet machine'")
    a = p.parse_args(argv)
    if a.runs < 1:
        p.error("--runs must be >= 1")
    work = Path(a.work or tempfile.mkdtemp(prefix="main_job_timing_"))
    work.mkdir(parents=True, exist_ok=True)
    cache = Path(a.cache) if a.cache else work / "cache"
    if cache.exists() and not a.keep_cache:
        shutil.rmtree(cache)
    result: dict[str, Any] = {"label": a.label, "git": git_state(), "machine": machine(),
                              "load_avg_1min_before": float(Path("/proc/loadavg").read_text().split()[0]),
                              "extra_args": extra, "runs": []}
    for k in range(a.runs):
        print(f"[bench] main job run {k + 1}/{a.runs} (cache {cache}) ...", flush=True)
        r = run_job(cache, work / f"run{k + 1}", extra, work / f"run{k + 1}.log")
        print(f"[bench]   {r['wall_s']:.0f} s wall ({r['cache_before']} cache); {r['timing_line']}", flush=True)
        result["runs"].append(r)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"[bench] wrote {a.out}")
    return result


if __name__ == "__main__":
    main()
