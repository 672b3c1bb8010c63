"""Study: dynamic compute: success, chunk latency and forward-pass equivalents per head vs the number
of inference steps, and under a per-chunk latency budget (EBT anytime inference), pooled over
training seeds (issue 13, item 3).

    # the final policies of a comparison grid, on its final evaluation seeds, tasks and suite arguments
    python -m recipes.studies.dynamic_compute --compare runs/compare --suite metaworld --protocol frozen \\
        --heads ebt flow diffusion regression --episodes 20 --out runs/studies/dyn_mw
    # policy folders, one per training seed (one folder = one seed); per-label step ladders
    python -m recipes.studies.dynamic_compute --policies ebt=DIR1,DIR2,DIR3 flow=DIR1,DIR2,DIR3 \\
        --suite reach2d --steps ebt=1,2,4 flow=2,5,10 --budgets-ms 25 50 100 --out runs/studies/dyn

**Settings**, chosen from each head's declared capabilities (``capabilities.knobs`` / ``presets``),
never its name:

* ``steps=K`` for every head with the ``num_steps`` knob: K steps on top of the head's *sweep preset*,
  its preset with the fewest steps among those setting ``num_steps`` (diffusion: ``ddim-10``, so the
  sweep is DDIM; flow: ``flow-10``), else its first (EBT: ``ebt-2``); ``--preset LABEL=NAME`` picks
  another. Default ladders: 1 2 4 8 for a head that reports energy (its steps minimize an energy),
  1 2 5 10 20 for the others (sampler integration steps); ``--steps 1 2 4`` sets one ladder for all,
  ``--steps ebt=1,2,4 flow=2,5,10`` one per label (labels of this run only, as ``--preset``).
* ``budget=B ms`` for every head with the ``latency_budget_ms`` knob: ``predict_chunk(...,
  latency_budget_ms=B)`` on every chunk (the budget covers the whole call, encoding included; the
  head stops when its next evaluation would not fit and returns the lowest-energy chunk evaluated,
  docs/realtime.md section 5), at most ``--budget-steps`` steps (default: the largest of its ladder).
* ``preset=NAME`` (the reference row) for a head with neither knob (regression).

Every cell runs every training seed's policy on the same seeded episodes (``--eval-seeds`` x
``--episodes`` per task; with ``--compare`` by default the grid's final evaluation seeds) with **warm
start off**, through the closed-loop evaluation at batch 1.

**Numbers** (``recipes.studies.protocol_policies``): success pooled over training seeds (mean over
seeds of each seed's success; env errors count as failures) with a 95% bootstrap interval over
training seeds x episodes (2,000 replicates, RNG seed 0). Per chunk, averaged within each episode and
then pooled the same way with the same interval: measured chunk ms (``PolicyOutput.latency_ms``, the
whole policy; machine dependent), network evaluations (``ChunkPrediction.nfe``) and forward-pass
equivalents = nfe x ``capabilities.eval_cost`` (the cost unit of ``recipes.compare``), steps actually
used (``ChunkPrediction.steps``) and, in budget rows, the share of chunks whose ms exceeded the budget.

Every finished (label, training seed, setting) cell is saved under ``OUT/cells/`` with the settings it
ran with and reused by a rerun with the same settings (a study resumes; labels can run in separate
processes sharing ``--out``, a last run with every label writes the joint tables). Writes
``dynamic_compute.json`` (configuration, policies with their training seeds, eval seeds, git commit,
rows), ``dynamic_compute.md`` (generated from it) and ``dynamic_compute.png``.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from recipes.compare.stats import BOOT_SEED, N_BOOT

from .common import load_policy, predict_overrides, pyplot, save_figure
from .episodes import run_study_episodes
from .protocol_policies import (write_study_outputs, add_policy_arguments, add_publish_arguments, check_same_head,
                                timed_cached_episodes,
                                compare_success, estimate_cell, mean_estimate, policy_settings, publish_destination,
                                publish_study, resolve_policy_arguments, run_info, seed_tag, slug, success_estimate)

__all__ = ["SCHEMA", "STEP_KNOB", "BUDGET_KNOB", "DEFAULT_BUDGETS_MS", "Setting", "parse_steps", "sweep_preset",
           "plan_settings", "chunk_budget", "run_setting", "pool_setting", "run_dynamic_compute", "to_markdown", "plot",
           "build_parser", "main"]

SCHEMA = "vla_ebt.dynamic_compute/2"
STEP_KNOB = "num_steps"
BUDGET_KNOB = "latency_budget_ms"
#: default step ladders: a head reporting energy (minimizer steps) / any other head with a step knob
DEFAULT_STEPS_ENERGY = (1, 2, 4, 8)
DEFAULT_STEPS = (1, 2, 5, 10, 20)
DEFAULT_BUDGETS_MS = (25.0, 50.0, 100.0, 200.0)
#: per-episode metric -> row column (each pooled with its interval)
METRICS = {"chunk_ms": "chunk_ms", "nfe": "nfe", "steps": "steps_used", "over_budget": "over_budget"}


@dataclass(frozen=True)
class Setting:
    """One cell's inference setting. kind: "steps" | "budget" | "reference"; overrides: head knobs."""

    kind: str
    overrides: tuple[tuple[str, Any], ...]
    num_steps: int | None = None
    budget_ms: float | None = None
    preset: str | None = None

    @property
    def name(self) -> str:
        if self.kind == "steps":
            return f"steps={self.num_steps}"
        if self.kind == "budget":
            return f"budget={self.budget_ms:g}ms"
        return f"preset={self.preset}"


