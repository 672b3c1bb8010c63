"""Scaling sweep: head size x backbone x number of embodiments, one short fine-tuning run per point.

    python recipes/finetune.py --recipe scaling [--base-recipe default] [options]   # same as:
    python -m recipes.scaling --heads 64x1 128x2 256x4 --backbones recipe composite_s32 --steps 300
    python -m recipes.scaling --base-recipe oxe_mix --shards shards/bridge shards/fractal20220817_data \\
        --embodiments 1 2 --backbones recipe --heads 256x4 512x8 --base.deepspeed ""
    python -m recipes.scaling --help

Every point is ``recipes.finetune.run`` on the base recipe (any field overridable as
``--base.<field>``) with the trunk width x depth, backbone and mixture of that point, in
``out/points/<point>/`` (metrics, TensorBoard, plots, policy). Axes:

* ``heads``: ``WIDTHxDEPTH`` of the action-head trunk (heads = max(1, width // 32)).
* ``backbones``: a preset of :data:`BACKBONES` or ``family:model`` (e.g. ``paligemma:google/paligemma-3b-pt-224``).
* ``embodiments``: k = the first k folders of ``shards`` as the training mixture (shard data). With
  sim data (no ``shards``) the only value is 1 (one simulated robot).

Results: ``out/results.json`` (the sweep config + one row per point), ``out/results.md`` (table) and
``out/scaling.png``: final training loss (mean of the last 10 steps) and closed-loop success (sim
data only) against parameters (total) and against training compute, measured both as
steps x batch x parameters ("param-samples", proportional to FLOPs for a fixed architecture) and as
training seconds.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from recipes.configs import TrainConfig, recipes  # noqa: E402
from vla_ebt import config_io  # noqa: E402
from vla_ebt.backbones import BackboneConfig  # noqa: E402


def _recipe_backbone(base: BackboneConfig, assets: Path) -> BackboneConfig:  # noqa: ARG001
    return base


def _composite_s32(base: BackboneConfig, assets: Path) -> BackboneConfig:  # noqa: ARG001
    """EfficientNet-Lite0 up to its final stride-32 map (all blocks, 1280 channels) + MiniLM."""
    return BackboneConfig(family="composite", model="efficientnet_lite0+all-MiniLM-L6-v2", image_size=base.image_size,
                          max_text_tokens=base.max_text_tokens, extra={"feature_stride": "32"})


def _composite_s16(base: BackboneConfig, assets: Path) -> BackboneConfig:  # noqa: ARG001
    """EfficientNet-Lite0 up to stride 16 (later blocks dropped, 112 channels) + MiniLM (the default recipe's)."""
    return BackboneConfig(family="composite", model="efficientnet_lite0+all-MiniLM-L6-v2", image_size=base.image_size,
                          max_text_tokens=base.max_text_tokens, extra={"feature_stride": "16"})


def _composite_tiny_text(base: BackboneConfig, assets: Path) -> BackboneConfig:
    """EfficientNet-Lite0 stride 16 + a tiny random-init 2-layer BERT (width 64) instead of MiniLM."""
    from vla_ebt.backbones.tiny import build_tiny_text_encoder

    d = assets / "tiny_text"
    if not (d / "config.json").exists():
        build_tiny_text_encoder(d)
    return BackboneConfig(family="composite", model="efficientnet_lite0+" + str(d), image_size=base.image_size,
                          max_text_tokens=base.max_text_tokens, extra={"feature_stride": "16"})


def _tiny_paligemma(base: BackboneConfig, assets: Path) -> BackboneConfig:  # noqa: ARG001
    """The tiny random-init PaliGemma fixture (SigLIP + Gemma, width 64, 2 layers, 64 px)."""
    from vla_ebt.backbones.tiny import build_tiny_paligemma

    d = assets / "tiny_paligemma"
    if not (d / "config.json").exists():
        build_tiny_paligemma(d)
    return BackboneConfig(family="paligemma", model=str(d), image_size=64, max_text_tokens=base.max_text_tokens)


#: Backbone presets: name -> (base recipe's BackboneConfig, assets folder) -> BackboneConfig.
BACKBONES: dict[str, Callable[[BackboneConfig, Path], BackboneConfig]] = {
    "recipe": _recipe_backbone,
    "composite_s16": _composite_s16,
    "composite_s32": _composite_s32,
    "composite_tiny_text": _composite_tiny_text,
    "tiny_paligemma": _tiny_paligemma,
}


@dataclass(frozen=True)
class ScalingConfig:
    """The sweep (see module docstring). ``base`` is the base recipe, every field overridable."""

    base: TrainConfig = field(default_factory=lambda: recipes()["default"])
    heads: tuple[str, ...] = ("64x1", "128x2", "256x4")  # trunk WIDTHxDEPTH
    backbones: tuple[str, ...] = ("recipe", "composite_s32")  # BACKBONES presets or family:model
    embodiments: tuple[int, ...] = (1,)  # mixture sizes: the first k folders of `shards`
    shards: tuple[str, ...] = ()  # converted dataset folders (empty: the base recipe's data)
    steps: int = 300  # optimizer steps per point (0: the base recipe's)
    batch_size: int = 0  # per-point batch size (0: the base recipe's)
    max_seconds: float = 0.0  # wall-clock budget per point (equal-time sweeps); 0: off
    eval_episodes_per_task: int = 5  # final closed-loop evaluation per point (sim data only)
    out: str = "runs/scaling"


def parse_head(spec: str) -> tuple[int, int]:
    """'128x2' -> (width 128, depth 2)."""
    try:
        w, d = (int(x) for x in spec.lower().split("x"))
    except ValueError:
        raise SystemExit(f"error: heads: {spec!r} is not WIDTHxDEPTH (e.g. 128x2)") from None
    if w < 8 or d < 1:
        raise SystemExit(f"error: heads: {spec!r}: width must be >= 8 and depth >= 1")
    return w, d


def resolve_backbone(name: str, base: BackboneConfig, assets: Path) -> BackboneConfig:
    if name in BACKBONES:
        return BACKBONES[name](base, assets)
    if ":" in name:
        family, model = name.split(":", 1)
        return BackboneConfig(family=family, model=model, image_size=base.image_size,
                              max_text_tokens=base.max_text_tokens)
    raise SystemExit(f"error: backbones: unknown {name!r}; presets {sorted(BACKBONES)} or 'family:model'")


def _shard_dims(folders: tuple[str, ...]) -> tuple[int, int]:
    """Largest action / state dims over the datasets (so every point's head has the same I/O)."""
    from recipes.configs import DataConfig
    from recipes.data import check_shard_datasets

    infos = check_shard_datasets(DataConfig(source="shards", shards=folders))
    return (max(d["stats"].action.dim for d in infos),
            max(d["stats"].state.dim if d["stats"].state else 0 for d in infos))


def point_configs(sc: ScalingConfig) -> list[tuple[dict[str, Any], TrainConfig]]:
    """(point description, TrainConfig) for every point of the sweep, in order."""
    base = sc.base
    out_dir = Path(sc.out)
    assets = out_dir / "_assets"
    assets.mkdir(parents=True, exist_ok=True)
    shards = tuple(sc.shards)
    if not shards and base.data.source == "shards":
        shards = tuple(base.data.shards)
    if shards:
        if any(k < 1 or k > len(shards) for k in sc.embodiments):
            raise SystemExit(f"error: embodiments {list(sc.embodiments)}: each must be in 1..{len(shards)} "
                             f"(the number of shards folders)")
        adim, sdim = _shard_dims(shards)
        adim, sdim = max(adim, base.policy.action_dim), max(sdim, base.policy.state_dim)
    elif set(sc.embodiments) != {1}:
        raise SystemExit("error: embodiments > 1 needs --shards (converted datasets); sim data has one embodiment")
    points = []
    for bname in sc.backbones:
        bb = resolve_backbone(bname, base.policy.backbone, assets)
        for hspec in sc.heads:
            width, depth = parse_head(hspec)
            for k in sc.embodiments:
                pc = base.policy
                ft = pc.finetune
                if bb.family != pc.backbone.family or bb.model != pc.backbone.model:
                    ft = dataclasses.replace(ft, target_modules=None)  # the new family's default LoRA targets
                heads = max(1, width // 32)
                pc = dataclasses.replace(
                    pc, backbone=bb, finetune=ft,
                    trunk=dataclasses.replace(pc.trunk, width=width, depth=depth, num_heads=heads),
                    bridge=dataclasses.replace(pc.bridge, heads=heads))
                data = base.data
                if shards:
                    data = dataclasses.replace(data, source="shards", shards=shards[:k], weights=())
                    pc = dataclasses.replace(pc, action_dim=adim, state_dim=sdim)
                optim = dataclasses.replace(base.optim, steps=sc.steps or base.optim.steps,
                                            batch_size=sc.batch_size or base.optim.batch_size,
                                            max_seconds=sc.max_seconds, eval_every=0, ckpt_every=0)
                optim = dataclasses.replace(optim, warmup_steps=min(optim.warmup_steps, max(1, optim.steps // 10)))
                name = f"{bname.replace(':', '_').replace('/', '_')}__h{width}x{depth}__e{k}"
                cfg = dataclasses.replace(
                    base, policy=pc, data=data, optim=optim, run_dir=str(out_dir / "points" / name),
                    eval=dataclasses.replace(base.eval, episodes_per_task=sc.eval_episodes_per_task, baselines=False))
                points.append(({"point": name, "backbone": bname, "head": f"{width}x{depth}", "head_width": width,
                                "head_depth": depth, "embodiments": k}, cfg))
    return points


def run_sweep(sc: ScalingConfig, progress: bool = False) -> list[dict[str, Any]]:
    """Train every point (sequentially, in this process); write results.json / .md and scaling.png."""
    from recipes.finetune import run

    out_dir = Path(sc.out)
    rows = []
    points = point_configs(sc)
    print(f"[scaling] {len(points)} points -> {out_dir}")
    for i, (desc, cfg) in enumerate(points):
        print(f"[scaling] point {i + 1}/{len(points)}: {desc['point']}")
        row = dict(desc)
        try:
            summary = run(cfg, progress=progress)
        except Exception as e:  # noqa: BLE001 - one diverged/broken point must not end the sweep
            traceback.print_exc()
            row["error"] = f"{type(e).__name__}: {e}"
            rows.append(row)
            continue
        p_total = summary["params"]["total"]
        row.update(
            params_total=p_total, params_trainable=summary["params"]["trainable"], params_head=summary["params"]["head"],
            steps=summary["train_steps"], batch_size=cfg.optim.batch_size,
            samples=summary["train_steps"] * cfg.optim.batch_size,
            param_samples=float(summary["train_steps"]) * cfg.optim.batch_size * p_total,
            train_seconds=summary["train_seconds"], samples_per_s=summary["samples_per_s"],
            final_loss=summary["final_loss"], stop_reason=summary["stop_reason"],
            success=(summary.get("success") or {}).get(f"{cfg.policy.head} (trained)"),
            run_dir=cfg.run_dir,
        )
        rows.append(row)
        write_results(sc, rows, out_dir)  # partial results survive an interrupted sweep
    write_results(sc, rows, out_dir)
    plot_sweep(rows, out_dir / "scaling.png")
    return rows


COLUMNS = [("point", "point"), ("params_total", "params"), ("params_trainable", "trainable"),
           ("params_head", "head params"), ("steps", "steps"), ("param_samples", "steps x batch x params"),
           ("train_seconds", "train s"), ("samples_per_s", "samples/s"), ("final_loss", "final loss"),
           ("success", "success")]


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 1e4 else f"{v:.3e}"
    if isinstance(v, int) and v >= 10_000:
        return f"{v / 1e6:.2f}M"
    return str(v)


def results_markdown(rows: list[dict[str, Any]]) -> str:
    lines = ["| " + " | ".join(h for _, h in COLUMNS) + " |", "|---" * len(COLUMNS) + "|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['point']} | " + " | ".join(["-"] * (len(COLUMNS) - 2)) + f" | failed: {r['error'][:80]} |")
        else:
            lines.append("| " + " | ".join(_fmt(r.get(k)) for k, _ in COLUMNS) + " |")
    return "\n".join(lines) + "\n"


def write_results(sc: ScalingConfig, rows: list[dict[str, Any]], out_dir: Path) -> None:
    config_io.save_json(out_dir / "results.json", {"config": config_io.to_dict(sc), "rows": rows})
    config_io.atomic_write_text(out_dir / "results.md", results_markdown(rows))


def plot_sweep(rows: list[dict[str, Any]], path: Path) -> Path | None:
    """Final loss (and success where evaluated) vs params, vs steps x batch x params, vs seconds;
    one marker series per (backbone, embodiments)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import NullFormatter

    ok = [r for r in rows if "error" not in r and r.get("final_loss") is not None and math.isfinite(r["final_loss"])]
    if not ok:
        return None
    metrics = [("final_loss", "final training loss")]
    if any(r.get("success") is not None for r in ok):
        metrics.append(("success", "closed-loop success"))
    xs = [("params_total", "parameters (total)"), ("param_samples", "steps x batch x params"),
          ("train_seconds", "training seconds")]
    fig = Figure(figsize=(4.5 * len(xs), 3.5 * len(metrics)), layout="constrained")
    FigureCanvasAgg(fig)
    groups: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for r in ok:
        groups.setdefault((r["backbone"], r["embodiments"]), []).append(r)
    for i, (mkey, mlabel) in enumerate(metrics):
        for j, (xkey, xlabel) in enumerate(xs):
            ax = fig.add_subplot(len(metrics), len(xs), i * len(xs) + j + 1)
            for (bname, k), grp in sorted(groups.items()):
                pts = sorted((r[xkey], r[mkey], r["head"]) for r in grp if r.get(mkey) is not None)
                if not pts:
                    continue
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=f"{bname}, {k} emb.")
                for x, y, h in pts:
                    ax.annotate(h, (x, y), fontsize=7, textcoords="offset points", xytext=(3, 3))
            vals = [r[xkey] for r in ok if r.get(xkey)]
            if vals and min(vals) > 0 and max(vals) / min(vals) > 10:  # log axis only over a decade or more
                ax.set_xscale("log")
                ax.xaxis.set_minor_formatter(NullFormatter())
            if mkey == "success":
                ax.set_ylim(-0.02, 1.02)
            ax.set_xlabel(xlabel)
            ax.set_ylabel(mlabel)
            ax.grid(alpha=0.3, which="both")
            if i == 0 and j == 0:
                ax.legend(fontsize=7)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    return path


def parse_scaling_args(argv: list[str] | None = None) -> ScalingConfig:
    """``--base-recipe NAME`` picks the base recipe; every other flag is a ScalingConfig field."""
    import tyro

    pre = argparse.ArgumentParser(add_help=False, allow_abbrev=False)  # other flags pass through unchanged
    pre.add_argument("--base-recipe", default="default")
    known, rest = pre.parse_known_args(argv)
    all_recipes = recipes()
    if known.base_recipe not in all_recipes:
        raise SystemExit(f"error: unknown --base-recipe {known.base_recipe!r}; known: {sorted(all_recipes)}")
    default = ScalingConfig(base=all_recipes[known.base_recipe], out=f"runs/scaling_{known.base_recipe}")
    return tyro.cli(ScalingConfig, default=default, args=rest, prog=f"scaling --base-recipe {known.base_recipe}")


def main(argv: list[str] | None = None) -> None:
    import os

    import torch

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    sc = parse_scaling_args(argv)
    rows = run_sweep(sc)
    print(results_markdown(rows))
    print(f"[scaling] wrote {Path(sc.out) / 'results.md'}, results.json, scaling.png")
    if all("error" in r for r in rows):
        raise SystemExit("error: every point of the sweep failed (see results.json)")


if __name__ == "__main__":
    main()
