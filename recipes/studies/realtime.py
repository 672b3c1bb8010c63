"""Study: chunk execution under inference delay: success and smoothness per head x strategy x delay,
pooled over training seeds (issue 15).

    # the final policies of a comparison grid (OUT/<suite>/<protocol>/final/<head>/<hparams>/seed<N>),
    # on the grid's final evaluation seeds, tasks and suite arguments
    python -m recipes.studies.realtime --compare runs/compare --suite metaworld --protocol frozen \\
        --heads ebt flow diffusion regression --episodes 20 --out runs/studies/realtime_mw
    # policy folders, one per training seed (one folder = one seed)
    python -m recipes.studies.realtime --policies ebt=DIR1,DIR2,DIR3 flow=DIR1,DIR2,DIR3 \\
        --suite reach2d --delays 0 1 2 4 6 \\
        --strategies sync naive_async temporal_ensemble rtc energy_gate --episodes 20 \\
        --out runs/studies/realtime

**Cells.** Each (label, strategy, delay d) cell runs every training seed's policy on the same seeded
episodes (``--eval-seeds`` x ``--episodes`` per task; with ``--compare`` by default the grid's final
evaluation seeds) through ``eval.sim.rollout.evaluate`` with ``EvalConfig(strategy=...,
delay_steps=d)``: inference "takes" d control steps and the env advances with the actions already
committed meanwhile. Every head plans under its first preset (``capabilities.presets``, ``--preset
LABEL=NAME`` for another) with **warm start off** in every cell (``--warm-start`` turns it on for
all): no strategy needs it, and the strategies that use the previous plan get it through their own
mechanism (``STRATEGIES`` below: ``rtc``'s prefix and soft target, ``temporal_ensemble``'s average,
``energy_gate``'s comparison), not through the minimizer's / sampler's start. ``sync`` waits for
every chunk (its env does not advance meanwhile), so its episodes do not depend on d: it runs once
(row d = 0) and its stalls at delay d are d per chunk switch. Delays of at least the horizon are
skipped (every chunk would arrive after its last step and be discarded), as are strategies a head
cannot run (rtc without ``capabilities.inpainting``, energy_gate without energy); both are listed.
``--wall-clock`` adds a cell per async strategy whose delay is each chunk's measured latency at
``--control-hz`` (machine dependent).

**Numbers** (``recipes.studies.protocol_policies``): success pooled over training seeds (mean over
seeds of each seed's success; env errors count as failures) with a 95% bootstrap interval over
training seeds x episodes (``recipes.compare.stats.bootstrap``, 2,000 replicates, RNG seed 0); the
largest action jump at a chunk switch and the mean squared second difference of the executed
actions (per episode, ``vla_ebt_client.action_smoothness``) as the same pooled mean over the episodes
where they are defined, with the same interval; stalls, starved (held) steps, switches, energy-gate
rejections, chunks per episode and chunk latency as plain means.

Every finished (label, training seed, strategy, delay) cell is saved under ``OUT/cells/`` with the
settings it ran with and reused by a rerun with the same settings (an interrupted study resumes;
labels can run in separate processes sharing ``--out``, a last run with every label joins them).
Writes ``realtime.json`` (configuration, policies with their training seeds, eval seeds, git commit,
rows, skipped), ``realtime.md`` (generated from it) and ``realtime.png``; ``--publish`` copies them
beside the comparison (``docs/results/compare/<suite>/<protocol>/studies/``) and regenerates the
results, whose README section then summarises them. See docs/realtime.md, "Asynchronous execution".
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from recipes.compare.stats import BOOT_SEED, N_BOOT

from .common import fmt, load_policy, predict_overrides, pyplot, save_figure
from .protocol_policies import (write_study_outputs, add_policy_arguments, add_publish_arguments, check_same_head,
                                timed_cached_episodes,
                                compare_success, estimate_cell, mean_estimate, policy_settings, publish_destination,
                                publish_study, resolve_policy_arguments, run_info, seed_tag, slug, success_estimate)

__all__ = ["SCHEMA", "STRATEGIES", "DEFAULT_DELAYS", "SMOOTHNESS", "cell_name", "run_cell", "run_realtime",
           "pool_cell", "merged_commits", "to_markdown", "plot", "build_parser", "main"]

SCHEMA = "vla_ebt.realtime/2"
WALL = "wall"
DEFAULT_DELAYS = (0, 1, 2, 4, 6)
#: strategy -> what it does with the plans (docs/realtime.md, "Strategies"); warm start is off in every cell
STRATEGIES = {
    "sync": "waits for every chunk (receding horizon: execute n_action_steps, then re-plan); the env does not "
            "advance while it waits, so its episodes do not depend on d (run once; stalls = d per switch)",
    "naive_async": "requests the next chunk when request_remaining planned actions remain and switches to it on "
                   "arrival, d steps later; the previous plan only runs until then",
    "temporal_ensemble": "as naive_async, but each step averages every arrived chunk covering it "
                         "(weights exp(-ensemble_decay * age)): earlier plans enter through the average",
    "rtc": "the request carries the d actions that execute meanwhile (prefix, returned exactly) and the rest of "
           "the old plan as a soft target; the head inpaints around them (needs capabilities.inpainting)",
    "energy_gate": "on arrival, scores the new chunk against the old plan's rest followed by the new chunk's "
                   "tail under the current observation and executes the lower energy (needs energy)",
}
#: per-episode smoothness metrics reported with an interval
SMOOTHNESS = {"max_switch_jump": "largest ||a_t - a_{t-1}|| at a chunk switch",
              "mean_sq_second_diff": "mean ||a_{t+1} - 2 a_t + a_{t-1}||^2 over the episode"}
_PLAIN = ("mean_switch_jump", "stalls", "starved", "switches", "gate_rejections", "chunks", "chunk_ms")


def cell_name(strategy: str, delay: int | str) -> str:
    return f"{strategy}__d{delay}"


def _finite_mean(xs: Sequence[Any]) -> float:
    v = [float(x) for x in xs if x is not None and math.isfinite(float(x))]
    return float(np.mean(v)) if v else float("nan")


def run_cell(policy: Any, suite: Any, tasks: Sequence[str], episodes: int, eval_seeds: Sequence[int], strategy: str,
             delay: int | str, *, control_hz: float = 10.0, on_starve: str = "hold",
             request_remaining: int | None = None, split: str = "train", overrides: dict[str, Any] | None = None,
             warm_start: bool = False) -> dict[str, Any]:
    """One training seed's cell: ``evaluate`` with the strategy and delay (``"wall"``: measured
    latency) under the head ``overrides`` and warm start ``warm_start``; one record per episode (timed
    and cached by ``protocol_policies.timed_cached_episodes``)."""
    from eval.sim.rollout import EvalConfig, evaluate
    from recipes.compare.evaluation import warm_start as warm

    wall = delay == WALL
    seeds = [int(s) for s in eval_seeds]
    cfg = EvalConfig(tasks=list(tasks), episodes_per_task=int(episodes), seed=seeds[0], seeds=seeds, split=split,
                     num_workers=0, strategy=strategy, delay_steps=0 if wall else int(delay),
                     delay_mode="wall_clock" if wall else "steps", control_hz=control_hz, on_starve=on_starve,
                     request_remaining=request_remaining)
    with warm(policy, warm_start), predict_overrides(policy, **(overrides or {})):
        rep = evaluate(policy, suite, cfg)
    eps = [{"task": e.task, "eval_seed": int(e.base_seed if e.base_seed is not None else seeds[0]),
            "index": int(e.index), "env_seed": int(e.seed), "success": bool(e.success), "error": e.error,
            "length": int(e.length), "switches": int(e.switches), "stalls": int(e.stalls), "starved": int(e.starved),
            "gate_rejections": int(e.gate_rejections), "max_switch_jump": e.max_switch_jump,
            "mean_switch_jump": e.mean_switch_jump, "mean_sq_second_diff": e.mean_sq_second_diff,
            "chunks": int(e.num_chunks), "chunk_ms": _finite_mean(e.chunk_latency_ms)} for e in rep.episodes]
    return eps


def pool_cell(per_seed: Sequence[Sequence[dict[str, Any]]], tasks: Sequence[str], n_boot: int = N_BOOT) -> dict[str, Any]:
    """A row's numbers from each training seed's episode records of one cell: success and the
    smoothness metrics pooled over seeds with their bootstrap intervals, the other counters as means
    (over seeds of each seed's episode mean), success per seed and per task."""
    s = success_estimate(per_seed, tasks, n_boot)
    row: dict[str, Any] = {"success": s["value"], "ci_low": s["lo"], "ci_high": s["hi"], "per_seed": s["per_seed"],
                           "seeds": s["n_seeds"], "episodes": s["episodes"], "errors": s["errors"]}
    for key in SMOOTHNESS:
        m = mean_estimate(per_seed, key, tasks, n_boot)
        row.update({key: m["value"], f"{key}_lo": m["lo"], f"{key}_hi": m["hi"], f"{key}_episodes": m["episodes"]})
    for key in _PLAIN:
        row[key] = _finite_mean([_finite_mean([e.get(key) for e in eps]) for eps in per_seed])
    row["per_task"] = {t: _finite_mean([_finite_mean([float(e["success"] and not e.get("error"))
                                                      for e in eps if e["task"] == t]) for eps in per_seed])
                       for t in tasks}
    row["first_error"] = next((e["error"] for eps in per_seed for e in eps if e.get("error")), None)
    return row


def run_realtime(policies: dict[str, Sequence[str] | str], suite_name: str, out: str | Path, *,
                 tasks: Sequence[str] | None = None, episodes: int = 20, eval_seeds: Sequence[int] = (30_000,),
                 delays: Sequence[int] = DEFAULT_DELAYS, strategies: Sequence[str] = tuple(STRATEGIES),
                 wall_clock: bool = False, control_hz: float = 10.0, on_starve: str = "hold",
                 request_remaining: int | None = None, suite_kwargs: dict[str, Any] | None = None,
                 split: str = "train", presets: dict[str, str] | None = None, warm_start: bool = False,
                 n_boot: int = N_BOOT, meta: dict[str, Any] | None = None, merge_from: str | Path | None = None,
                 load: Callable[[str], Any] = load_policy, log: Callable[[str], None] | None = print) -> dict[str, Any]:
    """Every (label, strategy, delay) cell of every training seed's policy, resuming from
    ``OUT/cells``; pools the seeds, writes ``realtime.{json,md,png}`` and returns the JSON content.
    ``policies``: {label: [policy dir per training seed]} (a single dir: one seed). ``merge_from``: a
    stored ``realtime.json`` made under the same settings whose other labels join the tables
    (:func:`merge_stored`)."""
    from eval.sim.rollout import EvalConfig, execution_problem
    from eval.sim.suites import make_suite

    from recipes.compare.artifacts import git_commit

    bad = [s for s in strategies if s not in STRATEGIES]
    if bad:
        raise ValueError(f"unknown strategies {bad}; known: {list(STRATEGIES)}")
    policies = {k: [v] if isinstance(v, (str, Path)) else list(v) for k, v in policies.items()}
    presets = presets or {}
    unknown = sorted(set(presets) - set(policies))
    if unknown:
        raise ValueError(f"--preset for unknown label(s) {unknown}; labels: {sorted(policies)}")
    out = Path(out)
    suite = make_suite(suite_name, **(suite_kwargs or {}))
    task_list = list(tasks or suite.task_names())
    seeds = [int(s) for s in eval_seeds]
    cell_delays: list[int | str] = sorted({int(d) for d in delays}) + ([WALL] if wall_clock else [])
    say = log or (lambda _msg: None)
    per_cell: dict[tuple[str, str, int | str], list[list[dict[str, Any]]]] = {}
    cpu: dict[tuple[str, str, int | str], float] = {}
    heads: dict[str, str] = {}
    skipped: list[dict[str, Any]] = []
    pol_meta: dict[str, dict[str, Any]] = {}
    for label, dirs in policies.items():
        seeds_info, settings, head, horizon = [], None, None, None
        for i, d in enumerate(dirs):
            policy = load(str(d))
            if head is None:
                first, head, horizon = policy, policy.cfg.head, int(policy.cfg.horizon)
                settings = policy_settings(policy, presets.get(label), final_eval=False)
                for strategy in strategies:
                    why = execution_problem(policy, EvalConfig(strategy=strategy))
                    if why:
                        skipped.append({"label": label, "head": head, "strategy": strategy, "delay": None, "reason": why})
                        say(f"[realtime] {label} / {strategy}: skipped ({why})")
                for dl in cell_delays:
                    if dl != WALL and dl >= horizon:
                        skipped.append({"label": label, "head": head, "strategy": None, "delay": dl,
                                        "reason": f"d = {dl} >= horizon {horizon}: every chunk after the first would "
                                                  f"arrive after its last step and be discarded"})
            else:
                check_same_head(label, first, policy, d)
            info = run_info(d)
            for strategy in strategies:
                if any(s["label"] == label and s["strategy"] == strategy for s in skipped):
                    continue
                for dl in [0] if strategy == "sync" else cell_delays:  # sync's episodes do not depend on d
                    if dl != WALL and dl >= horizon:
                        continue
                    key = {"policy": str(Path(d).resolve()), "suite": suite_name, "suite_kwargs": suite_kwargs or {},
                           "tasks": task_list, "episodes": int(episodes), "eval_seeds": seeds, "split": split,
                           "strategy": strategy, "delay": dl, "control_hz": control_hz, "on_starve": on_starve,
                           "request_remaining": request_remaining, "overrides": settings["overrides"],
                           "warm_start": bool(warm_start)}
                    path = out / "cells" / slug(label) / seed_tag(i, info) / f"{cell_name(strategy, dl)}.json"
                    eps, hit, cpu_s = timed_cached_episodes(path, key, lambda p=policy: run_cell(
                        p, suite, task_list, episodes, seeds, strategy, dl, control_hz=control_hz,
                        on_starve=on_starve, request_remaining=request_remaining, split=split,
                        overrides=settings["overrides"], warm_start=warm_start))
                    per_cell.setdefault((label, strategy, dl), []).append(eps)
                    cpu[(label, strategy, dl)] = cpu.get((label, strategy, dl), 0.0) + (cpu_s or 0.0)
                    say(f"[realtime] {label} seed {info.get('train_seed')} / {strategy} / d={dl}: "
                        + ("cached" if hit else f"success {np.mean([e['success'] for e in eps]):.2f} over {len(eps)} "
                           f"episodes, {cpu_s:.0f} CPU s"))
            seeds_info.append({"dir": str(d), **{k: v for k, v in info.items() if k != "outcomes_by_preset"},
                               "compare_outcomes": info.get("outcomes_by_preset")})
            del policy
        heads[label] = head
        pol_meta[label] = {"head": head, "preset": settings["preset"], "overrides": settings["overrides"],
                           "horizon": horizon,
                           "seeds": [{k: v for k, v in s.items() if k != "compare_outcomes"} for s in seeds_info],
                           "compare_success": None if warm_start else compare_success(
                               seeds_info, task_list, seeds, episodes, settings["preset"])}
    rows = []
    for (label, strategy, dl), per_seed in per_cell.items():
        rows.append({"label": label, "head": heads[label], "strategy": strategy, "delay": dl,
                     **pool_cell(per_seed, task_list, n_boot), "cpu_s": cpu[(label, strategy, dl)]})
    result = {
        "schema": SCHEMA,
        "meta": {**(meta or {}), "suite": suite_name, "suite_kwargs": suite_kwargs or {}, "tasks": task_list,
                 "eval_seeds": seeds, "episodes_per_task": int(episodes), "split": split, "delays": cell_delays,
                 "strategies": list(strategies), "strategy_notes": {s: STRATEGIES[s] for s in strategies},
                 "control_hz": control_hz, "on_starve": on_starve, "request_remaining": request_remaining,
                 "warm_start": bool(warm_start), "n_boot": int(n_boot), "boot_seed": BOOT_SEED, "level": 0.95,
                 "smoothness": SMOOTHNESS, "git_commit": git_commit(), "cells": str(out / "cells")},
        "policies": pol_meta,
        "rows": rows,
        "skipped": skipped,
    }
    if merge_from is not None:
        result = merge_stored(result, merge_from)
    return write_study_outputs(out, "realtime", result, to_markdown, lambda r, path: plot(r["rows"], path), log)


#: meta fields two realtime.json files must share for their rows to sit in one table
MERGE_FIELDS = ("suite", "suite_kwargs", "tasks", "eval_seeds", "episodes_per_task", "split", "delays", "strategies",
                "control_hz", "on_starve", "request_remaining", "warm_start", "n_boot", "boot_seed", "level",
                "smoothness")


def merge_stored(result: dict[str, Any], stored: str | Path) -> dict[str, Any]:
    """``result`` with the labels of a stored ``realtime.json`` that it does not run (their policies,
    rows and skipped entries, listed first), e.g. one head re-run beside a published sweep whose other
    policies are gone. ``meta.merged_from`` records the file, the labels taken and the commit that computed each
    (``label_commits``; a label the stored file had itself merged keeps its original commit).
    ValueError naming the file and field where the settings differ."""
    try:
        old = json.loads(Path(stored).read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"--merge-from {stored}: cannot read a realtime.json ({e})") from None
    if old.get("schema") != result["schema"]:
        raise ValueError(f"--merge-from {stored}: schema {old.get('schema')!r}, expected {result['schema']!r}")
    for field in MERGE_FIELDS:
        if old["meta"].get(field) != result["meta"].get(field):
            raise ValueError(f"--merge-from {stored}: meta.{field} is {old['meta'].get(field)!r}, this run has "
                             f"{result['meta'].get(field)!r}; run with the stored settings")
    taken = [label for label in old["policies"] if label not in result["policies"]]
    earlier = merged_commits(old["meta"].get("merged_from") or {})
    commits = {label: earlier.get(label, old["meta"].get("git_commit")) for label in taken}
    return {**result,
            "meta": {**result["meta"], "merged_from": {"file": str(stored), "labels": taken, "label_commits": commits}},
            "policies": {**{k: old["policies"][k] for k in taken}, **result["policies"]},
            "rows": [r for r in old["rows"] if r["label"] in taken] + result["rows"],
            "skipped": [s for s in old.get("skipped", []) if s["label"] in taken] + result["skipped"]}


def _est(r: dict[str, Any], key: str, lo: str, hi: str, nd: int) -> str:
    return estimate_cell({"value": r.get(key), "lo": r.get(lo), "hi": r.get(hi)}, nd)


def merged_commits(merged: dict[str, Any]) -> dict[str, str | None]:
    """{label: the commit that computed its cells} of a ``meta.merged_from`` ({} for none; older files
    carry one ``git_commit`` for every label)."""
    by_label = merged.get("label_commits") or {}
    return {label: by_label.get(label, merged.get("git_commit")) for label in merged.get("labels") or []}


def to_markdown(result: dict[str, Any]) -> str:
    """``realtime.md`` from the ``realtime.json`` content (nothing typed by hand)."""
    m = result["meta"]
    seeds_of = {label: ", ".join(str(s.get("train_seed")) for s in p["seeds"]) for label, p in result["policies"].items()}
    lines = ["# Real-time chunk execution: success and smoothness vs inference delay", "",
             f"Generated by `python -m recipes.studies.realtime` from `realtime.json` (git {m['git_commit']})"
             + (f"; merged from `{m['merged_from']['file']}`, cells not re-run: "
                + ", ".join(f"{k} (git {v})" for k, v in merged_commits(m['merged_from']).items()) + "."
                if m.get("merged_from") else "."),
             f"Suite {m['suite']} ({', '.join(f'{k}={v}' for k, v in m['suite_kwargs'].items()) or 'default args'}), "
             f"tasks {', '.join(m['tasks'])}; eval seeds {m['eval_seeds']} x {m['episodes_per_task']} episode(s) per "
             f"task, the same for every cell and training seed; warm start {'on' if m['warm_start'] else 'off'}; "
             f"on starve `{m['on_starve']}`; delays d in control steps"
             + (f" (`wall`: measured latency at {m['control_hz']:g} Hz)" if WALL in m["delays"] else "") + ".",
             f"Success: mean over training seeds [95% bootstrap interval over training seeds x episodes, "
             f"{m['n_boot']} replicates]; env errors count as failures. Smoothness: the same pooled mean over the "
             f"episodes where it is defined, with its interval.", "",
             "| label | head | preset, knobs | training seeds | trained at (git) | comparison's own success (same "
             "episodes) |",
             "|---|---|---|---|---|---|"]
    for label, p in result["policies"].items():
        knobs = ", ".join(f"{k}={v}" for k, v in p["overrides"].items()) or "-"
        cs = p.get("compare_success")
        commits = ", ".join(dict.fromkeys(str(s.get("train_git_commit") or "-")[:10] for s in p["seeds"]))
        lines.append(f"| {label} | {p['head']} | {p['preset'] or '-'}: {knobs} | {seeds_of[label]} | {commits} | "
                     f"{'-' if cs is None else f'{cs:.2f}'} |")
    lines += ["", "| label | strategy | d | success | per seed | max switch jump | mean sq. 2nd diff | stalls | "
              "starved | switches | gate rejections | chunk ms | episodes (errors) |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        per = ", ".join("-" if x is None else f"{x:.2f}" for x in r["per_seed"])
        lines.append(
            f"| {r['label']} | {r['strategy']} | {r['delay']} | {_est(r, 'success', 'ci_low', 'ci_high', 2)} | {per} | "
            f"{_est(r, 'max_switch_jump', 'max_switch_jump_lo', 'max_switch_jump_hi', 3)} | "
            f"{_est(r, 'mean_sq_second_diff', 'mean_sq_second_diff_lo', 'mean_sq_second_diff_hi', 4)} | "
            + " | ".join("-" if r.get(k) is None else fmt(float(r[k]), 2)
                         for k in ("stalls", "starved", "switches", "gate_rejections", "chunk_ms"))
            + f" | {r['episodes']} ({r['errors']}) |")
    lines += ["", "Smoothness: " + "; ".join(f"`{k}`: {v}" for k, v in m["smoothness"].items())
              + ". Stalls / starved: control periods per episode the loop waited for a chunk / held its last action.",
              "", "Strategies (warm start " + ("on" if m["warm_start"] else "off") + " in every cell):", ""]
    lines += [f"- `{s}`: {note}" for s, note in m["strategy_notes"].items()]
    if result["skipped"]:
        lines += ["", "Skipped:", ""]
        lines += [f"- {s['label']} ({s['head']}) / " + (f"{s['strategy']}" if s["strategy"] else f"d = {s['delay']}")
                  + f": {s['reason']}" for s in result["skipped"]]
    return "\n".join(lines) + "\n"


def plot(rows: list[dict[str, Any]], path: Path) -> Path:
    """Success, max switch jump and mean squared second difference vs delay with their intervals, one
    line per strategy (sync: a dashed level, it does not depend on d), one column per label
    (wall-clock cells are left out)."""
    plt = pyplot()
    labels = list(dict.fromkeys(r["label"] for r in rows)) or ["-"]
    metrics = [("success", "ci_low", "ci_high", "success rate"),
               ("max_switch_jump", "max_switch_jump_lo", "max_switch_jump_hi", "max jump at a switch"),
               ("mean_sq_second_diff", "mean_sq_second_diff_lo", "mean_sq_second_diff_hi", "mean sq. 2nd difference")]
    fig, axes = plt.subplots(len(metrics), len(labels), figsize=(4.2 * len(labels), 8), squeeze=False)
    for j, label in enumerate(labels):
        mine = [r for r in rows if r["label"] == label and r["delay"] != WALL]
        ds = sorted({r["delay"] for r in mine if r["strategy"] != "sync"}) or [0]
        order = list(dict.fromkeys(r["strategy"] for r in mine if r["strategy"] != "sync"))
        dodge = 0.08 * (max(ds) - min(ds) if len(ds) > 1 else 1)  # strategies side by side at each d
        for strategy in dict.fromkeys(r["strategy"] for r in mine):
            rs = sorted((r for r in mine if r["strategy"] == strategy), key=lambda r: r["delay"])
            for i, (key, lo, hi, _) in enumerate(metrics):
                y = np.array([np.nan if r[key] is None else r[key] for r in rs], float)
                ylo = np.array([np.nan if r[lo] is None else r[lo] for r in rs], float)
                yhi = np.array([np.nan if r[hi] is None else r[hi] for r in rs], float)
                ax = axes[i, j]
                if strategy == "sync":
                    line = ax.axhline(y[0], color="k", ls="--", lw=1, label="sync (any d)")
                    if np.isfinite(ylo[0]) and np.isfinite(yhi[0]):
                        ax.axhspan(ylo[0], yhi[0], color=line.get_color(), alpha=0.1)
                    continue
                err = np.nan_to_num(np.stack([y - ylo, yhi - y]), nan=0.0)
                off = (order.index(strategy) - (len(order) - 1) / 2) * dodge / max(1, len(order))
                ax.errorbar([r["delay"] + off for r in rs], y, yerr=np.clip(err, 0, None), marker="o", capsize=3,
                            label=strategy)
        axes[0, j].set_title(label)
        axes[0, j].set_ylim(-0.02, 1.05)
        for i, (*_, name) in enumerate(metrics):
            axes[i, j].set_xlabel("inference delay d (control steps)")
            axes[i, j].set_ylabel(name)
            axes[i, j].set_xticks(ds)
        axes[0, j].legend(fontsize=7)
    return save_figure(fig, path)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m recipes.studies.realtime", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_policy_arguments(p, episodes=20, default_seed=30_000)
    p.add_argument("--delays", type=int, nargs="+", default=list(DEFAULT_DELAYS), help="inference delays in control steps")
    p.add_argument("--strategies", nargs="+", default=list(STRATEGIES), choices=list(STRATEGIES))
    p.add_argument("--wall-clock", action="store_true", help="add a cell per strategy with the measured latency")
    p.add_argument("--control-hz", type=float, default=10.0, help="control rate of the --wall-clock cells")
    p.add_argument("--on-starve", choices=["hold", "block"], default="hold")
    p.add_argument("--request-remaining", type=int, default=None,
                   help="request the next chunk when this many actions remain (default horizon - n_action_steps)")
    p.add_argument("--split", choices=["train", "heldout"], default="train")
    p.add_argument("--warm-start", action="store_true", help="warm start on in every cell (default off)")
    p.add_argument("--merge-from", default=None, metavar="REALTIME.json",
                   help="a stored realtime.json made with the same settings (e.g. the published one): its labels "
                        "that this run does not run join the tables")
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
    result = run_realtime(inp.policies, inp.suite, a.out, tasks=inp.tasks or None, episodes=inp.episodes,
                          eval_seeds=inp.eval_seeds, delays=a.delays, strategies=a.strategies, wall_clock=a.wall_clock,
                          control_hz=a.control_hz, on_starve=a.on_starve, request_remaining=a.request_remaining,
                          suite_kwargs=inp.suite_kwargs(), split=a.split, presets=inp.presets, warm_start=a.warm_start,
                          n_boot=a.n_boot, meta=meta, merge_from=a.merge_from)
    if dest is not None:
        publish_study("realtime", a.out, dest)
    return result


if __name__ == "__main__":
    main()