# ------------------------------------------------------------------------------------------- settings
def parse_steps(items: Sequence[str] | None) -> tuple[list[int] | None, dict[str, list[int]]]:
    """``--steps`` entries -> (one ladder for every label or None, {label: ladder}). An entry is an
    integer N >= 1 (joins the common ladder) or ``LABEL=N[,N...]``; ValueError naming ``--steps``
    otherwise (and for a label given twice)."""
    common: list[int] = []
    per_label: dict[str, list[int]] = {}

    def ints(text: str, item: str) -> list[int]:
        try:
            vals = [int(x) for x in text.split(",") if x.strip()]
        except ValueError:
            vals = []
        if not vals or any(v < 1 for v in vals):
            raise ValueError(f"--steps: {item!r} is not N or LABEL=N[,N...] with integers N >= 1")
        return sorted(set(vals))

    for item in items or ():
        label, eq, rest = item.partition("=")
        if not eq:
            common += ints(item, item)
            continue
        label = label.strip()
        if not label or label in per_label:
            raise ValueError(f"--steps: {item!r}: " + ("no label" if not label else f"label {label!r} given twice"))
        per_label[label] = ints(rest, item)
    return (sorted(set(common)) or None), per_label


def sweep_preset(policy: Any, preset: str | None = None) -> tuple[str | None, dict[str, Any]]:
    """(preset name, its knobs without ``num_steps``): the base of a head's step sweep. ``preset``
    given: that one; else, for a head whose first preset sets the step knob, its preset with the fewest
    steps among those setting it (diffusion: DDIM-10), else its first (``policy_settings``; EBT: its
    configured steps)."""
    caps = policy.head.capabilities
    if preset is None and STEP_KNOB in caps.knobs and caps.presets and STEP_KNOB in caps.presets[0][1]:
        stepped = [(n, k) for n, k in caps.presets if STEP_KNOB in k]
        if stepped:
            preset = min(stepped, key=lambda p: int(p[1][STEP_KNOB]))[0]
    s = policy_settings(policy, preset, final_eval=False)
    return s["preset"], {k: v for k, v in s["overrides"].items() if k != STEP_KNOB}


