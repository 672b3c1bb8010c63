"""Study 4, recovery: inject failures mid-episode and measure how often each head still succeeds, from
behaviour cloning alone (no retry demonstrations), pooled over training seeds (issue 13).

    # the final policies of a comparison grid, on its final evaluation seeds, tasks and suite arguments
    python -m recipes.studies.recovery --compare runs/compare --suite metaworld --protocol frozen \\
        --heads ebt flow diffusion regression --episodes 20 --out runs/studies/recovery_mw
    # policy folders, one per training seed (one folder = one seed)
    python -m recipes.studies.recovery --policies ebt=DIR1,DIR2,DIR3 diffusion=DIR1,DIR2,DIR3 \\
        --suite reach2d --episodes 30 --perturbations burst:start=4,length=6 displace:at=8 \\
        --out runs/studies/recovery

Perturbations (:mod:`eval.sim.perturb`): ``burst`` (random actions for a few steps), ``displace``
(the task object / target moves after partial progress; without ``scale`` by the suite's own default
distance), ``gripper_open`` (Meta-World: the gripper is forced open). Defaults: a burst of 6 random
actions from step 4 and a displacement at step 8 (a planning step of receding horizon 4), plus on
Meta-World the gripper forced open for steps 30-39. Every policy of every head runs the same seeded
episodes (``--eval-seeds`` x ``--episodes`` per task; with ``--compare`` by default the grid's final
evaluation seeds) clean and under each perturbation, and the same episode gets the same perturbation
under every policy (the perturbation RNG is seeded from the env seed). Every head plans under its
first preset (``--preset LABEL=NAME`` for another) with warm start off, as in the comparison's
evaluation.

Per head: success clean and under each perturbation, pooled over training seeds (mean over seeds of
each seed's success; env errors count as failures) with a 95% bootstrap interval over training seeds
x episodes, and the **recovery ratio** = success under the perturbation / clean success with its
interval: clean and perturbed ran the same episodes, so each bootstrap replicate draws the seeds and
then the episodes within task once for both and takes the ratio of the two means
(``recipes.studies.protocol_policies.ratio_estimate``; replicates with no clean success are left out
and counted). Beside it, the ratio over the episode pairs the perturbation **reached** (clean and
perturbed episode both still running at its onset step, ``eval.sim.perturb.onset_step``): episodes
that end on success before the onset were never perturbed and pull the all-episode ratio toward 1.
Episodes are cached per policy and condition under ``OUT/episodes/`` (a rerun with the
same settings reuses them; labels can run in separate processes sharing ``--out``). Writes
``recovery.json`` (configuration, policies with their training seeds, eval seeds, git commit, rows),
``recovery.md`` (generated from it) and ``recovery.png``; ``--publish`` copies them beside the
comparison (``docs/results/compare/<suite>/<protocol>/studies/``) and regenerates the results.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from eval.sim.perturb import PerturbedSuite, make_perturbation, onset_step
from recipes.compare.stats import BOOT_SEED, N_BOOT

from .common import load_policy, predict_overrides, pyplot, save_figure
from .protocol_policies import (CpuTally, write_study_outputs, add_policy_arguments, add_publish_arguments, check_same_head,
                                timed_cached_episodes,
                                compare_success, episode_arrays, estimate_cell, policy_settings, publish_destination, publish_study,
                                ratio_estimate, resolve_policy_arguments, run_info, seed_tag, slug, success_estimate)

__all__ = ["SCHEMA", "CLEAN", "DEFAULT_PERTURBATIONS", "default_perturbations", "run_condition", "analyse",
           "run_recovery", "render_markdown", "plot", "build_parser", "main"]

SCHEMA = "vla_ebt.recovery/3"  # /3: rows add the ratio over the reached episodes
CLEAN = "none"
DEFAULT_PERTURBATIONS = ("burst:start=4,length=6", "displace:at=8")
#: extra default perturbations of a suite
SUITE_PERTURBATIONS = {"metaworld": ("gripper_open:start=30,length=10",)}


def default_perturbations(suite: str) -> list[str]:
    return [*DEFAULT_PERTURBATIONS, *SUITE_PERTURBATIONS.get(suite, ())]


def run_condition(policy: Any, suite: Any, tasks: Sequence[str], eval_seeds: Sequence[int], episodes: int,
                  condition: str, overrides: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """One policy's episodes clean (``CLEAN``) or under one perturbation spec, warm start off, planned
    with ``overrides``; one record per episode (task, eval seed, index, env seed, success, error, length)."""
    from eval.sim.rollout import EvalConfig, evaluate
    from recipes.compare.evaluation import warm_start

    seeds = [int(s) for s in eval_seeds]
    target = suite if condition == CLEAN else PerturbedSuite(suite, [make_perturbation(condition)], tag=condition)
    cfg = EvalConfig(tasks=list(tasks), episodes_per_task=int(episodes), seed=seeds[0], seeds=seeds, num_workers=0)
    with warm_start(policy, False), predict_overrides(policy, **(overrides or {})):
        rep = evaluate(policy, target, cfg)
    return [{"task": e.task, "eval_seed": int(e.base_seed if e.base_seed is not None else seeds[0]),
             "index": int(e.index), "env_seed": int(e.seed), "success": bool(e.success), "error": e.error,
             "length": int(e.length)} for e in rep.episodes]


def analyse(labels: dict[str, dict[str, Any]], tasks: Sequence[str], perturbations: Sequence[str],
            n_boot: int = N_BOOT) -> list[dict[str, Any]]:
    """Rows per label: clean, then each perturbation (success with its interval; perturbed rows add the
    recovery ratio with its interval). ``labels[label]`` = {"head", "seeds": [{condition: [record]}]}."""
    rows = []
    for label, info in labels.items():
        clean = [s[CLEAN] for s in info["seeds"]]
        for cond in (CLEAN, *perturbations):
            eps = [s[cond] for s in info["seeds"]]
            s = success_estimate(eps, tasks, n_boot)
            row = {"label": label, "head": info["head"], "perturbation": cond, "success": s["value"],
                   "ci_low": s["lo"], "ci_high": s["hi"], "per_seed": s["per_seed"], "seeds": s["n_seeds"],
                   "episodes": s["episodes"], "errors": s["errors"],
                   "per_task": {t: float(np.mean([np.mean([bool(e["success"]) and not e.get("error")
                                                           for e in x if e["task"] == t]) for x in eps]))
                                for t in tasks}}
            if cond != CLEAN:
                r = ratio_estimate(clean, eps, tasks, n_boot)
                row.update({"recovery": r["value"], "recovery_lo": r["lo"], "recovery_hi": r["hi"],
                            "recovery_undefined_replicates": r["undefined_replicates"]})
                row.update(_reached_ratio(clean, eps, tasks, onset_step(cond), n_boot))
            rows.append(row)
    return rows


def _reached_ratio(clean: Sequence[Sequence[dict[str, Any]]], perturbed: Sequence[Sequence[dict[str, Any]]],
                   tasks: Sequence[str], onset: int, n_boot: int) -> dict[str, Any]:
    """The recovery ratio over the episode pairs the perturbation reached: both the clean and the
    perturbed episode still running at step ``onset`` (an episode that ended before it, e.g. on an early
    success, was never perturbed, and counting it pulls the ratio toward 1). Both lengths are decided
    before the onset, so the selection does not look at the perturbation's effect."""
    kept_c, kept_p = [], []
    for c, p in zip(clean, perturbed):
        pairs = [(a, b) for a, b in zip(c, p) if int(a["length"]) > onset and int(b["length"]) > onset]
        kept_c.append([a for a, _ in pairs])
        kept_p.append([b for _, b in pairs])
    r = ratio_estimate(kept_c, kept_p, tasks, n_boot)
    return {"onset": int(onset), "reached": int(sum(len(x) for x in kept_c)),
            "reached_clean_success": (float(np.mean([episode_arrays(x, "success", tasks)[0].mean() for x in kept_c if x]))
                                      if any(kept_c) else None),
            "recovery_reached": r["value"], "recovery_reached_lo": r["lo"], "recovery_reached_hi": r["hi"]}


