"""Simulation benchmark: env steps/s with rendering per suite, and the EBT-vs-diffusion head-to-head
(success and ms per chunk, means over tasks) for the default budget.

    python benchmarks/sim_eval.py --out runs/bench/sim_eval.json                       # trains both heads
    python benchmarks/sim_eval.py --policies ebt=runs/x/policy diffusion=runs/y/policy --out FILE.json

Env throughput: each suite's scripted expert (random actions for suites without one, e.g. LIBERO)
drives ``--env-steps`` steps with the observation image rendered every step, in one process.

Head-to-head: both policies run the same seeded episodes (``--episodes`` per task) of the recipe's
suite, tasks and suite arguments (``--recipe``, default ``default``: the Meta-World tasks of the main
job) through :func:`recipes.studies.head_to_head.evaluate_variant`. EBT uses its configured inference
steps (2); diffusion is reported with its configured sampler (DDPM-100) and with DDIM-10. Without
``--policies`` both heads are first trained with that recipe at its own budget (steps and demos per
task; ``--train-steps`` / ``--demos`` shrink it), reusing finished runs under ``--work-dir``. The
full study (regression too, and equal wall-clock) is ``python -m recipes.studies.head_to_head``.

JSON keys: ``env_steps_per_s`` (suite -> steps/s), ``ebt_success``, ``diffusion_success``,
``diffusion_ddim_success``, ``ebt_chunk_ms``, ``diffusion_chunk_ms``, ``diffusion_ddim_chunk_ms``,
``ebt_nfe``, ``diffusion_nfe``, ``chunk_ms_ratio`` (EBT / DDPM), plus the per-task table.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


#: (JSON key prefix, head of the policy it evaluates, inference overrides): the rows this benchmark reports
VARIANTS: tuple[tuple[str, str, dict[str, Any]], ...] = (
    ("ebt", "ebt", {}),
    ("diffusion", "diffusion", {"sampler": "ddpm", "num_steps": 100}),
    ("diffusion_ddim", "diffusion", {"sampler": "ddim", "num_steps": 10}),
)
HEADS = tuple(dict.fromkeys(head for _, head, _ in VARIANTS))  # the heads trained without --policies


def env_throughput(suite_name: str, steps: int, seed: int = 0, **suite_kwargs: Any) -> float:
    """Steps/s of ``suite_name`` driven by its expert (or random actions), images rendered every step."""
    import numpy as np

    from eval.sim.suites import make_suite

    suite = make_suite(suite_name, **suite_kwargs)
    task = suite.task_names()[0]
    lo, hi = suite.action_bounds()
    rng = np.random.default_rng(seed)
    done, ep = 0, 0
    t0 = time.perf_counter()
    while done < steps:
        env = suite.make_env(task, seed=seed + ep)
        try:
            expert = suite.expert(task, seed=seed + ep)
        except NotImplementedError:
            expert = None
        obs, _ = env.reset(seed=seed + ep)
        while done < steps:
            a = expert(obs, env) if expert is not None else rng.uniform(lo, hi).astype(np.float32)
            obs, _, term, trunc, _ = env.step(a)
            done += 1
            if term or trunc:
                break
        env.close()
        ep += 1
    dt = time.perf_counter() - t0
    if hasattr(suite, "close"):
        suite.close()
    return steps / dt


def recipe_suite(recipe: Any) -> tuple[Any, list[str]]:
    """The recipe's simulated suite (built with its ``data.suite_args``) and its task list."""
    from eval.sim.suites import parse_suite_args
    from eval.sim.suites import make_suite

    suite = make_suite(recipe.data.suite, **parse_suite_args(recipe.data.suite_args))
    return suite, list(recipe.data.tasks) or suite.task_names()