def plan_settings(policy: Any, *, preset: str | None = None, steps: Sequence[int] | None = None,
                  budgets_ms: Sequence[float] = DEFAULT_BUDGETS_MS, budget_steps: int | None = None) -> list[Setting]:
    """A head's settings from its capabilities: a step ladder (``steps``, default by capability) with
    the ``num_steps`` knob, budgets with the ``latency_budget_ms`` knob (at most ``budget_steps`` steps,
    default the ladder's largest), else the one reference row of its sweep preset."""
    caps = policy.head.capabilities
    name, base = sweep_preset(policy, preset)
    items = tuple(sorted(base.items()))
    out: list[Setting] = []
    ladder: list[int] = []
    if STEP_KNOB in caps.knobs:
        ladder = sorted({int(k) for k in (steps or (DEFAULT_STEPS_ENERGY if caps.reports_energy else DEFAULT_STEPS))})
        out += [Setting("steps", items + ((STEP_KNOB, k),), num_steps=k, preset=name) for k in ladder]
    if BUDGET_KNOB in caps.knobs and budgets_ms:
        cap = budget_steps if budget_steps is not None else (max(ladder) if ladder else None)
        extra = ((STEP_KNOB, int(cap)),) if cap is not None and STEP_KNOB in caps.knobs else ()
        out += [Setting("budget", items + extra, num_steps=None if not extra else int(cap), budget_ms=float(b), preset=name)
                for b in sorted({float(b) for b in budgets_ms})]
    if not out:
        out.append(Setting("reference", items, preset=name))
    return out


# ----------------------------------------------------------------------------------------- episodes
@contextlib.contextmanager
def chunk_budget(policy: Any, budget_ms: float | None) -> Iterator[None]:
    """Within the block every ``policy.predict_chunk`` call gets ``latency_budget_ms=budget_ms`` (None:
    unchanged); a head without the knob raises ValueError on the first chunk."""
    if budget_ms is None:
        yield
        return
    own = policy.__dict__.get("predict_chunk")
    inner = policy.predict_chunk

    def predict_chunk(*args: Any, **kwargs: Any) -> Any:
        if len(args) < 4:  # (obs, prefix, prefix_weights, latency_budget_ms)
            kwargs.setdefault("latency_budget_ms", float(budget_ms))
        return inner(*args, **kwargs)

    policy.predict_chunk = predict_chunk
    try:
        yield
    finally:
        if own is not None:
            policy.predict_chunk = own
        else:
            del policy.predict_chunk


def _mean(xs: Sequence[float]) -> float | None:
    v = [float(x) for x in xs if x is not None and math.isfinite(float(x))]
    return float(np.mean(v)) if v else None


def run_setting(policy: Any, suite: Any, tasks: Sequence[str], episodes: int, eval_seeds: Sequence[int],
                setting: Setting) -> dict[str, Any]:
    """One training seed's cell, warm start off: one record per episode (timed and cached by
    ``protocol_policies.timed_cached_episodes``); a record holds the episode's id, success, error, length, chunks and its per-chunk means
    ``chunk_ms``, ``nfe``, ``steps`` and (budget cells) ``over_budget`` (share of chunks over it)."""
    from recipes.compare.evaluation import warm_start

    seeds = [int(s) for s in eval_seeds]
    with warm_start(policy, False), predict_overrides(policy, **dict(setting.overrides)), \
            chunk_budget(policy, setting.budget_ms):
        res = run_study_episodes(policy, suite, list(tasks), int(episodes), seeds[0], seeds=seeds)
    eps = []
    for e, sig in zip(res.episodes, res.signals):
        lat = [float(x) for x in e.chunk_latency_ms if math.isfinite(float(x))]
        over = None if setting.budget_ms is None or not lat else float(np.mean([x > setting.budget_ms for x in lat]))
        eps.append({"task": e.task, "eval_seed": int(e.base_seed if e.base_seed is not None else seeds[0]),
                    "index": int(e.index), "env_seed": int(e.seed), "success": bool(e.success), "error": e.error,
                    "length": int(e.length), "chunks": len(sig.nfe), "chunk_ms": _mean(lat), "nfe": _mean(sig.nfe),
                    "steps": _mean(sig.steps), "over_budget": over})
    return eps


