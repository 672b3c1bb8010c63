"""From artifacts to numbers and words: the cells of a comparison (one per suite x protocol x head x
evaluation row, pooled over training seeds), their estimates, markdown tables and the generated
sentences that say which head wins where (only where :func:`~recipes.compare.stats.separates`)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from .stats import Estimate, auc_estimate, separates, success_estimate

__all__ = ["Cell", "build_cells", "table", "mode_table", "verdicts", "section", "group_title"]


@dataclass
class Cell:
    """One evaluation row of one head under one protocol on one suite, over its training seeds."""

    suite: str
    protocol: str
    head: str
    label: str
    warm_start: bool
    seeds: list[int]
    steps: list[int]
    final: Estimate
    auc: Estimate
    curve: list[float]  # mean success per checkpoint
    curve_seconds: list[float]  # mean training seconds per checkpoint
    cost: dict[str, float]
    train_samples_per_s: float
    train_seconds: float
    cpu_seconds: float  # summed over the seeds' runs
    eval_cpu_seconds: float | None = None  # the evaluation part of cpu_seconds (None: not split in an artifact)
    tasks: tuple[str, ...] = ()
    hparams: list[tuple[float, float]] = field(default_factory=list)
    tuned: bool = True  # False where a run trained at settings it was not tuned for (--fixed-hparams, no tuning)
    episodes: int = 0  # per seed (tasks x eval seeds x episodes) at the final checkpoint
    curve_episodes: int = 0  # per seed at every checkpoint (the learning curve's AUC)
    load: tuple[float, int] | None = None  # highest 1-min load average seen after an evaluation, cores
    # share of the last checkpoint's episodes that ended in each value of the suite's episode ``mode``
    # (e.g. reach2d_detour: left / right / collision / none), when every seed's artifact recorded it
    modes: dict[str, Estimate] | None = None


def _nanmean(xs: Sequence[Any]) -> float:
    v = [float(x) for x in xs if x is not None and not (isinstance(x, float) and math.isnan(x))]
    return float(np.mean(v)) if v else float("nan")


def group_title(suite: str, protocol: str) -> str:
    return f"{suite}, {protocol} backbone"


def build_cells(artifacts: Sequence[dict[str, Any]]) -> dict[tuple[str, str], list[Cell]]:
    """{(suite, protocol): [Cell, ...]} in head then row order. ValueError when runs of one
    (suite, protocol) were evaluated on different episodes or checkpoints (not comparable)."""
    groups: dict[tuple[str, str], dict[str, list[dict[str, Any]]]] = {}
    for a in artifacts:
        if a["stage"] == "final":
            groups.setdefault((a["suite"], a["protocol"]), {}).setdefault(a["head"], []).append(a)
    out: dict[tuple[str, str], list[Cell]] = {}
    for (suite, protocol), heads in sorted(groups.items()):
        ref = next(iter(heads.values()))[0]
        def episodes_of(r: dict[str, Any]) -> tuple[Any, ...]:
            return r["eval_seeds"], r["episodes_per_task"], r.get("curve_episodes_per_task", r["episodes_per_task"]), r["tasks"]

        episodes_key = episodes_of(ref)
        cells = []
        for head, runs in heads.items():
            for r in runs:
                if episodes_of(r) != episodes_key:
                    raise ValueError(f"{suite}/{protocol}: {head} seed {r['train_seed']} was evaluated on other "
                                     f"episodes ({r['eval_seeds']} x {r['episodes_per_task']}) than {ref['head']} "
                                     f"seed {ref['train_seed']} ({ref['eval_seeds']} x {ref['episodes_per_task']})")
            runs = sorted(runs, key=lambda r: r["train_seed"])
            for label in [row["label"] for row in runs[0]["rows"]]:
                cells.append(_cell(suite, protocol, head, label, runs))
        out[(suite, protocol)] = cells
    return out


def _cell(suite: str, protocol: str, head: str, label: str, runs: list[dict[str, Any]]) -> Cell:
    tasks = runs[0]["tasks"]
    rows = []
    for r in runs:
        match = [x for x in r["rows"] if x["label"] == label]
        if not match:
            raise ValueError(f"{suite}/{protocol}/{head} seed {r['train_seed']}: no row {label!r}")
        rows.append(match[0])
    steps = [c["step"] for c in rows[0]["curve"]]
    if any([c["step"] for c in row["curve"]] != steps for row in rows):
        raise ValueError(f"{suite}/{protocol}/{head}/{label}: seeds were evaluated at different checkpoints")
    n_seeds = [len(r["eval_seeds"]) for r in runs]
    # the learning curve (AUC) uses, at every checkpoint, the episodes every checkpoint ran: the first
    # ``per`` of each eval seed (``--curve-episodes``); the final success uses all of the last checkpoint's
    per = min(len(c["outcomes"][t]) // k for row, k in zip(rows, n_seeds) for c in row["curve"] for t in tasks)

    def head_of(xs: list[int], k: int) -> list[int]:
        block = len(xs) // k  # outcomes are eval-seed-major
        return [x for s in range(k) for x in xs[s * block:s * block + per]]

    final_outcomes = [np.concatenate([row["curve"][-1]["outcomes"][t] for t in tasks]).astype(float) for row in rows]
    final_labels = [np.concatenate([[i] * len(row["curve"][-1]["outcomes"][t]) for i, t in enumerate(tasks)])
                    for row in rows]
    labels = [np.concatenate([[i] * per * k for i, _ in enumerate(tasks)]) for k in n_seeds]
    curves = [np.array([np.concatenate([head_of(c["outcomes"][t], k) for t in tasks]) for c in row["curve"]], float)
              for row, k in zip(rows, n_seeds)]
    return Cell(
        modes=_mode_shares([row["curve"][-1].get("episode_info") for row in rows], tasks, final_labels),
        suite=suite, protocol=protocol, head=head, label=label, warm_start=bool(rows[0]["warm_start"]),
        seeds=[r["train_seed"] for r in runs], steps=steps,
        final=success_estimate(final_outcomes, final_labels), auc=auc_estimate(curves, labels, steps),
        curve=[float(np.mean([np.mean(np.concatenate([row["curve"][k]["outcomes"][t] for t in tasks])) for row in rows]))
               for k in range(len(steps))],
        curve_seconds=[_nanmean([row["curve"][k]["train_seconds"] for row in rows]) for k in range(len(steps))],
        cost={k: _nanmean([row["cost"].get(k) for row in rows]) for k in ("nfe", "forward_equiv", "head_ms", "policy_ms")},
        train_samples_per_s=_nanmean([r["cost"].get("train_samples_per_s") for r in runs]),
        train_seconds=_nanmean([r["train_seconds"] for r in runs]),
        cpu_seconds=float(sum(r["cpu_seconds"] or 0.0 for r in runs)),
        eval_cpu_seconds=(float(sum(r["eval_cpu_seconds"] for r in runs))
                          if all(r.get("eval_cpu_seconds") is not None for r in runs) else None),
        tasks=tuple(tasks),
        hparams=sorted({(r["hparams"]["lr"], r["hparams"]["ema_decay"]) for r in runs}),
        tuned=all(r["hparams"].get("tuned", True) for r in runs),
        episodes=int(final_outcomes[0].shape[0]), curve_episodes=int(curves[0].shape[1]),
        load=max(((r["cost"]["load_avg_1min"], r["cost"].get("cpu_count") or 0) for r in runs
                  if r["cost"].get("load_avg_1min") is not None), default=None),
    )


def _mode_shares(infos: list[dict[str, Any] | None], tasks: Sequence[str],
                 labels: list[np.ndarray]) -> dict[str, Estimate] | None:
    """{mode: share of the episodes with that final ``mode``, pooled over seeds with its interval} from
    each seed's ``episode_info`` (same episode order as the outcomes); None unless every seed has it."""
    if not infos or any(not i or any("mode" not in (i.get(t) or {}) for t in tasks) for i in infos):
        return None
    vals = [np.array([str(m) for t in tasks for m in i[t]["mode"]], dtype=object) for i in infos]
    if any(v.shape[0] != lab.shape[0] for v, lab in zip(vals, labels)):
        return None  # recorded on other episodes than the outcomes
    names = sorted({m for v in vals for m in v})
    return {m: success_estimate([(v == m).astype(float) for v in vals], labels) for m in names}