def run_recovery(policies: dict[str, Sequence[str] | str], suite: Any, tasks: Sequence[str],
                 eval_seeds: Sequence[int], episodes: int, out: str | Path, *,
                 perturbations: Sequence[str] = DEFAULT_PERTURBATIONS, presets: dict[str, str] | None = None,
                 n_boot: int = N_BOOT, meta: dict[str, Any] | None = None, load: Callable[[str], Any] = load_policy,
                 log: Callable[[str], None] | None = print) -> dict[str, Any]:
    """Every policy's episodes clean and under each perturbation (cached under ``out/episodes``),
    pooled per label; writes ``recovery.{json,md,png}`` and returns the JSON content.
    ``policies``: {label: [policy dir per training seed]} (a single dir: one seed)."""

    from recipes.compare.artifacts import git_commit

    out = Path(out)
    policies = {k: [v] if isinstance(v, (str, Path)) else list(v) for k, v in policies.items()}
    presets = presets or {}
    unknown = sorted(set(presets) - set(policies))
    if unknown:
        raise ValueError(f"--preset for unknown label(s) {unknown}; labels: {sorted(policies)}")
    if CLEAN in perturbations:
        raise ValueError(f"{CLEAN!r} is the clean condition, always run; not a perturbation")
    for spec in perturbations:
        make_perturbation(spec)  # a bad spec fails now, not after hours of episodes
    meta = dict(meta or {})
    seeds = [int(s) for s in eval_seeds]
    say = log or (lambda _msg: None)
    labels: dict[str, dict[str, Any]] = {}
    pol_meta: dict[str, dict[str, Any]] = {}
    cpu = CpuTally()
    for label, dirs in policies.items():
        seeds_info, per_seed, head, settings = [], [], None, None
        for i, d in enumerate(dirs):
            policy = load(str(d))
            if head is None:
                first, head = policy, policy.cfg.head
                settings = policy_settings(policy, presets.get(label), final_eval=False)
            else:
                check_same_head(label, first, policy, d)
            info = run_info(d)
            by_cond = {}
            for cond in (CLEAN, *perturbations):
                key = {"policy": str(Path(d).resolve()), "condition": cond, "suite": meta.get("suite"),
                       "suite_args": meta.get("suite_args"), "tasks": list(tasks), "eval_seeds": seeds,
                       "episodes": int(episodes), "overrides": settings["overrides"], "warm_start": False}
                path = out / "episodes" / slug(label) / seed_tag(i, info) / f"{slug(cond)}.json"
                eps, hit, cpu_s = timed_cached_episodes(path, key, lambda p=policy: run_condition(
                    p, suite, tasks, seeds, episodes, cond, settings["overrides"]))
                cpu.add(cpu_s)
                by_cond[cond] = eps
                say(f"[recovery] {label} seed {info.get('train_seed')} {cond}: " + (
                    f"{len(eps)} episodes (cached)" if hit else
                    f"success {np.mean([e['success'] for e in eps]):.2f} over {len(eps)} episodes"))
            per_seed.append(by_cond)
            seeds_info.append({"dir": str(d), **{k: v for k, v in info.items() if k != "outcomes_by_preset"},
                               "compare_outcomes": info.get("outcomes_by_preset")})
            del policy
        labels[label] = {"head": head, "seeds": per_seed}
        pol_meta[label] = {"head": head, "preset": settings["preset"], "overrides": settings["overrides"],
                           "seeds": [{k: v for k, v in s.items() if k != "compare_outcomes"} for s in seeds_info],
                           "compare_success": compare_success(seeds_info, tasks, seeds, episodes, settings["preset"])}
    result = {
        "schema": SCHEMA,
        "meta": {**meta, "tasks": list(tasks), "eval_seeds": seeds, "episodes_per_task": int(episodes),
                 "perturbations": list(perturbations), "warm_start": False, "n_boot": int(n_boot),
                 "boot_seed": BOOT_SEED, "level": 0.95, "git_commit": git_commit(),
                 "episodes_cache": str(out / "episodes"), **cpu.meta()},
        "policies": pol_meta,
        "rows": analyse(labels, tasks, perturbations, n_boot),
    }
    return write_study_outputs(out, "recovery", result, render_markdown, plot, log)


