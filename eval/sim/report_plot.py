"""The evaluation report plot: success per task with 95 % Wilson intervals, chunk latency and
mean energy per task (matplotlib's Agg canvas; pyplot and the global backend are not touched)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from vla_ebt.config_io import atomic_path

__all__ = ["plot_report"]


def _finite(x: Any) -> float:
    return float(x) if x is not None and math.isfinite(float(x)) else float("nan")


def plot_report(report: Any, path: str | Path, title: str | None = None) -> Path:
    """Write a PNG of ``report`` (an :class:`eval.sim.rollout.EvalReport`) to ``path`` atomically.

    Panels: success rate per task and overall (error bars: the 95 % Wilson interval), mean chunk
    latency (ms) per task, mean final energy per task ("n/a" when the policy reports none).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows = [*report.tasks.values(), report.overall]
    names = [t.task for t in rows]
    x = np.arange(len(rows))
    rate = np.array([_finite(t.success_rate) for t in rows])
    lo = np.array([t.ci_low for t in rows])
    hi = np.array([t.ci_high for t in rows])
    rate0 = np.nan_to_num(rate)
    yerr = np.stack([np.clip(rate0 - lo, 0, None), np.clip(hi - rate0, 0, None)])

    fig = Figure(figsize=(max(9.0, 1.2 * len(rows) + 6.0), 3.8), layout="constrained")
    FigureCanvasAgg(fig)
    ax_s, ax_l, ax_e = fig.subplots(1, 3, width_ratios=[2, 1, 1])
    colors = ["tab:blue"] * (len(rows) - 1) + ["tab:gray"]
    ax_s.bar(x, rate0, color=colors, yerr=yerr, capsize=4)
    for xi, r, t in zip(x, rate0, rows):
        ax_s.text(xi, min(r + 0.03, 1.02), f"{t.successes}/{t.episodes}", ha="center", va="bottom", fontsize=8)
    ax_s.set_ylim(0, 1.12)
    ax_s.set_ylabel("success rate (95% Wilson CI)")
    ax_s.set_xticks(x, names, rotation=30, ha="right", fontsize=8)
    ax_s.set_title("success")

    for ax, key, label in ((ax_l, "mean_chunk_latency_ms", "chunk latency (ms)"), (ax_e, "mean_energy", "mean energy")):
        vals = np.array([_finite(getattr(t, key)) for t in rows[:-1]])
        xs = x[:-1]
        if np.isfinite(vals).any():
            ax.bar(xs, np.nan_to_num(vals), color="tab:orange" if key == "mean_energy" else "tab:green")
        else:
            ax.text(0.5, 0.5, "n/a", ha="center", va="center", transform=ax.transAxes, color="gray")
            ax.set_yticks([])
        ax.set_xticks(xs, names[:-1], rotation=30, ha="right", fontsize=8)
        ax.set_title(label)
    seeds = getattr(report, "seeds", None) or [report.seed]
    fig.suptitle(title or f"{report.suite} · {report.policy} · {report.split} instructions · seeds {seeds}", fontsize=10)

    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    return path