def mode_table(cells: Sequence[Cell]) -> list[str]:
    """Markdown lines: a caption and, per cell, the share of final-checkpoint episodes in each mode with
    its interval, then a blank line ([] when no cell recorded modes)."""
    with_modes = [c for c in cells if c.modes]
    if not with_modes:
        return []
    names = sorted({m for c in with_modes for m in c.modes})
    lines = ["Share of the last checkpoint's episodes ending in each mode (the suite's `mode` of an episode), "
             "with 95% intervals:", "",
             "| head / row | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for c in with_modes:
        lines.append(f"| {c.label} | " + " | ".join(c.modes[m].fmt() if m in c.modes else "0.00" for m in names) + " |")
    return lines + [""]


def _f(x: float, nd: int = 1) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{nd}f}"


def table(cells: Sequence[Cell]) -> str:
    """Markdown: one line per cell."""
    lines = ["| head / row | seeds x episodes | final success [95% CI] | learning-curve AUC [95% CI] | "
             "forward equiv. / chunk | head ms | policy ms | train samples/s | train s | lr, EMA |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for c in cells:
        hp = "; ".join(f"{lr:g}, {ema:g}" for lr, ema in c.hparams) + ("" if c.tuned else " (untuned)")
        lines.append(f"| {c.label} | {len(c.seeds)} x {c.episodes} | {c.final.fmt()} | {c.auc.fmt()} | "
                     f"{_f(c.cost['forward_equiv'])} ({_f(c.cost['nfe'])} nfe) | {_f(c.cost['head_ms'])} | "
                     f"{_f(c.cost['policy_ms'])} | {_f(c.train_samples_per_s)} | {_f(c.train_seconds, 0)} | {hp} |")
    return "\n".join(lines)


def curve_table(cells: Sequence[Cell]) -> str:
    """Markdown: mean success (over seeds) at every checkpoint, with the mean training seconds."""
    steps = cells[0].steps
    lines = ["| head / row | " + " | ".join(f"step {s}" for s in steps) + " |", "|---" * (len(steps) + 1) + "|"]
    for c in cells:
        pts = [f"{y:.2f} ({_f(t, 0)} s)" if c.steps == steps else "-" for y, t in zip(c.curve, c.curve_seconds)]
        lines.append(f"| {c.label} | " + " | ".join(pts) + " |")
    return "\n".join(lines)


def _vs(a: Cell, b: Cell, metric: str) -> tuple[str, float]:
    ea, eb = getattr(a, metric), getattr(b, metric)
    d = ea.value - eb.value
    if not separates(ea, eb):
        return "no separation", d
    return ("beats" if d > 0 else "loses to"), d


def verdicts(cells: Sequence[Cell], focus: str) -> list[str]:
    """Sentences for one (suite, protocol): the best row, the focus head's rows against every other
    head's rows (final success and AUC), warm start on vs off, and the cost per chunk."""
    out = []
    best = max(cells, key=lambda c: c.final.value)
    beaten = [c for c in cells if c.head != best.head and separates(best.final, c.final) and best.final.value > c.final.value]
    tied = [c for c in cells if c.head != best.head and not separates(best.final, c.final)]
    s = f"Highest final success: **{best.label}** {best.final.fmt()}"
    if beaten:
        s += f"; it beats {'every other head: ' if not tied else ''}"
        s += ", ".join(f"{c.label} ({c.final.value:.2f})" for c in beaten)
    if tied:
        s += f"; it is not separated from {', '.join(f'{c.label} ({c.final.value:.2f})' for c in tied)}"
    out.append(s + ".")
    mine = [c for c in cells if c.head == focus]
    others = [c for c in cells if c.head != focus]
    for c in mine if others else []:
        for metric, name in (("final", "final success"), ("auc", "learning-curve AUC")):
            by: dict[str, list[str]] = {"beats": [], "loses to": [], "no separation": []}
            for o in others:
                v, d = _vs(c, o, metric)
                by[v].append(f"{o.label} {getattr(o, metric).fmt()} ({d:+.2f})")
            parts = [f"beats {'; '.join(by['beats'])}" if by["beats"] else "",
                     f"**loses to** {'; '.join(by['loses to'])}" if by["loses to"] else "",
                     f"is not separated from {'; '.join(by['no separation'])}" if by["no separation"] else ""]
            out.append(f"{name[0].upper()}{name[1:]}, {c.label} {getattr(c, metric).fmt()}: " + ", ".join(p for p in parts if p) + ".")
    for w in (c for c in cells if c.warm_start):
        base = [c for c in cells if c.head == w.head and not c.warm_start and w.label == f"{c.label} +warm"]
        if base:
            v, d = _vs(w, base[0], "final")
            word = {"beats": "helps", "loses to": "hurts", "no separation": "makes no separable difference"}[v]
            out.append(f"Warm start on {base[0].label}: {w.final.fmt()} vs {base[0].final.fmt()} off ({d:+.2f}): it {word}.")
    cheap = sorted(cells, key=lambda c: (c.cost["forward_equiv"] if not math.isnan(c.cost["forward_equiv"]) else 1e9))
    out.append("Cost per chunk (forward-pass equivalents, head / policy ms at batch 1): " + "; ".join(
        f"{c.label} {_f(c.cost['forward_equiv'])}, {_f(c.cost['head_ms'])} / {_f(c.cost['policy_ms'])} ms"
        for c in cheap if not c.warm_start) + ". Training samples/s: " + ", ".join(
        f"{h} {_f(next(c.train_samples_per_s for c in cells if c.head == h))}" for h in dict.fromkeys(c.head for c in cells)) + ".")
    return out


def section(groups: dict[tuple[str, str], list[Cell]], focus: str, source: str,
            extras: dict[tuple[str, str], list[str]] | None = None) -> str:
    """The README's generated results section (without the markers); ``extras[(suite, protocol)]``:
    markdown lines placed after that group's sentences (the published studies' summaries)."""
    if not groups:
        return ("No comparison results yet: run `python -m recipes.compare ... --publish` "
                "(docs/comparison_protocol.md).\n")
    lines = [f"Generated by `python -m recipes.results` from the artifacts in `{source}` (do not edit by hand). "
             "Intervals: 95% bootstrap over training seeds x evaluation episodes; \"beats\" only where the "
             "intervals do not overlap.", ""]
    for (suite, protocol), cells in groups.items():
        c0 = cells[0]
        loads = [c.load for c in cells if c.load is not None]
        busy = max(loads) if loads else None
        note = (f"; ms and seconds measured on an oversubscribed machine, load {busy[0]:.1f} on {busy[1]} cores"
                if busy is not None and busy[0] > busy[1] else "")
        curve_n = (f" ({c0.curve_episodes} at the earlier ones and in the learning-curve AUC)"
                   if c0.curve_episodes != c0.episodes else "")
        lines += [f"**{group_title(suite, protocol)}** ({len(c0.seeds)} training seed(s) x {c0.episodes} evaluation "
                  f"episodes at the last checkpoint{curve_n}, {c0.steps[-1]} steps, checkpoints at "
                  f"{', '.join(map(str, c0.steps))}{note}):", "",
                  table(cells), ""]
        lines += mode_table(cells)
        lines += [f"* {s}" for s in verdicts(cells, focus)]
        extra = (extras or {}).get((suite, protocol))
        lines += list(extra or [])
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"
