"""Plots of a run's metrics.jsonl (matplotlib, Agg canvas: no display, no pyplot global state).

    plot_run(run_dir) -> [run_dir/plots/train.png, run_dir/plots/eval_success.png (if evaluated)]

``train.png``: one panel per training metric present (loss on a log axis, lr, grad norm, samples/s,
EBT energy before/after minimization, EBT steps), x = optimizer step.
``eval_success.png``: periodic closed-loop success (mean and per task) vs step.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Sequence

# (metrics.jsonl keys drawn in one panel, panel title, log y axis)
PANELS: list[tuple[tuple[str, ...], str, bool]] = [
    (("loss",), "loss", True),
    (("lr",), "learning rate", False),
    (("grad_norm",), "grad norm (before clipping)", True),
    (("samples_per_s",), "samples / s", False),
    (("energy_start", "energy_end"), "EBT energy before / after minimization", False),
    (("unroll_steps",), "EBT minimization steps", False),
]

LABELS = {"energy_start": "before (first point)", "energy_end": "after (last point)"}


def read_metrics(path: str | Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """metrics.jsonl -> (training records, eval records); eval records have no "loss" key."""
    train, evals = [], []
    for ln in Path(path).read_text().splitlines():
        if not ln.strip():
            continue
        rec = json.loads(ln)
        (train if "loss" in rec else evals).append(rec)
    return train, evals


def _series(recs: Sequence[dict[str, Any]], key: str) -> tuple[list[float], list[float]]:
    xs, ys = [], []
    for r in recs:
        v = r.get(key)
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
            xs.append(r["step"])
            ys.append(float(v))
    return xs, ys


def _figure(n_panels: int):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    cols = min(3, n_panels)
    rows = math.ceil(n_panels / cols)
    fig = Figure(figsize=(4.5 * cols, 3.2 * rows), layout="constrained")
    FigureCanvasAgg(fig)
    return fig, [fig.add_subplot(rows, cols, i + 1) for i in range(n_panels)]


def plot_run(run_dir: str | Path) -> list[Path]:
    """Write the plots of ``run_dir/metrics.jsonl`` into ``run_dir/plots/``; returns the files written."""
    run_dir = Path(run_dir)
    mpath = run_dir / "metrics.jsonl"
    if not mpath.exists():
        return []
    train, evals = read_metrics(mpath)
    out_dir = run_dir / "plots"
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    panels = [(keys, title, log) for keys, title, log in PANELS if any(_series(train, k)[0] for k in keys)]
    if panels:
        fig, axes = _figure(len(panels))
        for ax, (keys, title, log) in zip(axes, panels):
            for k in keys:
                xs, ys = _series(train, k)
                if xs:
                    ax.plot(xs, ys, label=LABELS.get(k, k) if len(keys) > 1 else None)
            if log and all(y > 0 for k in keys for y in _series(train, k)[1]):
                ax.set_yscale("log")
            ax.set_title(title)
            ax.set_xlabel("step")
            ax.grid(alpha=0.3)
            if len(keys) > 1:
                ax.legend()
        fig.suptitle(str(run_dir))
        written.append(out_dir / "train.png")
        fig.savefig(written[-1], dpi=100)
    if evals:
        fig, (ax,) = _figure(1)
        keys = sorted({k for r in evals for k in r if k.startswith("eval/success")})
        for k in keys:
            xs, ys = _series(evals, k)
            ax.plot(xs, ys, marker="o", label="mean" if k == "eval/success" else k.rsplit("/", 1)[-1],
                    linewidth=2.5 if k == "eval/success" else 1.0)
        ax.set_ylim(-0.02, 1.02)
        ax.set_xlabel("step")
        ax.set_ylabel("closed-loop success (EMA weights)")
        ax.grid(alpha=0.3)
        ax.legend()
        written.append(out_dir / "eval_success.png")
        fig.savefig(written[-1], dpi=100)
    return written
