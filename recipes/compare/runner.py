"""Resumable, parallel execution of :class:`~recipes.compare.plan.RunSpec` s.

Each run has its own folder (``OUT/<spec.key>``): ``spec.json`` (what to do), ``result.json`` (the
artifact) and ``done.json`` once finished; ``error.json`` records a crash (message + traceback or the
log tail) and is removed when a later attempt succeeds. :func:`run_specs` skips runs with
``done.json`` and (re-)runs every other one, so a crashed run is retried on the next invocation and a
killed one continues (the worker resumes training from its last checkpoint and keeps finished
checkpoint evaluations). Independent runs execute ``jobs`` at a time, each in its own single-thread
process (:func:`subprocess_execute`: ``python -m recipes.compare.worker``) driven from a thread pool;
tests inject another ``execute``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from vla_ebt.config_io import atomic_write_json

from .artifacts import REPO
from .plan import RunSpec

__all__ = ["DONE", "ERROR", "SPEC", "RESULT", "Outcome", "RunFailed", "is_done", "run_specs", "subprocess_execute",
           "select_hparams"]

DONE, ERROR, SPEC, RESULT, LOG = "done.json", "error.json", "spec.json", "result.json", "log.txt"

Execute = Callable[[RunSpec], dict]


class RunFailed(RuntimeError):
    """A run's process exited with an error (the message holds the tail of its log)."""


@dataclass
class Outcome:
    spec: RunSpec
    status: str  # "skipped" (done before), "done", "failed", "not run" (run_specs(..., run=False))
    result: dict[str, Any] | None = None
    error: str | None = None
    wall_s: float = 0.0


def is_done(spec: RunSpec) -> bool:
    return (spec.run_dir / DONE).is_file() and (spec.run_dir / RESULT).is_file()


def subprocess_execute(spec: RunSpec) -> dict[str, Any]:
    """Run ``python -m recipes.compare.worker RUN_DIR/spec.json`` with one thread (OMP / MKL / torch),
    output appended to ``log.txt``; returns the run's ``result.json``; RunFailed on a non-zero exit."""
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false",
               PYTHONPATH=os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])]))
    log = spec.run_dir / LOG
    with open(log, "a") as f:
        f.write(f"\n=== attempt {time.strftime('%Y-%m-%d %H:%M:%S')} ===\n")
        f.flush()
        p = subprocess.run([sys.executable, "-m", "recipes.compare.worker", str(spec.run_dir / SPEC)], cwd=REPO,
                           env=env, stdout=f, stderr=subprocess.STDOUT)
    if p.returncode != 0:
        tail = log.read_text(errors="replace").splitlines()[-25:]
        raise RunFailed(f"worker exited with code {p.returncode}; last lines of {log}:\n" + "\n".join(tail))
    return json.loads((spec.run_dir / RESULT).read_text())


def _run_one(spec: RunSpec, execute: Execute, log: Callable[[str], None]) -> Outcome:
    d = spec.run_dir
    d.mkdir(parents=True, exist_ok=True)
    atomic_write_json(d / SPEC, spec.to_dict())
    log(f"[compare] start  {spec.key}")
    t0 = time.perf_counter()
    try:
        result = execute(spec)
    except Exception as e:  # noqa: BLE001 - any failure of one run is recorded, the others go on
        wall = time.perf_counter() - t0
        msg = f"{type(e).__name__}: {e}"
        atomic_write_json(d / ERROR, {"error": msg, "traceback": traceback.format_exc(), "wall_s": wall,
                                      "time": time.strftime("%Y-%m-%d %H:%M:%S")})
        log(f"[compare] FAILED {spec.key} after {wall:.0f} s: {msg.splitlines()[0]} (see {d / ERROR})")
        return Outcome(spec, "failed", error=msg, wall_s=wall)
    wall = time.perf_counter() - t0
    atomic_write_json(d / RESULT, result)
    atomic_write_json(d / DONE, {"time": time.strftime("%Y-%m-%d %H:%M:%S"), "wall_s": wall})
    (d / ERROR).unlink(missing_ok=True)
    log(f"[compare] done   {spec.key} in {wall:.0f} s")
    return Outcome(spec, "done", result=result, wall_s=wall)


def run_specs(specs: Sequence[RunSpec], execute: Execute = subprocess_execute, jobs: int = 1,
              log: Callable[[str], None] = print, run: bool = True) -> list[Outcome]:
    """Execute every spec without ``done.json`` (``jobs`` at a time); outcomes in the order of ``specs``.
    ``run=False`` executes nothing: unfinished specs come back as ``"not run"`` (nothing is recorded)."""
    keys = [s.key for s in specs]
    if len(set(keys)) != len(keys):
        raise ValueError("run_specs: two specs share a run folder")
    outcomes: dict[str, Outcome] = {}
    todo = []
    for s in specs:
        if is_done(s):
            outcomes[s.key] = Outcome(s, "skipped", result=json.loads((s.run_dir / RESULT).read_text()))
        else:
            todo.append(s)
    if todo and not run:
        log(f"[compare] {len(todo)} run(s) not finished (not run: --finished-only), {len(specs) - len(todo)} done")
        outcomes.update({s.key: Outcome(s, "not run") for s in todo})
    elif todo:
        log(f"[compare] {len(todo)} run(s) to do, {len(specs) - len(todo)} already done; {max(1, jobs)} at a time")
        with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
            for o in pool.map(lambda s: _run_one(s, execute, log), todo):
                outcomes[o.spec.key] = o
    return [outcomes[k] for k in keys]


def select_hparams(outcomes: Sequence[Outcome]) -> dict[str, Any]:
    """The tuning choice among one head's candidate runs: highest mean success on the tuning seeds at
    the last checkpoint of the primary row; ties: lower final training loss, then grid order.
    ``complete`` is False (and nothing is chosen) unless every candidate finished."""
    rows = []
    for o in outcomes:
        r = o.result
        row = {"lr": o.spec.lr, "ema_decay": o.spec.ema_decay, "run": o.spec.key, "status": o.status}
        if r is not None:
            row.update(used_ema_decay=r["hparams"].get("used_ema_decay"), success=r["curve"][-1]["success"]["mean"],
                       per_task={k: v for k, v in r["curve"][-1]["success"].items() if k != "mean"},
                       final_loss=r.get("final_loss"), train_seconds=r.get("train_seconds"),
                       cpu_seconds=r.get("cpu_seconds"))
        rows.append(row)
    complete = all(o.result is not None for o in outcomes) and bool(outcomes)
    chosen = None
    if complete:
        def rank(i: int) -> tuple:
            loss = rows[i]["final_loss"]
            return (-rows[i]["success"], loss if loss is not None else float("inf"), i)

        best = rows[min(range(len(rows)), key=rank)]
        chosen = {"lr": best["lr"], "ema_decay": best["ema_decay"], "run": best["run"]}
    return {"candidates": rows, "chosen": chosen, "complete": complete}