def render_markdown(result: dict[str, Any]) -> str:
    """``recovery.md`` from the ``recovery.json`` content (nothing typed by hand)."""
    m = result["meta"]
    lines = ["# Recovery from injected failures", "",
             f"Generated by `python -m recipes.studies.recovery` from `recovery.json` (git {m['git_commit']}).",
             f"Suite {m.get('suite')} (args {m.get('suite_args') or 'none'}), tasks {', '.join(m['tasks'])}; eval seeds "
             f"{m['eval_seeds']} x {m['episodes_per_task']} episode(s) per task, the same clean and perturbed for every "
             f"policy; warm start off.",
             f"Success: mean over training seeds [95% bootstrap interval over training seeds x episodes, {m['n_boot']} "
             f"replicates]; env errors count as failures. Recovery = success under the perturbation / clean success, "
             f"the ratio of the two pooled means, its interval from the same replicates drawing the same episodes for "
             f"both.", "",
             "| label | head | preset, knobs | training seeds | comparison's own success (same episodes) |",
             "|---|---|---|---|---|"]
    for label, p in result["policies"].items():
        knobs = ", ".join(f"{k}={v}" for k, v in p["overrides"].items()) or "-"
        cs = p.get("compare_success")
        lines.append(f"| {label} | {p['head']} | {p['preset'] or '-'}: {knobs} | "
                     f"{', '.join(str(s.get('train_seed')) for s in p['seeds'])} | {'-' if cs is None else f'{cs:.2f}'} |")
    lines += ["", "Reached: the episode pairs (clean, perturbed) both still running at the perturbation's onset step; "
              "an episode that ended before it was never perturbed. Its clean success is that of those pairs.", "",
              "| label | perturbation | success | per seed | recovery (perturbed / clean) | onset step: reached "
              "episodes, their clean success | recovery of the reached | episodes (errors) |",
              "|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        per = ", ".join("-" if x is None else f"{x:.2f}" for x in r["per_seed"])
        rec = "-" if r["perturbation"] == CLEAN else estimate_cell(
            {"value": r.get("recovery"), "lo": r.get("recovery_lo"), "hi": r.get("recovery_hi")})
        reached = "-" if "reached" not in r else (
            f"{r['onset']}: {r['reached']}, " + ("-" if r["reached_clean_success"] is None else f"{r['reached_clean_success']:.2f}"))
        rec_r = "-" if "reached" not in r else estimate_cell(
            {"value": r["recovery_reached"], "lo": r["recovery_reached_lo"], "hi": r["recovery_reached_hi"]})
        succ = estimate_cell({"value": r["success"], "lo": r["ci_low"], "hi": r["ci_high"]})
        lines.append(f"| {r['label']} | {r['perturbation']} | {succ} | {per} | {rec} | {reached} | {rec_r} | "
                     f"{r['episodes']} ({r['errors']}) |")
    return "\n".join(lines) + "\n"


def plot(result: dict[str, Any], path: Path) -> Path:
    """Left: success per condition, one bar per label, with intervals; right: the recovery ratio per
    perturbation with its interval (1 = no loss)."""
    plt = pyplot()
    rows = result["rows"]
    labels = list(dict.fromkeys(r["label"] for r in rows)) or ["-"]
    conds = list(dict.fromkeys(r["perturbation"] for r in rows)) or [CLEAN]
    perts = [c for c in conds if c != CLEAN]
    w = 0.8 / max(1, len(labels))
    fig, axes = plt.subplots(1, 2, figsize=(2.5 + 1.6 * len(conds) + 1.4 * max(1, len(perts)), 3.8), squeeze=False)
    for panel, (ax, cs, key, lo, hi, ylabel) in enumerate(
            ((axes[0, 0], conds, "success", "ci_low", "ci_high", "success rate"),
             (axes[0, 1], perts, "recovery", "recovery_lo", "recovery_hi", "recovery (perturbed / clean)"))):
        for i, label in enumerate(labels):
            rs = {r["perturbation"]: r for r in rows if r["label"] == label}
            x = np.arange(len(cs)) + i * w

            def val(c: str, k: str) -> float:
                v = rs.get(c, {}).get(k)
                return np.nan if v is None else float(v)

            y = np.array([val(c, key) for c in cs])
            err = np.stack([y - np.array([val(c, lo) for c in cs]), np.array([val(c, hi) for c in cs]) - y])
            ax.bar(x, np.nan_to_num(y), w, yerr=np.clip(np.nan_to_num(err), 0, None), capsize=2, label=label)
        ax.set_xticks(np.arange(len(cs)) + w * (len(labels) - 1) / 2, cs, rotation=15, fontsize=7)
        ax.set_ylabel(ylabel)
        if panel == 0:
            ax.set_ylim(0, 1.05)
            ax.legend(fontsize=7)
        else:
            ax.axhline(1.0, color="grey", lw=0.8, ls="--")
    fig.suptitle("success under injected failures (pooled over training seeds)", fontsize=9)
    return save_figure(fig, path)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m recipes.studies.recovery", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_policy_arguments(p, episodes=30, default_seed=40_000)
    p.add_argument("--perturbations", nargs="+", default=None,
                   help=f"eval.sim.perturb specs (default: {' '.join(DEFAULT_PERTURBATIONS)}, plus on Meta-World "
                        f"{' '.join(SUITE_PERTURBATIONS['metaworld'])})")
    p.add_argument("--out", required=True)
    add_publish_arguments(p)
    return p


def main(argv: list[str] | None = None) -> dict[str, Any]:
    import torch

    a = build_parser().parse_args(argv)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    inp = resolve_policy_arguments(a, default_seed=40_000)
    dest = publish_destination(a, inp)
    suite = inp.make_suite()
    meta = {**inp.meta(), "argv": sys.argv[1:] if argv is None else list(argv)}
    perturbations = a.perturbations if a.perturbations is not None else default_perturbations(inp.suite)
    result = run_recovery(inp.policies, suite, inp.tasks or suite.task_names(), inp.eval_seeds, inp.episodes, a.out,
                          perturbations=perturbations, presets=inp.presets, n_boot=a.n_boot, meta=meta)
    if dest is not None:
        publish_study("recovery", a.out, dest)
    return result


if __name__ == "__main__":
    main()
