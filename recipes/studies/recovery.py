"""Study 4, recovery: inject failures mid-episode and measure how often each policy still succeeds,
from behaviour cloning alone (no retry demonstrations).

    python -m recipes.studies.recovery --policies ebt=runs/reach2d_ebt/policy diffusion=runs/reach2d_diffusion/policy \\
        --suite reach2d --episodes 30 --perturbations burst:start=4,length=6 displace:at=6,scale=0.3 \\
        --out runs/studies/recovery

Perturbations (:mod:`eval.sim.perturb`): ``burst`` (random actions for a few steps), ``displace``
(the task object / target moves after partial progress), ``gripper_open`` (Meta-World: the gripper
is forced open). Every policy sees the same seeded episodes and the same perturbation per episode.
Rows: policy x perturbation with success (95% interval) and the recovery ratio = success under the
perturbation / success without it. Writes ``recovery.{json,md,png}``.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any, Sequence

from eval.sim.perturb import PerturbedSuite, make_perturbation
from eval.sim.rollout import EvalConfig, evaluate

from .common import load_policy, write_study, pyplot, save_figure

__all__ = ["run_recovery", "parse_policies", "main"]


def parse_policies(items: Sequence[str]) -> dict[str, str]:
    """["name=DIR", ...] -> {name: DIR} (a bare DIR is named after its parent folder)."""
    out = {}
    for it in items:
        name, eq, path = it.partition("=")
        if not eq:
            path, name = it, Path(it).resolve().parent.name
        if name in out:
            raise ValueError(f"duplicate policy name {name!r}")
        out[name] = path
    return out


def run_recovery(policies: dict[str, Any], suite: Any, tasks: Sequence[str], episodes_per_task: int, seed: int,
                 perturbations: Sequence[str]) -> list[dict[str, Any]]:
    rows = []
    for name, pol in policies.items():
        ecfg = EvalConfig(tasks=list(tasks), episodes_per_task=episodes_per_task, seed=seed)
        clean = evaluate(pol, suite, ecfg)
        base = clean.success_rate
        rows.append({"policy": name, "perturbation": "none", "success": base, "ci_low": clean.overall.ci_low,
                     "ci_high": clean.overall.ci_high, "recovery": 1.0, "episodes": clean.overall.episodes})
        for spec in perturbations:
            rep = evaluate(pol, PerturbedSuite(suite, [make_perturbation(spec)], tag=spec), ecfg)
            o = rep.overall
            rows.append({"policy": name, "perturbation": spec, "success": o.success_rate, "ci_low": o.ci_low,
                         "ci_high": o.ci_high, "recovery": o.success_rate / base if base > 0 else float("nan"),
                         "episodes": o.episodes, "errors": sum(1 for e in rep.episodes if e.error)})
    return rows


def plot(rows: list[dict[str, Any]], path: Path, title: str = "success under injected failures") -> Path:
    plt = pyplot()
    import numpy as np

    pols = list(dict.fromkeys(r["policy"] for r in rows))
    conds = list(dict.fromkeys(r["perturbation"] for r in rows))
    w = 0.8 / max(1, len(pols))
    fig, ax = plt.subplots(figsize=(1.8 + 1.6 * len(conds), 3.5))
    for i, p in enumerate(pols):
        rs = {r["perturbation"]: r for r in rows if r["policy"] == p}
        x = np.arange(len(conds)) + i * w
        y = [rs[c]["success"] if c in rs else np.nan for c in conds]
        lo = [rs[c]["success"] - rs[c]["ci_low"] if c in rs else 0 for c in conds]
        hi = [rs[c]["ci_high"] - rs[c]["success"] if c in rs else 0 for c in conds]
        ax.bar(x, y, w, yerr=[lo, hi], capsize=2, label=p)
    ax.set_xticks(np.arange(len(conds)) + w * (len(pols) - 1) / 2, conds, rotation=15, fontsize=7)
    ax.set_ylabel("success rate")
    ax.set_ylim(0, 1.05)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    return save_figure(fig, path)


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    import torch

    from eval.sim.suites import make_suite

    p = argparse.ArgumentParser(prog="python -m recipes.studies.recovery", description=__doc__.split("\n\n")[0])
    p.add_argument("--policies", nargs="+", required=True, help="name=DIR of save_pretrained policies")
    p.add_argument("--suite", default="reach2d")
    p.add_argument("--tasks", nargs="*", default=None)
    p.add_argument("--episodes", type=int, default=30)
    p.add_argument("--seed", type=int, default=40_000)
    p.add_argument("--perturbations", nargs="+", default=["burst:start=4,length=6", "displace:at=6,scale=0.3"])
    p.add_argument("--out", required=True)
    a = p.parse_args(argv)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    suite = make_suite(a.suite)
    tasks = a.tasks or suite.task_names()
    pols = {n: load_policy(d) for n, d in parse_policies(a.policies).items()}
    rows = run_recovery(pols, suite, tasks, a.episodes, a.seed, a.perturbations)
    out = Path(a.out)
    write_study(out, "recovery", rows, ["policy", "perturbation", "success", "ci_low", "ci_high", "recovery", "episodes"],
                meta={"suite": a.suite, "episodes_per_task": a.episodes, "seed": a.seed},
                title="Recovery from injected failures")
    plot(rows, out / "recovery.png")
    return rows


if __name__ == "__main__":
    main()
