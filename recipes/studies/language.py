"""Study 5, language generalization: success on the training paraphrases vs held-out paraphrases
(never seen in training), and on held-out tasks where the suite defines them (``heldout_tasks()``).

    python -m recipes.studies.language --policies ebt=runs/reach2d_ebt/policy --suite reach2d --episodes 30 \\
        --out runs/studies/language

Same seeded layouts for both splits, so the difference is the instruction wording alone.
Writes ``language.{json,md,png}``.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any, Sequence

from eval.sim.rollout import EvalConfig, evaluate

from .common import load_policy, pyplot, save_figure, write_study

__all__ = ["run_language", "parse_policies", "plot", "main"]


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


def plot(rows: list[dict[str, Any]], path: Path, title: str = "success by instruction split") -> Path:
    """Success per condition (``perturbation`` column), one bar per policy, with its interval."""
    import numpy as np

    plt = pyplot()
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


def run_language(policies: dict[str, Any], suite: Any, tasks: Sequence[str], episodes_per_task: int,
                 seed: int) -> list[dict[str, Any]]:
    heldout_tasks = list(getattr(suite, "heldout_tasks", lambda: [])())
    rows = []
    for name, pol in policies.items():
        conds = [("train paraphrases", list(tasks), "train"), ("held-out paraphrases", list(tasks), "heldout")]
        if heldout_tasks:
            conds.append(("held-out tasks", heldout_tasks, "train"))
        for label, ts, split in conds:
            ecfg = EvalConfig(tasks=ts, episodes_per_task=episodes_per_task, seed=seed, split=split)
            rep = evaluate(pol, suite, ecfg)
            o = rep.overall
            rows.append({"policy": name, "perturbation": label, "success": o.success_rate, "ci_low": o.ci_low,
                         "ci_high": o.ci_high, "episodes": o.episodes,
                         "per_task": {t: r.success_rate for t, r in rep.tasks.items()}})
    return rows


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    import torch

    from eval.sim.suites import make_suite

    p = argparse.ArgumentParser(prog="python -m recipes.studies.language", description=__doc__.split("\n\n")[0])
    p.add_argument("--policies", nargs="+", required=True, help="name=DIR of save_pretrained policies")
    p.add_argument("--suite", default="reach2d")
    p.add_argument("--tasks", nargs="*", default=None)
    p.add_argument("--episodes", type=int, default=30)
    p.add_argument("--seed", type=int, default=50_000)
    p.add_argument("--out", required=True)
    a = p.parse_args(argv)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    suite = make_suite(a.suite)
    tasks = a.tasks or suite.task_names()
    pols = {n: load_policy(d) for n, d in parse_policies(a.policies).items()}
    rows = run_language(pols, suite, tasks, a.episodes, a.seed)
    out = Path(a.out)
    write_study(out, "language", rows, ["policy", "perturbation", "success", "ci_low", "ci_high", "episodes"],
                meta={"suite": a.suite, "episodes_per_task": a.episodes, "seed": a.seed},
                title="Language generalization (condition column: instruction split / task set)")
    plot(rows, out / "language.png", title="success by instruction split")
    return rows


if __name__ == "__main__":
    main()