def pool_setting(per_seed: Sequence[Sequence[dict[str, Any]]], tasks: Sequence[str], eval_cost: float,
                 n_boot: int = N_BOOT) -> dict[str, Any]:
    """A row's numbers from each training seed's records of one cell: success and every ``METRICS``
    entry pooled over seeds with its interval (``<col>``, ``<col>_lo``, ``<col>_hi``; None where
    undefined), ``forward_equiv*`` = ``nfe*`` x ``eval_cost``, chunks per episode as a plain mean."""
    s = success_estimate(per_seed, tasks, n_boot)
    row: dict[str, Any] = {"success": s["value"], "ci_low": s["lo"], "ci_high": s["hi"], "per_seed": s["per_seed"],
                           "seeds": s["n_seeds"], "episodes": s["episodes"], "errors": s["errors"]}
    for key, col in METRICS.items():
        m = mean_estimate(per_seed, key, tasks, n_boot)
        row.update({col: m["value"], f"{col}_lo": m["lo"], f"{col}_hi": m["hi"]})
    row["eval_cost"] = float(eval_cost)
    for suffix in ("", "_lo", "_hi"):
        v = row[f"nfe{suffix}"]
        row[f"forward_equiv{suffix}"] = None if v is None or not math.isfinite(v) else v * float(eval_cost)
    row["chunks"] = _mean([_mean([e.get("chunks") for e in eps]) for eps in per_seed])
    row["first_error"] = next((e["error"] for eps in per_seed for e in eps if e.get("error")), None)
    return row


