"""Study 3, uncertainty: does a per-chunk signal, read **before the outcome**, predict that the
episode will fail (AUROC within task), and does it tell shifted inputs from in-distribution ones?
EBT's energy is set against the uncertainty a diffusion / flow head gives for free (the spread of N
samples) and against EBT's own N-sample spread.

    python -m recipes.studies.uncertainty --policies ebt=DIR1,DIR2,DIR3 flow=DIR1,DIR2,DIR3 \\
        diffusion=DIR1,DIR2,DIR3 --suite reach2d --episodes 40 --out runs/studies/uncertainty
    # the final policies of a comparison grid (OUT/<suite>/<protocol>/final/<head>/<hparams>/seed<N>)
    python -m recipes.studies.uncertainty --compare runs/compare --suite metaworld --protocol frozen \\
        --heads ebt flow diffusion --out runs/studies/uncertainty_mw

**Policies.** Each label (``LABEL=DIR[,DIR...]``) holds the policies of one head trained with
different seeds (e.g. the ``policy/`` folders of a comparison grid's final checkpoints, which
``--compare OUT --suite S --protocol P`` finds: the last checkpoint of every finished final run).
Every policy runs the same closed-loop episodes (``--eval-seeds`` x ``--episodes`` per task; with
``--compare`` by default the grid's final evaluation seeds) under the head's first preset
(``capabilities.presets``, ``--preset LABEL=NAME`` for another), with **warm start off**
(``recipes.compare.evaluation.warm_start``): every chunk is planned from scratch, so a late chunk is
not a refinement of the earlier ones.

**Signals per chunk** (higher = predicted failure / shift), with the env step the chunk was planned at:

* ``energy`` (heads that report energy): the returned chunk's own energy (``final_eval=True`` where
  the head declares that knob: one more evaluation at the returned chunk; the actions are unchanged).
* ``small_drop`` (heads that report energy): minus the energy drop over the minimization (energy at
  the start of the chain - final energy).
* ``sample_spread`` (every head whose sampler is stochastic): N extra samples drawn from the same
  observation (``--samples``; one batched ``predict`` of the context repeated N times, same knobs,
  cold, one chain each, under a forked RNG: the executed chunks do not change): the per-dimension
  std over the N chunks, averaged over the horizon and the suite's action dimensions. For EBT this
  is its own N-sample spread (N independent chains from noise). A head whose N samples are always
  identical (regression) has a deterministic sampler and gets no spread row.
* ``energy_spread`` (heads that report energy): the std of the N extra chains' final energies.

**Failure prediction** (in-distribution episodes; positive = the episode fails; episodes whose env
crashed are left out), one column per score:

* ``step k`` (``--steps``, default 0 8 16 32): the chunk planned at env step k (the first chunk
  planned at or after k), among the episodes still running then; step 0 is the first chunk of
  every episode. Each is a signal available before the outcome.
* ``episode mean (confounded by length)``: the mean over all of an episode's chunks, the score of the
  earlier version of this study, kept for comparison only. Episodes end on success, so failed
  episodes run longer and have more chunks; the ``episode length (reference)`` row shows how much
  the episode length alone separates the outcomes.

AUROC is computed within each (training seed, task) that has both outcomes and averaged over them
(each policy's signal has its own scale; tasks differ in difficulty), pooling the training seeds of
a label into one number. Interval: 95% bootstrap over training seeds x episodes
(``recipes.compare.stats.bootstrap``: seeds resampled, then episodes within each task), 2,000
replicates, RNG seed 0; replicates where no (seed, task) has both outcomes are left out and counted.

**Shift detection** per ``--shifts`` entry (``heldout`` = held-out instruction paraphrases, else an
``eval.sim.perturb`` spec): AUROC of shifted (positive) vs in-distribution episodes of the same
seeds by each signal of the first chunk (step 0), within (training seed, task), with the same
bootstrap (episodes resampled within task x condition). A perturbation that starts later
(``displace`` ``at``, ``burst`` / ``gripper_open`` ``start``) cannot show at step 0 (the inputs are
identical until then), so it gets a second column at its onset step (the first chunk planned at or
after it, among episodes of both conditions still running). Default shifts: held-out paraphrases,
image noise (sigma 25), camera shift (6 px), the task object displaced at step 8 by the suite's
default scale.

Writes ``uncertainty.json`` (every number with the configuration, the policies and their training
seeds, the evaluation seeds and the git commit), ``uncertainty.md`` (generated from the JSON) and
``uncertainty.png`` (failure AUROC vs step). Episodes are cached per policy and condition under
``OUT/episodes/`` (a rerun with the same settings reuses them; delete the folder to start over), so
labels can also run in separate processes with the same ``--out`` (e.g. ``--heads ebt flow`` in one,
``--heads diffusion`` in another); a last run with every label reuses their episodes and writes the
joint tables. ``--publish`` copies the three files beside the comparison
(``docs/results/compare/<suite>/<protocol>/studies/``; publish from that last, joint run) and
regenerates the results, whose README section then summarises them.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from eval.sim.perturb import PerturbedSuite, make_perturbation
from recipes.compare.evaluation import warm_start
from recipes.compare.stats import BOOT_SEED, N_BOOT, bootstrap

from .common import auroc, load_policy, predict_overrides, pyplot, save_figure
from .episodes import run_study_episodes
from .protocol_policies import (CpuTally, write_study_outputs, add_policy_arguments, add_publish_arguments, check_same_head,
                                timed_cached_episodes,
                                compare_success, find_compare_policies, parse_policies, policy_settings,
                                publish_destination, publish_study, resolve_policy_arguments, run_info, seed_tag, slug)

_run_info = run_info  # the shared helpers live in recipes.studies.protocol_policies (one source of truth)

__all__ = ["SIGNALS", "SCHEMA", "DEFAULT_STEPS", "DEFAULT_SHIFTS", "IN_DIST", "MEAN_SCORE", "LENGTH_SIGNAL",
           "parse_policies", "find_compare_policies", "policy_settings", "run_policy_episodes", "signals_of",
           "chunk_score", "episode_mean", "failure_estimate", "shift_estimate", "shift_onset", "analyse",
           "render_markdown", "run_uncertainty", "build_parser", "main"]

SCHEMA = "vla_ebt.uncertainty/2"
IN_DIST = "in-distribution"
MEAN_SCORE = "episode mean (confounded by length)"
LENGTH_SIGNAL = "episode length (reference)"
DEFAULT_STEPS = (0, 8, 16, 32)
DEFAULT_SHIFTS = ("heldout", "noise:sigma=25", "shift:dy=6,dx=6", "displace:at=8")  # displace: the suite's own scale
#: signal -> what it is (higher = predicted failure / shift)
SIGNALS = {
    "energy": "the returned chunk's own energy (final_eval)",
    "small_drop": "minus the energy drop over the minimization",
    "sample_spread": "N extra samples from the same observation: mean per-dimension std over the N chunks",
    "energy_spread": "std of the final energies of the N extra chains",
}
_ENERGY_SIGNALS = ("energy", "small_drop", "energy_spread")


# ------------------------------------------------------------------------------------------ episodes
def _condition_suite(suite: Any, condition: str) -> tuple[Any, str]:
    if condition in (IN_DIST, "heldout"):
        return suite, ("heldout" if condition == "heldout" else "train")
    return PerturbedSuite(suite, [make_perturbation(condition)], tag=condition), "train"


def run_policy_episodes(policy: Any, suite: Any, tasks: Sequence[str], eval_seeds: Sequence[int], episodes: int,
                        condition: str, overrides: dict[str, Any], samples: int) -> list[dict[str, Any]]:
    """One policy's episodes under one condition (``IN_DIST``, ``"heldout"`` or a perturbation spec),
    warm start off, planned with ``overrides``; one record per episode: task, eval seed, index, env
    seed, success, error, length, ``acted`` (control steps) and ``chunks`` ({"step": [...], signal:
    [...]} in planning order)."""
    target, split = _condition_suite(suite, condition)
    seeds = [int(s) for s in eval_seeds]
    reports_energy = bool(policy.head.capabilities.reports_energy)
    with warm_start(policy, False), predict_overrides(policy, **overrides):
        res = run_study_episodes(policy, target, list(tasks), int(episodes), seeds[0], seeds=seeds, split=split,
                                 spread_candidates=samples, spread_dims=int(suite.action_dim))
    out = []
    for ep, sig in zip(res.episodes, res.signals):
        chunks: dict[str, list[float]] = {"step": [int(s) for s in sig.plan_step]}
        if samples > 1:
            chunks["sample_spread"] = list(sig.sample_spread)
        if reports_energy:
            chunks["energy"] = list(sig.energy)
            chunks["small_drop"] = [-float(d) for d in sig.energy_drop]
            if samples > 1:
                chunks["energy_spread"] = list(sig.candidate_spread)
        out.append({"task": ep.task, "eval_seed": int(ep.base_seed if ep.base_seed is not None else seeds[0]),
                    "index": int(ep.index), "env_seed": int(ep.seed), "success": bool(ep.success),
                    "error": ep.error, "length": int(ep.length), "acted": int(sig.acted), "chunks": chunks})
    return out


def signals_of(head_caps: Any, episodes: Sequence[dict[str, Any]]) -> tuple[list[str], dict[str, str]]:
    """(signals a label gets rows for, {signal: why not} for the others), from the head's
    capabilities and its recorded in-distribution episodes (a spread that is 0 on every chunk means a
    deterministic sampler)."""
    have, why = [], {}
    for s in SIGNALS:
        if s in _ENERGY_SIGNALS and not head_caps.reports_energy:
            why[s] = "the head reports no energy"
            continue
        vals = [v for ep in episodes for v in ep["chunks"].get(s, [])]
        if not vals:
            why[s] = "not recorded (--samples < 2)" if s.endswith("spread") else "not recorded"
        elif s == "sample_spread" and all(v == 0.0 for v in vals):
            why[s] = "deterministic sampler (N samples identical)"
        else:
            have.append(s)
    return have, why


# ------------------------------------------------------------------------------------------ scores
def chunk_score(ep: dict[str, Any], signal: str, step: int) -> float | None:
    """The signal of the chunk planned at env step ``step`` (the first planned at or after it), or
    None when the episode planned no chunk from that step on (it had ended)."""
    vals = ep["chunks"].get(signal)
    if not vals:
        return None
    for s, v in zip(ep["chunks"]["step"], vals):
        if s >= step:
            return float(v)
    return None


def episode_mean(ep: dict[str, Any], signal: str) -> float | None:
    """Mean of the signal over all of the episode's chunks (confounded by the episode's length)."""
    if signal == LENGTH_SIGNAL:
        return float(ep["length"])
    vals = [v for v in ep["chunks"].get(signal, []) if v is not None and math.isfinite(v)]
    return float(np.mean(vals)) if vals else None


def _within_task_auroc(per_seed: list[np.ndarray]) -> float:
    """Mean AUROC over the (seed, task) groups with both classes; rows: score, label, task id."""
    vals = []
    for x in per_seed:
        for t in np.unique(x[2]):
            m = x[2] == t
            a = auroc(x[0][m], x[1][m] > 0.5)
            if np.isfinite(a):
                vals.append(a)
    return float(np.mean(vals)) if vals else float("nan")


def _estimate(per_seed: list[np.ndarray], strata: list[np.ndarray], n_boot: int) -> dict[str, Any]:
    """Within-task AUROC of packed (3, E) per-seed arrays with its bootstrap interval."""
    keep = [i for i, x in enumerate(per_seed) if x.shape[-1] > 0]
    per_seed, strata = [per_seed[i] for i in keep], [strata[i] for i in keep]
    n = int(sum(x.shape[-1] for x in per_seed))
    pos = int(sum((x[1] > 0.5).sum() for x in per_seed))
    groups = sum(1 for x in per_seed for t in np.unique(x[2])
                 if 0 < (x[1][x[2] == t] > 0.5).sum() < (x[2] == t).sum())
    base = {"n_seeds": len(per_seed), "episodes": n, "positives": pos, "groups": groups}
    if not per_seed or groups == 0:
        return {"value": None, "lo": None, "hi": None, **base, "undefined_replicates": None}
    est = bootstrap(per_seed, strata, _within_task_auroc, n_boot=n_boot)
    return {"value": est.value, "lo": est.lo, "hi": est.hi, **base, "undefined_replicates": est.undefined}


def _score(ep: dict[str, Any], signal: str, step: int | None) -> float | None:
    return episode_mean(ep, signal) if step is None else chunk_score(ep, signal, step)


def _usable(episodes: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in episodes if not e.get("error")]


def failure_estimate(per_seed: Sequence[Sequence[dict[str, Any]]], signal: str, step: int | None,
                     tasks: Sequence[str], n_boot: int = N_BOOT) -> dict[str, Any]:
    """AUROC of ``signal`` for later failure, within (training seed, task), with its interval.
    ``per_seed``: the in-distribution episode records of each training seed; ``step``: the chunk
    planned at that step (episodes still running then), None: the episode mean. Episodes with an env
    error are left out."""
    tid = {t: i for i, t in enumerate(tasks)}
    data, strata = [], []
    for eps in per_seed:
        rows = [(s, not e["success"], tid[e["task"]]) for e in _usable(eps)
                if (s := _score(e, signal, step)) is not None and math.isfinite(s)]
        x = np.array(rows, np.float64).T if rows else np.zeros((3, 0))
        data.append(x)
        strata.append(x[2])
    return _estimate(data, strata, n_boot)


def shift_estimate(in_dist: Sequence[Sequence[dict[str, Any]]], shifted: Sequence[Sequence[dict[str, Any]]],
                   signal: str, step: int, tasks: Sequence[str], n_boot: int = N_BOOT) -> dict[str, Any]:
    """AUROC of ``signal`` (chunk planned at ``step``) for shifted (positive) vs in-distribution
    episodes, within (training seed, task), with its interval (episodes resampled within task x
    condition). ``in_dist[i]`` / ``shifted[i]``: the records of training seed i."""
    tid = {t: i for i, t in enumerate(tasks)}
    data, strata = [], []
    for base, sh in zip(in_dist, shifted):
        rows = [(s, lab, tid[e["task"]]) for lab, eps in ((0, base), (1, sh)) for e in _usable(eps)
                if (s := chunk_score(e, signal, step)) is not None and math.isfinite(s)]
        x = np.array(rows, np.float64).T if rows else np.zeros((3, 0))
        data.append(x)
        strata.append(x[2] * 2 + x[1])
    return _estimate(data, strata, n_boot)


def shift_onset(spec: str) -> int:
    """The first env step whose observation differs from in-distribution: 0 unless the perturbation
    starts later (``displace`` ``at``, ``burst`` / ``gripper_open`` ``start`` = k). Those act inside
    the env step k (the object moves / the action is replaced during it), so the observation of step k
    that a chunk planned at k sees is still unchanged: the onset is k + 1."""
    name, _, args = spec.partition(":")
    kw = dict(part.split("=", 1) for part in filter(None, args.split(",")) if "=" in part)
    key = {"displace": "at", "burst": "start", "gripper_open": "start"}.get(name)
    return int(float(kw.get(key, 0))) + 1 if key else 0


def _success(eps: Sequence[dict[str, Any]]) -> float:
    return float(np.mean([e["success"] for e in eps])) if eps else float("nan")


def analyse(labels: dict[str, dict[str, Any]], tasks: Sequence[str], steps: Sequence[int], shifts: Sequence[str],
            n_boot: int = N_BOOT) -> dict[str, Any]:
    """Failure, shift and success tables from the recorded episodes.

    ``labels[label]`` = {"head", "caps" (HeadCapabilities), "seeds": [{"episodes": {condition: [record]}}, ...]}.
    """
    failure, shift, success, no_rows = [], [], [], {}
    for label, info in labels.items():
        seeds = info["seeds"]
        base = [s["episodes"][IN_DIST] for s in seeds]
        sigs, why = signals_of(info["caps"], [e for eps in base for e in eps])
        no_rows[label] = why
        for cond in (IN_DIST, *shifts):
            eps = [s["episodes"][cond] for s in seeds]
            success.append({"label": label, "head": info["head"], "condition": cond,
                            "success": float(np.mean([_success(x) for x in eps])),
                            "per_seed": [_success(x) for x in eps],
                            "episodes": sum(len(x) for x in eps), "errors": sum(1 for x in eps for e in x if e.get("error"))})
        for sig in sigs:
            for k in steps:
                failure.append({"label": label, "head": info["head"], "signal": sig, "score": f"step {k}", "step": int(k),
                                **failure_estimate(base, sig, int(k), tasks, n_boot)})
            failure.append({"label": label, "head": info["head"], "signal": sig, "score": MEAN_SCORE, "step": None,
                            **failure_estimate(base, sig, None, tasks, n_boot)})
            for cond in shifts:
                sh = [s["episodes"][cond] for s in seeds]
                for k in sorted({0, shift_onset(cond)}):
                    shift.append({"label": label, "head": info["head"], "signal": sig, "shift": cond, "step": k,
                                  **shift_estimate(base, sh, sig, k, tasks, n_boot)})
        failure.append({"label": label, "head": info["head"], "signal": LENGTH_SIGNAL, "score": MEAN_SCORE,
                        "step": None, **failure_estimate(base, LENGTH_SIGNAL, None, tasks, n_boot)})
    return {"failure": failure, "shift": shift, "success": success, "no_rows": no_rows}


# ------------------------------------------------------------------------------------------ report
def _cell(r: dict[str, Any] | None) -> str:
    if r is None or r.get("value") is None or not math.isfinite(r["value"]):
        return "-"
    if r.get("lo") is None or not math.isfinite(r["lo"]):
        return f"{r['value']:.2f}"
    return f"{r['value']:.2f} [{r['lo']:.2f}, {r['hi']:.2f}]"


def _num(x: float | None) -> str:
    return "-" if x is None or not math.isfinite(x) else f"{x:.2f}"


def render_markdown(result: dict[str, Any]) -> str:
    """``uncertainty.md`` from the ``uncertainty.json`` content (nothing typed by hand)."""
    meta, tables = result["meta"], result["tables"]
    steps = meta["steps"]
    lines = ["# Uncertainty: failure prediction before the outcome and shift detection", "",
             f"Generated by `python -m recipes.studies.uncertainty` from `uncertainty.json` (git {meta['git_commit']}).",
             f"Suite {meta['suite']} (args {meta['suite_args'] or 'none'}), tasks {', '.join(meta['tasks'])}; "
             f"eval seeds {meta['eval_seeds']} x {meta['episodes_per_task']} episode(s) per task; warm start off; "
             f"{meta['samples']} extra samples per chunk for the spreads.",
             f"AUROC within (training seed, task), averaged over those with both classes; [95% bootstrap interval over "
             f"training seeds x episodes, {meta['n_boot']} replicates]. Higher signal = predicted failure / shift; 0.5 = none.",
             "", "| label | head | preset, knobs | training seeds | policies |", "|---|---|---|---|---|"]
    for label, p in result["policies"].items():
        knobs = ", ".join(f"{k}={v}" for k, v in p["overrides"].items()) or "-"
        lines.append(f"| {label} | {p['head']} | {p['preset'] or '-'}: {knobs} | "
                     f"{', '.join(str(s['train_seed']) for s in p['seeds'])} | {len(p['seeds'])} |")
    lines += ["", "## Success", "", "| label | condition | success (mean over seeds) | per seed | episodes | env errors |",
              "|---|---|---|---|---|---|"]
    for r in tables["success"]:
        per = ", ".join(_num(x) for x in r["per_seed"])
        lines.append(f"| {r['label']} | {r['condition']} | {_num(r['success'])} | {per} | {r['episodes']} | {r['errors']} |")
    comp = [(label, p) for label, p in result["policies"].items() if p.get("compare_success") is not None]
    if comp:
        lines += ["", "In-distribution success of the same episodes in the comparison's own evaluation (same preset, "
                  "warm start off): " + "; ".join(f"{label} {p['compare_success']:.2f}" for label, p in comp) + "."]
    cols = [f"step {k}" for k in steps] + [MEAN_SCORE]
    lines += ["", "## Failure prediction (in-distribution): AUROC [95% CI]", "",
              "`step k`: the chunk planned at env step k, among episodes still running then (step 0: the first "
              "chunk of every episode). The last column is the old episode-mean score, confounded by length.", "",
              "| label | signal | " + " | ".join(cols) + " |", "|---|---|" + "---|" * len(cols)]
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    for r in tables["failure"]:
        rows.setdefault((r["label"], r["signal"]), {})[r["score"]] = r
    for (label, sig), by in rows.items():
        lines.append(f"| {label} | {sig} | " + " | ".join(_cell(by.get(c)) for c in cols) + " |")
    lines += ["", "Episodes still running (failed) at each step, all seeds:", "",
              "| label | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
    seen = set()
    for (label, sig), by in rows.items():
        if label in seen or sig == LENGTH_SIGNAL:
            continue
        seen.add(label)
        lines.append(f"| {label} | " + " | ".join(
            f"{by[c]['episodes']} ({by[c]['positives']})" if c in by else "-" for c in cols) + " |")
    if tables["shift"]:
        scols = []
        for r in tables["shift"]:
            c = (r["shift"], r["step"])
            if c not in scols:
                scols.append(c)
        lines += ["", "## Shift detection: AUROC [95% CI] of shifted vs in-distribution episodes", "",
                  "At step 0 (the first chunk) and, for a perturbation that starts later, at its onset step.", "",
                  "| label | signal | " + " | ".join(f"{s} @ step {k}" for s, k in scols) + " |",
                  "|---|---|" + "---|" * len(scols)]
        srows: dict[tuple[str, str], dict[tuple[str, int], dict[str, Any]]] = {}
        for r in tables["shift"]:
            srows.setdefault((r["label"], r["signal"]), {})[(r["shift"], r["step"])] = r
        for (label, sig), by in srows.items():
            lines.append(f"| {label} | {sig} | " + " | ".join(_cell(by.get(c)) for c in scols) + " |")
    missing = [(label, s, why) for label, d in tables["no_rows"].items() for s, why in d.items()]
    if missing:
        lines += ["", "No row: " + "; ".join(f"{label} {s} ({why})" for label, s, why in missing) + "."]
    lines += ["", "Signals: " + "; ".join(f"`{k}`: {v}" for k, v in SIGNALS.items()) + "."]
    return "\n".join(lines) + "\n"


def plot(result: dict[str, Any], path: Path) -> Path:
    """Failure AUROC vs step index, one line per label x signal, with the intervals."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    rows: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in result["tables"]["failure"]:
        if r["step"] is not None and r["value"] is not None:
            rows.setdefault((r["label"], r["signal"]), []).append(r)
    for (label, sig), rs in rows.items():
        x = [r["step"] for r in rs]
        y = np.array([r["value"] for r in rs])
        lo = np.array([r["lo"] if r["lo"] is not None else r["value"] for r in rs])
        hi = np.array([r["hi"] if r["hi"] is not None else r["value"] for r in rs])
        ax.errorbar(x, y, yerr=[y - lo, hi - y], marker="o", capsize=3, label=f"{label} {sig}")
    ax.axhline(0.5, color="grey", lw=0.8, ls="--")
    ax.set_xlabel("env step the chunk was planned at")
    ax.set_ylabel("failure AUROC (within task)")
    ax.set_ylim(0, 1)
    if rows:
        ax.legend(fontsize=7)
    return save_figure(fig, path)


