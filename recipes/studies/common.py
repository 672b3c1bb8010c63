"""Shared study pieces: loading policies, head overrides, per-chunk signal recording, AUROC,
and writing a study's table (markdown + JSON) and plot atomically."""

from __future__ import annotations

import contextlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from vla_ebt.config_io import atomic_write_text, json_safe

__all__ = ["auroc", "predict_overrides", "SignalRecorder", "load_policy", "write_study", "fmt", "pyplot", "save_figure"]


def auroc(scores: Sequence[float], labels: Sequence[bool | int]) -> float:
    """Area under the ROC curve of ``scores`` for predicting ``labels`` (1 = positive).

    Mann-Whitney form: P(score of a random positive > score of a random negative), ties count 1/2.
    NaN when either class is empty; NaN scores are dropped with their labels.
    """
    s = np.asarray(scores, np.float64)
    y = np.asarray(labels, bool)
    if s.shape != y.shape:
        raise ValueError(f"auroc: {s.shape[0]} scores but {y.shape[0]} labels")
    keep = np.isfinite(s)
    s, y = s[keep], y[keep]
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    # average ranks over ties (1-based), vectorized: a tie group of values i..j gets (i + j) / 2 + 1
    _, inverse, counts = np.unique(s, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)
    ranks = (ends - (counts - 1) / 2.0)[inverse]
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def predict_overrides(policy: Any, **overrides: Any) -> contextlib.AbstractContextManager:
    """Within the block, every head prediction of ``policy`` uses ``overrides`` (e.g. ``num_steps=4``,
    ``min_grad=1e-3``, ``sampler="ddim"``) unless the call passes the same knob; knobs the head does
    not declare raise ValueError (``head.inference_overrides``)."""
    return policy.head.inference_overrides(**overrides)


@dataclass
class ChunkSignals:
    """Per-chunk candidate uncertainty signals of one episode (lists, one entry per chunk)."""

    energy: list[float] = field(default_factory=list)  # final energy
    energy_drop: list[float] = field(default_factory=list)  # energy before the first step - final
    grad_norm: list[float] = field(default_factory=list)  # final ||dE/da||
    candidate_spread: list[float] = field(default_factory=list)  # std of the N extra chains' final energies
    sample_spread: list[float] = field(default_factory=list)  # N extra samples: mean per-dim std of the chunks
    steps: list[float] = field(default_factory=list)
    nfe: list[float] = field(default_factory=list)  # network evaluations (ChunkPrediction.nfe)
    plan_step: list[int] = field(default_factory=list)  # env step at which the chunk was planned (-1: unknown)
    acted: int = 0  # control steps the policy acted on (select_action calls) in this episode


