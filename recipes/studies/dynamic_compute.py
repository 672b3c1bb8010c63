"""Study 2, dynamic compute: success and latency of one EBT policy vs the maximum number of
inference steps and vs the gradient-norm stopping threshold (the curve showing where 2 steps suffice).

    python -m recipes.studies.dynamic_compute --policy runs/default/policy --suite reach2d \\
        --episodes 20 --steps 1 2 4 8 16 --min-grad 0 1e-4 1e-3 --out runs/studies/dynamic_compute

Every setting runs the same seeded episodes (same layouts, same instructions). Writes
``dynamic_compute.{json,md,png}``: per setting the success rate (95% interval), mean steps actually
used per chunk, head network evaluations per chunk, and mean chunk latency.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .common import load_policy, predict_overrides, write_study, pyplot, save_figure
from .episodes import run_study_episodes

__all__ = ["run_dynamic_compute", "main"]


def run_dynamic_compute(policy: Any, suite: Any, tasks: Sequence[str], episodes_per_task: int, seed: int,
                        steps: Sequence[int] = (1, 2, 4, 8, 16), min_grads: Sequence[float] = (0.0,),
                        ) -> list[dict[str, Any]]:
    """One row per (max steps, min_grad): success, interval, steps used, latency. Needs a head with the
    ``num_steps`` and ``min_grad`` inference knobs (EBT); others raise ValueError."""
    knobs = policy.head.capabilities.knobs
    missing = [k for k in ("num_steps", "min_grad") if k not in knobs]
    if missing:
        raise ValueError(f"dynamic_compute: head {policy.cfg.head!r} has no inference knob(s) {missing} "
                         f"(an EBT head has both); its knobs: {sorted(knobs)}")
    rows = []
    for k in steps:
        for mg in min_grads:
            with predict_overrides(policy, num_steps=int(k), min_grad=float(mg)):
                res = run_study_episodes(policy, suite, tasks, episodes_per_task, seed)
            rep = res.report
            o = rep.overall
            used = [s for sig in res.signals for s in sig.steps]
            lat = [x for e in rep.episodes for x in e.chunk_latency_ms]
            rows.append({
                "max_steps": int(k), "min_grad": float(mg), "success": o.success_rate, "ci_low": o.ci_low,
                "ci_high": o.ci_high, "episodes": o.episodes, "steps_used": float(np.mean(used)) if used else float("nan"),
                "chunk_ms": float(np.mean(lat)) if lat else float("nan"),
                "per_task": {t: r.success_rate for t, r in rep.tasks.items()},
            })
    return rows


def plot(rows: list[dict[str, Any]], path: Path) -> Path:
    """Success (with interval) and latency vs max steps, one line per threshold."""
    plt = pyplot()

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(9, 3.5))
    for mg in sorted({r["min_grad"] for r in rows}):
        rs = sorted((r for r in rows if r["min_grad"] == mg), key=lambda r: r["max_steps"])
        x = [r["max_steps"] for r in rs]
        y = np.array([r["success"] for r in rs])
        err = np.array([[r["success"] - r["ci_low"] for r in rs], [r["ci_high"] - r["success"] for r in rs]])
        a1.errorbar(x, y, yerr=err, marker="o", capsize=3, label=f"min_grad={mg:g}")
        a2.plot(x, [r["chunk_ms"] for r in rs], marker="o", label=f"min_grad={mg:g}")
    for a in (a1, a2):
        a.set_xscale("log", base=2)
        a.set_xlabel("max inference steps")
    a1.set_ylabel("success rate")
    a1.set_ylim(0, 1.05)
    a2.set_ylabel("ms per chunk")
    a1.legend(fontsize=7)
    return save_figure(fig, path)


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    import torch

    from eval.sim.suites import make_suite

    p = argparse.ArgumentParser(prog="python -m recipes.studies.dynamic_compute", description=__doc__.split("\n\n")[0])
    p.add_argument("--policy", required=True, help="save_pretrained directory of an EBT policy")
    p.add_argument("--suite", default="reach2d")
    p.add_argument("--tasks", nargs="*", default=None)
    p.add_argument("--episodes", type=int, default=20, help="episodes per task per setting")
    p.add_argument("--seed", type=int, default=20_000)
    p.add_argument("--steps", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    p.add_argument("--min-grad", type=float, nargs="+", default=[0.0])
    p.add_argument("--out", required=True)
    a = p.parse_args(argv)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    policy = load_policy(a.policy)
    suite = make_suite(a.suite)
    tasks = a.tasks or suite.task_names()
    rows = run_dynamic_compute(policy, suite, tasks, a.episodes, a.seed, a.steps, a.min_grad)
    out = Path(a.out)
    write_study(out, "dynamic_compute", rows,
                ["max_steps", "min_grad", "success", "ci_low", "ci_high", "steps_used", "chunk_ms", "episodes"],
                meta={"policy": a.policy, "suite": a.suite, "tasks": tasks, "episodes_per_task": a.episodes,
                      "seed": a.seed}, title="Dynamic compute: success and latency vs inference steps")
    plot(rows, out / "dynamic_compute.png")
    return rows


if __name__ == "__main__":
    main()