# ------------------------------------------------------------------------------------------- study
def run_dynamic_compute(policies: dict[str, Sequence[str] | str], suite_name: str, out: str | Path, *,
                        tasks: Sequence[str] | None = None, episodes: int = 20, eval_seeds: Sequence[int] = (30_000,),
                        steps: Sequence[str] | None = None, budgets_ms: Sequence[float] = DEFAULT_BUDGETS_MS,
                        budget_steps: int | None = None, suite_kwargs: dict[str, Any] | None = None,
                        presets: dict[str, str] | None = None, n_boot: int = N_BOOT,
                        meta: dict[str, Any] | None = None, load: Callable[[str], Any] = load_policy,
                        log: Callable[[str], None] | None = print) -> dict[str, Any]:
    """Every (label, setting) cell of every training seed's policy, resuming from ``OUT/cells``; pools
    the seeds, writes ``dynamic_compute.{json,md,png}`` and returns the JSON content. ``policies``:
    {label: [policy dir per training seed]} (a single dir: one seed); ``steps``: ``--steps`` entries
    (:func:`parse_steps`). ValueError for a bad ``--steps`` / ``--budgets-ms`` / ``--preset`` before any
    episode runs."""
    from eval.sim.suites import make_suite

    from recipes.compare.artifacts import git_commit

    policies = {k: [v] if isinstance(v, (str, Path)) else list(v) for k, v in policies.items()}
    common, per_label = parse_steps(steps)
    presets = presets or {}
    for flag, given in (("--steps", per_label), ("--preset", presets)):
        unknown = sorted(set(given) - set(policies))
        if unknown:
            raise ValueError(f"{flag} for unknown label(s) {unknown}; labels: {sorted(policies)}")
    bad = [b for b in budgets_ms if not (math.isfinite(float(b)) and float(b) > 0)]
    if bad:
        raise ValueError(f"--budgets-ms: budgets must be finite numbers > 0 ms, got {bad}")
    if budget_steps is not None and int(budget_steps) < 1:
        raise ValueError(f"--budget-steps must be >= 1, got {budget_steps}")
    out = Path(out)
    suite = make_suite(suite_name, **(suite_kwargs or {}))
    task_list = list(tasks or suite.task_names())
    seeds = [int(s) for s in eval_seeds]
    say = log or (lambda _msg: None)

    firsts: dict[str, Any] = {}
    plans: dict[str, list[Setting]] = {}
    for label, dirs in policies.items():  # every label's settings before any episode runs
        policy = firsts[label] = load(str(dirs[0]))
        if label in per_label and STEP_KNOB not in policy.head.capabilities.knobs:
            raise ValueError(f"--steps {label}=...: head {policy.cfg.head!r} has no {STEP_KNOB!r} inference knob "
                             f"(its knobs: {sorted(policy.head.capabilities.knobs) or 'none'})")
        plans[label] = plan_settings(policy, preset=presets.get(label), steps=per_label.get(label, common),
                                     budgets_ms=budgets_ms, budget_steps=budget_steps)

    rows, pol_meta = [], {}
    for label, dirs in policies.items():
        first = firsts.pop(label)
        caps = first.head.capabilities
        per_setting: dict[str, list[list[dict[str, Any]]]] = {s.name: [] for s in plans[label]}
        cpu = dict.fromkeys(per_setting, 0.0)
        seeds_info = []
        for i, d in enumerate(dirs):
            policy = first if i == 0 else load(str(d))
            check_same_head(label, first, policy, d)
            info = run_info(d)
            for st in plans[label]:
                key = {"policy": str(Path(d).resolve()), "suite": suite_name, "suite_kwargs": suite_kwargs or {},
                       "tasks": task_list, "episodes": int(episodes), "eval_seeds": seeds, "setting": st.name,
                       "overrides": dict(st.overrides), "budget_ms": st.budget_ms, "warm_start": False}
                path = out / "cells" / slug(label) / seed_tag(i, info) / f"{slug(st.name)}.json"
                eps, hit, cpu_s = timed_cached_episodes(
                    path, key, lambda p=policy, st=st: run_setting(p, suite, task_list, episodes, seeds, st))
                per_setting[st.name].append(eps)
                cpu[st.name] += cpu_s or 0.0
                say(f"[dynamic_compute] {label} seed {info.get('train_seed')} / {st.name}: " + (
                    "cached" if hit else f"success {np.mean([e['success'] for e in eps]):.2f} over {len(eps)} "
                                         f"episodes, {cpu_s:.0f} CPU s"))
            seeds_info.append({"dir": str(d), **{k: v for k, v in info.items() if k != "outcomes_by_preset"},
                               "compare_outcomes": info.get("outcomes_by_preset")})
            del policy
        preset = plans[label][0].preset
        notes = [f"no {STEP_KNOB!r} knob: no step sweep"] if STEP_KNOB not in caps.knobs else []
        if BUDGET_KNOB not in caps.knobs:
            notes.append(f"no {BUDGET_KNOB!r} knob: no budget rows")
        pol_meta[label] = {"head": first.cfg.head, "sweep_preset": preset, "eval_cost": float(caps.eval_cost),
                           "base_overrides": {k: v for k, v in plans[label][0].overrides if k != STEP_KNOB},
                           "settings": [s.name for s in plans[label]], "notes": notes,
                           "seeds": [{k: v for k, v in s.items() if k != "compare_outcomes"} for s in seeds_info],
                           "compare_success": compare_success(seeds_info, task_list, seeds, episodes, preset)}
        for st in plans[label]:
            rows.append({"label": label, "head": first.cfg.head, "setting": st.name, "kind": st.kind,
                         "num_steps": st.num_steps, "budget_ms": st.budget_ms, "overrides": dict(st.overrides),
                         **pool_setting(per_setting[st.name], task_list, caps.eval_cost, n_boot), "cpu_s": cpu[st.name]})
        del first
    result = {
        "schema": SCHEMA,
        "meta": {**(meta or {}), "suite": suite_name, "suite_kwargs": suite_kwargs or {}, "tasks": task_list,
                 "eval_seeds": seeds, "episodes_per_task": int(episodes), "steps": list(steps or []),
                 "budgets_ms": [float(b) for b in budgets_ms], "budget_steps": budget_steps, "warm_start": False,
                 "n_boot": int(n_boot), "boot_seed": BOOT_SEED, "level": 0.95, "git_commit": git_commit(),
                 "cells": str(out / "cells")},
        "policies": pol_meta,
        "rows": rows,
    }
    return write_study_outputs(out, "dynamic_compute", result, to_markdown, lambda r, path: plot(r["rows"], path), log)