class SignalRecorder:
    """Records :class:`ChunkSignals` for every chunk the policy plans, without changing its actions.

    Every chunk records its steps, network evaluations and the env step it was planned at
    (``step``, kept up to date by :func:`recipes.studies.episodes.run_study_episodes`). Heads that
    report energy (EBT) also record the final energy, the energy drop over the chain and the final
    gradient norm. With ``spread_candidates = N > 1`` every chunk also draws N extra samples from the
    same observation (one batched ``predict`` on the context repeated N times, same knobs, cold:
    no warm start, one chain each; not executed, and under a forked RNG so the executed chunks are
    unchanged): ``sample_spread`` is their per-dimension std over the N chunks, averaged over the
    horizon and the first ``spread_dims`` action dimensions (None: all; the rest are padding),
    for every head (0 for a deterministic sampler); heads that report energy add
    ``candidate_spread``, the std of the N final energies. Use as a context manager around the
    episodes (it attaches a predict hook to ``policy.head``); call :meth:`new_episode` before each.
    """

    def __init__(self, policy: Any, spread_candidates: int = 0, spread_dims: int | None = None) -> None:
        self.policy = policy
        self.spread_candidates = int(spread_candidates)
        self.spread_dims = spread_dims
        self.episodes: list[ChunkSignals] = []
        self.step = -1  # env step of the current control call (-1: unknown)
        self._handle: Any = None

    def new_episode(self) -> None:
        self.episodes.append(ChunkSignals())
        self.step = -1

    def _record(self, head: Any, context: Any, init: Any, knobs: dict[str, Any], pred: Any) -> None:
        if not self.episodes:
            self.new_episode()
        sig = self.episodes[-1]
        sig.nfe.append(float(pred.nfe))
        sig.plan_step.append(int(self.step))
        energy = head.capabilities.reports_energy
        if energy:
            tr = pred.energy_trace  # (K+1, B)
            sig.energy.append(float(pred.energy[0]))
            sig.grad_norm.append(float(pred.grad_norm[0]))
            sig.energy_drop.append(float(tr[0, 0] - tr[-1, 0]) if tr is not None else float("nan"))
            sig.steps.append(float(pred.steps.float()[0]))
        else:
            sig.steps.append(float(pred.steps.float().mean()))
        n = self.spread_candidates
        if n > 1:
            with torch.random.fork_rng():  # the executed chunk's noise stream is unchanged
                ctx_n = context.repeat_interleave(n)  # N independent samples of every observation
                many = head.predict(ctx_n, None, **{k: v for k, v in knobs.items() if k != "num_candidates"})
            acts = many.actions.detach().float()
            acts = acts.view(-1, n, *acts.shape[1:])[0]  # (N, H, D) of the first sample
            if self.spread_dims is not None:
                acts = acts[..., : self.spread_dims]
            sig.sample_spread.append(float(acts.std(0).mean()))
            if energy:
                sig.candidate_spread.append(float(many.energy.detach().view(-1, n)[0].std()))

    def __enter__(self) -> "SignalRecorder":
        self._handle = self.policy.head.register_predict_hook(self._record)
        return self

    def __exit__(self, *exc: Any) -> None:
        self._handle.remove()


def load_policy(path: str | Path) -> Any:
    """``VLAPolicy.from_pretrained(path)`` in eval mode, with a clear error for a bad directory."""
    from vla_ebt.policy import VLAPolicy

    p = Path(path)
    if not (p / "config.json").exists():
        raise FileNotFoundError(f"{p}: not a saved policy directory (no config.json; expected save_pretrained output)")
    policy = VLAPolicy.from_pretrained(p)
    policy.eval()
    return policy


def fmt(x: Any, nd: int = 3) -> str:
    """Table cell: floats rounded, NaN as '-'."""
    if isinstance(x, float):
        if math.isnan(x):
            return "-"
        return f"{x:.2g}" if 0 < abs(x) < 10**-nd else f"{x:.{nd}f}"  # thresholds like 1e-4 stay visible
    return str(x)


def write_study(out_dir: str | Path, name: str, rows: list[dict[str, Any]], columns: Sequence[str],
                meta: dict[str, Any] | None = None, title: str = "") -> Path:
    """Write ``OUT/name.json`` ({"meta", "rows"}) and ``OUT/name.md`` (a table of ``columns``);
    returns the markdown path. Also prints the table."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / f"{name}.json", json.dumps(json_safe({"meta": meta or {}, "rows": rows}), indent=2))
    lines = [f"# {title or name}", ""]
    if meta:
        lines += [", ".join(f"{k}: {v}" for k, v in meta.items() if not isinstance(v, (dict, list))), ""]
    lines += ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for r in rows:
        lines.append("| " + " | ".join(fmt(r.get(c, "")) for c in columns) + " |")
    text = "\n".join(lines) + "\n"
    atomic_write_text(out / f"{name}.md", text)
    print(text)
    return out / f"{name}.md"


def pyplot() -> Any:
    """matplotlib.pyplot on the headless Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, path: Path) -> Path:
    """tight_layout, write ``path`` (parents created, 100 dpi), close the figure."""
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    pyplot().close(fig)
    return path