# ------------------------------------------------------------------------------------------ driver
def run_uncertainty(policies: dict[str, list[str]], suite: Any, tasks: Sequence[str], eval_seeds: Sequence[int],
                    episodes: int, out: str | Path, *, steps: Sequence[int] = DEFAULT_STEPS,
                    shifts: Sequence[str] = DEFAULT_SHIFTS, samples: int = 8, presets: dict[str, str] | None = None,
                    n_boot: int = N_BOOT, meta: dict[str, Any] | None = None,
                    load: Callable[[str], Any] = load_policy, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run every policy's episodes (cached under ``out/episodes``), analyse, write
    ``uncertainty.{json,md,png}``; returns the JSON content."""

    from recipes.compare.artifacts import git_commit

    out = Path(out)
    presets = presets or {}
    unknown = sorted(set(presets) - set(policies))
    if unknown:
        raise ValueError(f"--preset for unknown label(s) {unknown}; labels: {sorted(policies)}")
    for spec in shifts:
        if spec != "heldout":
            make_perturbation(spec)  # a bad spec fails now, not after hours of episodes
    conditions = [IN_DIST, *shifts]
    meta = dict(meta or {})
    labels: dict[str, dict[str, Any]] = {}
    pol_meta: dict[str, dict[str, Any]] = {}
    cpu = CpuTally()
    for label, dirs in policies.items():
        seeds_info, head, caps, settings = [], None, None, None
        for i, d in enumerate(dirs):
            policy = load(d)
            if head is None:
                first, head, caps = policy, policy.cfg.head, policy.head.capabilities
                settings = policy_settings(policy, presets.get(label))
            else:
                check_same_head(label, first, policy, d)
            info = run_info(d)
            eps_by_cond = {}
            for cond in conditions:
                key = {"policy": str(Path(d).resolve()), "condition": cond, "suite": meta.get("suite"),
                       "suite_args": meta.get("suite_args"), "tasks": list(tasks), "eval_seeds": [int(s) for s in eval_seeds],
                       "episodes": int(episodes), "samples": int(samples), "overrides": settings["overrides"],
                       "warm_start": False}
                cache = out / "episodes" / slug(label) / seed_tag(i, info) / f"{slug(cond)}.json"
                eps, hit, cpu_s = timed_cached_episodes(cache, key, lambda p=policy: run_policy_episodes(
                    p, suite, tasks, eval_seeds, episodes, cond, settings["overrides"], samples))
                cpu.add(cpu_s)
                eps_by_cond[cond] = eps
                log(f"[uncertainty] {label} {d} {cond}: {len(eps)} episodes (cached)" if hit else
                    f"[uncertainty] {label} {d} {cond}: success {_success(eps):.2f} over {len(eps)} episodes")
            seeds_info.append({"dir": str(d), **{k: v for k, v in info.items() if k != "outcomes_by_preset"},
                               "episodes": eps_by_cond, "compare_outcomes": info.get("outcomes_by_preset")})
            del policy
        labels[label] = {"head": head, "caps": caps, "seeds": seeds_info}
        pol_meta[label] = {"head": head, "preset": settings["preset"], "overrides": settings["overrides"],
                           "capabilities": {"reports_energy": bool(caps.reports_energy), "knobs": sorted(caps.knobs),
                                            "warm_start": bool(caps.warm_start)},
                           "seeds": [{k: v for k, v in s.items() if k not in ("episodes", "compare_outcomes")}
                                     for s in seeds_info],
                           "compare_success": compare_success(seeds_info, tasks, eval_seeds, episodes,
                                                              settings["preset"])}
    tables = analyse(labels, tasks, steps, shifts, n_boot)
    result = {
        "schema": SCHEMA,
        "meta": {**meta, "tasks": list(tasks), "eval_seeds": [int(s) for s in eval_seeds],
                 "episodes_per_task": int(episodes), "steps": [int(k) for k in steps], "shifts": list(shifts),
                 "samples": int(samples), "warm_start": False, "n_boot": int(n_boot), "boot_seed": BOOT_SEED,
                 "level": 0.95, "git_commit": git_commit(), "signals": SIGNALS,
                 "auroc": "within (training seed, task), mean over those with both classes; positive = failed "
                          "(failure) or shifted (shift) episode; episodes with an env error left out",
                 "episodes_cache": str(out / "episodes"), **cpu.meta()},
        "policies": pol_meta,
        "tables": tables,
    }
    return write_study_outputs(out, "uncertainty", result, render_markdown, plot, log)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m recipes.studies.uncertainty", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_policy_arguments(p, episodes=20, default_seed=30_000)
    p.add_argument("--steps", type=int, nargs="+", default=list(DEFAULT_STEPS), help="env steps k of the step-k scores")
    p.add_argument("--shifts", nargs="*", default=list(DEFAULT_SHIFTS))
    p.add_argument("--samples", type=int, default=8, help="N extra samples per chunk for the spreads (0: none)")
    p.add_argument("--out", required=True)
    add_publish_arguments(p)
    return p


def main(argv: list[str] | None = None) -> dict[str, Any]:
    import torch

    p = build_parser()
    a = p.parse_args(argv)
    if a.samples == 1 or a.samples < 0:
        p.error("--samples must be 0 (no spreads) or >= 2")
    if 0 not in a.steps:
        a.steps = [0, *a.steps]
    steps = sorted(set(a.steps))
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    inp = resolve_policy_arguments(a, default_seed=30_000)
    dest = publish_destination(a, inp)
    suite = inp.make_suite()
    meta = {**inp.meta(), "argv": sys.argv[1:] if argv is None else list(argv)}
    result = run_uncertainty(inp.policies, suite, inp.tasks or suite.task_names(), inp.eval_seeds, inp.episodes,
                             a.out, steps=steps, shifts=a.shifts, samples=a.samples, presets=inp.presets,
                             n_boot=a.n_boot, meta=meta)
    if dest is not None:
        publish_study("uncertainty", a.out, dest)
    return result


if __name__ == "__main__":
    main()
