"""The replay report: ``OUT/replay.json`` (summary), ``replay.md``, ``replay.png`` and ``chunks.csv``
from the dict :func:`eval.real.replay.replay` returns (its keys: that module's docstring)."""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["write_report", "to_markdown", "plot"]


def _f(x: Any, fmt: str = ".4g") -> str:
    return "–" if x is None or (isinstance(x, float) and not math.isfinite(x)) else format(x, fmt)


def to_markdown(r: dict[str, Any]) -> str:
    lines = [
        f"## Replay: `{r['policy']}` on `{r['shards']}`",
        "",
        f"{r['episodes']} episodes, {r['chunks_total']} chunks (stride {r['stride']}, horizon {r['horizon']}), "
        f"embodiment {r['embodiment']}, cameras {r['cameras']}; {r['wall_s']:.1f} s ({r['ms_per_chunk']:.1f} ms/chunk).",
        f"Normalized errors divide by the per-dim scale from {r['scale_source']}.",
        "",
        "| metric | value |",
        "|---|---:|",
        f"| MAE | {_f(r['mae'])} |",
        f"| normalized MAE | {_f(r['nmae'])} |",
        f"| first-step MAE | {_f(r['first_step_mae'])} |",
        f"| success proxy (chunk nMAE < {r['threshold']}) | {_f(r['success_proxy'], '.3f')} |",
        f"| episode success proxy | {_f(r['episode_success_proxy'], '.3f')} |",
        f"| Spearman(energy, chunk nMAE) | {_f(r['energy_error_spearman'], '.3f')} |",
        f"| Spearman(steps, chunk nMAE) | {_f(r['steps_error_spearman'], '.3f')} |",
        "",
        "| action dim | MAE | RMSE | nMAE | scale |",
        "|---:|---:|---:|---:|---:|",
    ]
    pd = r["per_dim"]
    for d in range(len(pd["mae"])):
        lines.append(f"| {d} | {_f(pd['mae'][d])} | {_f(pd['rmse'][d])} | {_f(pd['nmae'][d])} | {_f(pd['scale'][d])} |")
    lines += ["", "| chunk step | MAE | nMAE | chunks |", "|---:|---:|---:|---:|"]
    ps = r["per_step"]
    for h in range(len(ps["mae"])):
        lines.append(f"| {h} | {_f(ps['mae'][h])} | {_f(ps['nmae'][h])} | {ps['count'][h]} |")
    return "\n".join(lines) + "\n"


def plot(r: dict[str, Any], path: str | Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(2, 2, figsize=(10, 7.5))
    ps = r["per_step"]
    hs = [h for h, v in enumerate(ps["nmae"]) if v is not None]
    ax[0, 0].plot(hs, [ps["nmae"][h] for h in hs], marker="o")
    ax[0, 0].set(title="error per chunk step", xlabel="chunk step h", ylabel="normalized MAE")
    ax[0, 0].set_xticks(range(len(ps["nmae"])))
    pd = r["per_dim"]
    ax[0, 1].bar(range(len(pd["nmae"])), pd["nmae"])
    ax[0, 1].set(title="error per action dim", xlabel="action dim", ylabel="normalized MAE")
    ax[0, 1].set_xticks(range(len(pd["nmae"])))
    cn = np.array([c["nmae"] for c in r["chunks"]])
    if r["mean_energy"] is not None:
        en = np.array([c["energy"] for c in r["chunks"]])
        ax[1, 0].scatter(en, cn, s=6, alpha=0.5)
        ax[1, 0].set(title=f"energy vs error (Spearman {_f(r['energy_error_spearman'], '.3f')})",
                     xlabel="final energy", ylabel="chunk normalized MAE")
    else:
        ax[1, 0].text(0.5, 0.5, "no energies (not an EBT head)", ha="center", va="center")
        ax[1, 0].set_axis_off()
    ax[1, 1].hist(cn, bins=30)
    ax[1, 1].axvline(r["threshold"], color="r", ls="--", label=f"threshold {r['threshold']}")
    ax[1, 1].set(title=f"chunk error (success proxy {r['success_proxy']:.3f})", xlabel="chunk normalized MAE",
                 ylabel="chunks")
    ax[1, 1].legend()
    fig.suptitle(f"replay of {r['policy']} on {r['dataset']} ({r['episodes']} episodes)")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def write_report(r: dict[str, Any], out: str | Path, make_plot: bool = True) -> dict[str, Path]:
    """OUT/replay.json (without per-chunk records), replay.md, replay.png, chunks.csv."""
    from vla_ebt.config_io import atomic_write_text, json_safe

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "replay.json", "markdown": out / "replay.md", "chunks": out / "chunks.csv"}
    summary = {k: v for k, v in r.items() if k != "chunks"}
    atomic_write_text(paths["json"], json.dumps(json_safe(summary), indent=2))
    atomic_write_text(paths["markdown"], to_markdown(r))
    buf = io.StringIO()
    fields = ["episode", "key", "t", "valid_steps", "mae", "nmae", "first_step_mae", "energy", "steps"]
    w = csv.DictWriter(buf, fieldnames=fields)
    w.writeheader()
    for c in r["chunks"]:
        w.writerow({k: ("" if c[k] is None else c[k]) for k in fields})
    atomic_write_text(paths["chunks"], buf.getvalue())
    if make_plot:
        paths["plot"] = plot(r, out / "replay.png")
    return paths