def _est(r: dict[str, Any], col: str, nd: int, lo: str | None = None, hi: str | None = None) -> str:
    """``value [lo, hi]``; the value alone when the interval is a point (e.g. a fixed step count)."""
    est = {"value": r.get(col), "lo": r.get(lo or f"{col}_lo"), "hi": r.get(hi or f"{col}_hi")}
    if col != "success" and est["lo"] is not None and est["lo"] == est["hi"]:
        est = {"value": est["value"]}
    return estimate_cell(est, nd)


def to_markdown(result: dict[str, Any]) -> str:
    """``dynamic_compute.md`` from the ``dynamic_compute.json`` content (nothing typed by hand)."""
    m = result["meta"]
    lines = ["# Dynamic compute: success, latency and forward-pass equivalents vs inference steps and budgets", "",
             f"Generated by `python -m recipes.studies.dynamic_compute` from `dynamic_compute.json` (git "
             f"{m['git_commit']}).",
             f"Suite {m['suite']} ({', '.join(f'{k}={v}' for k, v in m['suite_kwargs'].items()) or 'default args'}), "
             f"tasks {', '.join(m['tasks'])}; eval seeds {m['eval_seeds']} x {m['episodes_per_task']} episode(s) per "
             f"task, the same for every cell and training seed; warm start off.",
             f"Success: mean over training seeds [95% bootstrap interval over training seeds x episodes, "
             f"{m['n_boot']} replicates]; env errors count as failures. Per-chunk numbers: each episode's mean, pooled "
             f"the same way with the same interval. Forward-pass equivalents = network evaluations (nfe) x the head's "
             f"`capabilities.eval_cost`. Chunk ms: measured `predict_chunk` wall time (machine dependent).", "",
             "| label | head | sweep preset, base knobs | eval_cost | training seeds | comparison's own success "
             "(sweep preset, same episodes) | notes |", "|---|---|---|---|---|---|---|"]
    for label, p in result["policies"].items():
        knobs = ", ".join(f"{k}={v}" for k, v in p["base_overrides"].items()) or "-"
        cs = p.get("compare_success")
        lines.append(f"| {label} | {p['head']} | {p['sweep_preset'] or '-'}: {knobs} | {p['eval_cost']:g} | "
                     f"{', '.join(str(s.get('train_seed')) for s in p['seeds'])} | {'-' if cs is None else f'{cs:.2f}'} | "
                     f"{'; '.join(p['notes']) or '-'} |")
    lines += ["", "| label | setting | success | per seed | chunk ms | nfe | forward-pass equiv. | steps used | "
              "chunks over budget | episodes (errors) |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        per = ", ".join("-" if x is None else f"{x:.2f}" for x in r["per_seed"])
        lines.append(f"| {r['label']} | {r['setting']} | {_est(r, 'success', 2, 'ci_low', 'ci_high')} | {per} | "
                     f"{_est(r, 'chunk_ms', 1)} | {_est(r, 'nfe', 1)} | {_est(r, 'forward_equiv', 1)} | "
                     f"{_est(r, 'steps_used', 2)} | {_est(r, 'over_budget', 2)} | {r['episodes']} ({r['errors']}) |")
    lines += ["", "Settings: `steps=K` runs K inference steps on the sweep preset; `budget=B ms` passes a per-chunk "
              "latency budget of B ms (the whole `predict_chunk` call) with at most "
              + ("the ladder's largest" if m.get("budget_steps") is None else str(m["budget_steps"]))
              + " steps, the head stopping when its next evaluation would not fit (docs/realtime.md, section 5); "
              "`preset=NAME`: a head without step or budget knobs, as compared."]
    return "\n".join(lines) + "\n"


def _col(rows: Sequence[dict[str, Any]], key: str) -> np.ndarray:
    return np.array([np.nan if r.get(key) is None else float(r[key]) for r in rows], float)


def plot(rows: list[dict[str, Any]], path: Path) -> Path:
    """Success (95% interval as a band) vs forward-pass equivalents and vs chunk ms, one colour per
    label: the step sweep solid, the budget sweep dashed, a reference row as one point."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for c, label in enumerate(dict.fromkeys(r["label"] for r in rows)):
        colour = f"C{c % 10}"
        for kind, style in (("steps", "-"), ("budget", "--"), ("reference", "")):
            rs = [r for r in rows if r["label"] == label and r["kind"] == kind]
            if not rs:
                continue
            for ax, xkey in zip(axes, ("forward_equiv", "chunk_ms")):
                rs_x = sorted(rs, key=lambda r: (r.get(xkey) is None, r.get(xkey) or 0.0))
                x, y = _col(rs_x, xkey), _col(rs_x, "success")
                lo, hi = _col(rs_x, "ci_low"), _col(rs_x, "ci_high")
                name = label if kind == "steps" else f"{label} ({kind})"
                if kind == "reference":
                    ax.errorbar(x, y, yerr=np.clip(np.nan_to_num(np.stack([y - lo, hi - y])), 0, None), fmt="s",
                                color=colour, capsize=3, label=name)
                else:
                    ax.plot(x, y, style, marker="o", color=colour, label=name)
                    ax.fill_between(x, lo, hi, color=colour, alpha=0.12)
    for ax, name in zip(axes, ("forward-pass equivalents per chunk", "ms per chunk (measured)")):
        ax.set_xscale("log")
        ax.set_xlabel(name)
        ax.set_ylabel("success rate")
        ax.set_ylim(-0.02, 1.05)
    axes[0].legend(fontsize=7)
    return save_figure(fig, path)


# -------------------------------------------------------------------------------------- command line
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m recipes.studies.dynamic_compute", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_policy_arguments(p, episodes=20, default_seed=30_000)
    p.add_argument("--steps", nargs="+", default=None, metavar="N | LABEL=N,N,...",
                   help="step ladder of every head with a num_steps knob (N ...) or of one label (LABEL=N,N,...); "
                        f"default {' '.join(map(str, DEFAULT_STEPS_ENERGY))} for a head reporting energy, "
                        f"{' '.join(map(str, DEFAULT_STEPS))} for the others")
    p.add_argument("--budgets-ms", type=float, nargs="*", default=list(DEFAULT_BUDGETS_MS),
                   help="per-chunk latency budgets (ms, whole predict_chunk call) for heads with the "
                        "latency_budget_ms knob; none: no budget rows")
    p.add_argument("--budget-steps", type=int, default=None,
                   help="most steps under a budget (default: the largest of the head's ladder)")
    p.add_argument("--out", required=True)
    add_publish_arguments(p)
    return p


def main(argv: list[str] | None = None) -> dict[str, Any]:
    import torch

    a = build_parser().parse_args(argv)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    inp = resolve_policy_arguments(a, default_seed=30_000)
    dest = publish_destination(a, inp)
    meta = {**inp.meta(), "argv": sys.argv[1:] if argv is None else list(argv)}
    result = run_dynamic_compute(inp.policies, inp.suite, a.out, tasks=inp.tasks or None, episodes=inp.episodes,
                                 eval_seeds=inp.eval_seeds, steps=a.steps, budgets_ms=a.budgets_ms,
                                 budget_steps=a.budget_steps, suite_kwargs=inp.suite_kwargs(), presets=inp.presets,
                                 n_boot=a.n_boot, meta=meta)
    if dest is not None:
        publish_study("dynamic_compute", a.out, dest)
    return result


if __name__ == "__main__":
    main()