def head_to_head(policies: dict[str, str], recipe: Any, episodes: int, seed: int) -> dict[str, Any]:
    """EBT vs diffusion (DDPM and DDIM) on the recipe's suite: success, ms and nfe per chunk."""
    import numpy as np

    from recipes.studies.common import load_policy
    from recipes.studies.head_to_head import evaluate_variant

    suite, tasks = recipe_suite(recipe)
    out: dict[str, Any] = {"suite": recipe.data.suite, "tasks": tasks, "episodes_per_task": episodes, "per_task": {}}
    loaded = {k: load_policy(v) for k, v in policies.items()}
    for key, pol_name, ov in VARIANTS:
        if pol_name not in loaded:
            continue
        r = evaluate_variant(loaded[pol_name], suite, tasks, episodes, seed, ov)
        out[f"{key}_success"] = float(np.mean(list(r["per_task"].values())))
        out[f"{key}_chunk_ms"] = r["chunk_ms"]
        out[f"{key}_nfe"] = r["nfe"]
        out["per_task"][key] = r["per_task"]
    if "ebt_chunk_ms" in out and "diffusion_chunk_ms" in out:
        out["chunk_ms_ratio"] = out["ebt_chunk_ms"] / out["diffusion_chunk_ms"]
    if hasattr(suite, "close"):
        suite.close()
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    import torch

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--suites", nargs="*", default=["reach2d", "reach2d_detour", "pusht", "metaworld", "libero"])
    p.add_argument("--env-steps", type=int, default=300)
    p.add_argument("--policies", nargs="*", default=None, help="ebt=DIR diffusion=DIR (saved policies)")
    p.add_argument("--recipe", default="default", help="the recipe whose suite, tasks and budget the head-to-head uses")
    p.add_argument("--train-steps", type=int, default=None, help="without --policies: steps per head (default: the recipe's)")
    p.add_argument("--demos", type=int, default=None, help="without --policies: demos per task (default: the recipe's)")
    p.add_argument("--episodes", type=int, default=20, help="evaluation episodes per task")
    p.add_argument("--seed", type=int, default=70_000)
    p.add_argument("--work-dir", default="runs/bench/sim_eval")
    p.add_argument("--out", default=None)
    a = p.parse_args(argv)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))

    from recipes.configs import named_recipe

    try:
        cfg = named_recipe(a.recipe, a.demos)
    except ValueError as e:
        raise SystemExit(f"error: {e}") from None
    result: dict[str, Any] = {"env_steps_per_s": {}, "env_errors": {}}
    for s in a.suites:
        try:
            steps = a.env_steps if s != "libero" else max(10, a.env_steps // 30)  # ~0.3 s per LIBERO step on CPU
            result["env_steps_per_s"][s] = env_throughput(s, steps)
        except Exception as e:  # noqa: BLE001 - e.g. the LIBERO venv is not installed
            result["env_errors"][s] = f"{type(e).__name__}: {e}"

    if a.policies:
        pols = dict(x.split("=", 1) for x in a.policies)
    else:
        from recipes.studies.head_to_head import train_head

        steps = a.train_steps or cfg.optim.steps
        work = Path(a.work_dir)
        pols = {}
        for head in HEADS:
            run_dir = work / f"{a.recipe}_{head}_steps{steps}_demos{cfg.data.episodes_per_task}"
            t = train_head(cfg, cfg.data.suite, head, steps, run_dir)
            pols[head] = t["policy_dir"]
            result[f"{head}_train_s"] = t["train_seconds"]
            result[f"{head}_train_steps"] = t["train_steps"]
    result["recipe"] = a.recipe
    result["policies"] = pols
    result.update(head_to_head(pols, cfg, a.episodes, a.seed))

    print(f"{'suite':<16}{'env steps/s':>12}")
    for s, v in result["env_steps_per_s"].items():
        print(f"{s:<16}{v:>12.1f}")
    for s, e in result["env_errors"].items():
        print(f"{s:<16}{'unavailable':>12}  ({e[:80]})")
    print(f"\nhead-to-head: recipe {a.recipe}, suite {result['suite']}, {a.episodes} episodes x {len(result['tasks'])} tasks")
    print(f"{'head':<16}{'success':>9}{'ms/chunk':>10}{'nfe':>6}")
    for k, _, _ in VARIANTS:
        if f"{k}_success" in result:
            print(f"{k:<16}{result[k + '_success']:>9.3f}{result[k + '_chunk_ms']:>10.1f}{result[k + '_nfe']:>6.0f}")
    if a.out:
        from vla_ebt.config_io import atomic_write_text

        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(a.out, json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
