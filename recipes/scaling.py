"""Scaling sweep: head size x backbone x number of embodiments, one short fine-tuning run per point.

    python recipes/finetune.py --recipe scaling [--base-recipe default] [options]   # same as:
    python -m recipes.scaling --heads 64x1 128x2 256x4 --backbones recipe composite_s32 --steps 300
    python -m recipes.scaling --base-recipe oxe_mix --shards shards/bridge shards/fractal20220817_data \\
        --embodiments 1 2 --backbones recipe --heads 256x4 512x8 --base.deepspeed ""
    python -m recipes.scaling --help
    # closed-loop scaling across embodiments: the target suite (the base recipe's) + other sim suites
    python -m recipes.scaling --base-recipe default --suites metaworld reach2d pusht --embodiments 1 2 3 \
        --heads 128x2 --backbones recipe --steps 600 --demos-per-task 60 --eval-episodes-per-task 10 --jobs 2

Every point is ``recipes.finetune.run`` on the base recipe (any field overridable as
``--base.<field>``) with the trunk width x depth, backbone and mixture of that point, in
``out/points/<point>/`` (metrics, TensorBoard, plots, policy). Axes:

* ``heads``: ``WIDTHxDEPTH`` of the action-head trunk (heads = max(1, width // 32)).
* ``backbones``: a preset of :data:`BACKBONES` or ``family:model`` (e.g. ``paligemma:google/paligemma-3b-pt-224``).
* ``embodiments``: k = the first k folders of ``shards`` as the training mixture (shard data), or the
  first k of ``suites`` (sim data: a sim mixture, ``DataConfig.suites``, each suite one embodiment;
  ``suites[0]`` is the target suite, the base recipe's ``data.suite``, so it is in every point). Every
  point has the same action / state dims (the largest over all folders / suites), the same steps and
  batch; a sim point is evaluated closed-loop on each suite it trained on, acting as that suite's
  embodiment. Without ``shards`` or ``suites`` the only value is 1.

Points already finished (``out/points/<point>/point.json`` written for the same config) are skipped,
so an interrupted sweep continues where it stopped; failed points run again. ``jobs`` > 1 runs that
many points at a time, each in its own single-thread process (``python -m recipes.scaling --run-point
POINT_DIR/point_spec.json``, output in ``POINT_DIR/log.txt``).

Results: ``out/results.json`` (the sweep config + one row per point), ``out/results.md`` (table) and
``out/scaling.png``: final training loss (mean of the last 10 steps) and closed-loop success (sim
data only) against parameters (total) and against training compute, measured both as
steps x batch x parameters ("param-samples", proportional to FLOPs for a fixed architecture) and as
training seconds. With ``suites``, ``results.md`` adds success per suite (95 % Wilson interval over the
evaluation episodes) against the number of embodiments, with the compute of each point, and which
differences the intervals separate; ``out/embodiments.png`` plots it against embodiments and seconds.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import subprocess
import sys
import threading
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
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
    embodiments: tuple[int, ...] = (1,)  # mixture sizes: the first k folders of `shards` / the first k of `suites`
    shards: tuple[str, ...] = ()  # converted dataset folders (empty: the base recipe's data)
    # sim suites, one embodiment each: the target suite (the base recipe's data.suite) first, then the
    # suites added in order (their demonstrations: their <suite>_<head> recipe, --base.data.suite-overrides)
    suites: tuple[str, ...] = ()
    demos_per_task: int = 0  # sim: expert episodes per task of every suite of `suites` (0: each suite's own)
    steps: int = 300  # optimizer steps per point (0: the base recipe's)
    batch_size: int = 0  # per-point batch size (0: the base recipe's)
    max_seconds: float = 0.0  # wall-clock budget per point (equal-time sweeps); 0: off
    eval_episodes_per_task: int = 5  # final closed-loop evaluation per point and suite (sim data only)
    jobs: int = 1  # points at a time: 1 in this process; more: single-thread processes
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


def _sim_suite_data(sc: ScalingConfig) -> tuple[Any, int, int]:
    """The base recipe's DataConfig as the sim mixture of all of ``sc.suites`` (with ``demos_per_task``)
    and the largest action / state dims over those suites."""
    from eval.sim.suites import make_suite, parse_suite_args
    from recipes.data import sim_suite_configs

    base = sc.base.data
    suites = tuple(sc.suites)
    if base.source != "sim":
        raise SystemExit(f"error: suites: the base recipe's data.source is {base.source!r}; sim suites need a sim "
                         "recipe (e.g. --base-recipe default)")
    if suites[0] != base.suite:
        raise SystemExit(f"error: suites: the first suite is the target and must be the base recipe's data.suite "
                         f"{base.suite!r}, got {suites[0]!r} (pick the base recipe with --base-recipe, e.g. "
                         f"{suites[0]}_ebt)")
    data = dataclasses.replace(base, suites=suites)
    if sc.demos_per_task > 0:
        data = dataclasses.replace(data, episodes_per_task=sc.demos_per_task, suite_overrides=(
            *(f"{s}.episodes_per_task={sc.demos_per_task}" for s in suites[1:]), *base.suite_overrides))
    adim, sdim = 0, 0
    for m in sim_suite_configs(data):
        suite = make_suite(m.suite, **parse_suite_args(m.suite_args))
        adim, sdim = max(adim, suite.action_dim), max(sdim, suite.state_dim)
    return data, adim, sdim


def point_configs(sc: ScalingConfig) -> list[tuple[dict[str, Any], TrainConfig]]:
    """(point description, TrainConfig) for every point of the sweep, in order."""
    base = sc.base
    out_dir = Path(sc.out)
    assets = out_dir / "_assets"
    assets.mkdir(parents=True, exist_ok=True)
    shards = tuple(sc.shards)
    if not shards and base.data.source == "shards":
        shards = tuple(base.data.shards)
    if shards and sc.suites:
        raise SystemExit("error: shards and suites: the embodiment axis takes converted datasets or sim suites, "
                         "not both")
    if shards:
        if any(k < 1 or k > len(shards) for k in sc.embodiments):
            raise SystemExit(f"error: embodiments {list(sc.embodiments)}: each must be in 1..{len(shards)} "
                             f"(the number of shards folders)")
        adim, sdim = _shard_dims(shards)
        adim, sdim = max(adim, base.policy.action_dim), max(sdim, base.policy.state_dim)
    elif sc.suites:
        if any(k < 1 or k > len(sc.suites) for k in sc.embodiments):
            raise SystemExit(f"error: embodiments {list(sc.embodiments)}: each must be in 1..{len(sc.suites)} "
                             f"(the number of suites)")
        sim_data, adim, sdim = _sim_suite_data(sc)
        adim, sdim = max(adim, base.policy.action_dim), max(sdim, base.policy.state_dim)
    elif set(sc.embodiments) != {1}:
        raise SystemExit("error: embodiments > 1 needs --shards (converted datasets) or --suites (sim suites, "
                         "one embodiment each)")
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
                elif sc.suites:
                    kept = set(sc.suites[:k])
                    data = dataclasses.replace(
                        sim_data, suites=tuple(sc.suites[:k]),
                        weights=sim_data.weights[:k] if sim_data.weights else (),
                        suite_overrides=tuple(o for o in sim_data.suite_overrides
                                              if o.partition("=")[0].rpartition(".")[0] in kept))
                    pc = dataclasses.replace(pc, action_dim=adim, state_dim=sdim)
                optim = dataclasses.replace(base.optim, steps=sc.steps or base.optim.steps,
                                            batch_size=sc.batch_size or base.optim.batch_size,
                                            max_seconds=sc.max_seconds, eval_every=0, ckpt_every=0)
                optim = dataclasses.replace(optim, warmup_steps=min(optim.warmup_steps, max(1, optim.steps // 10)))
                name = f"{bname.replace(':', '_').replace('/', '_')}__h{width}x{depth}__e{k}"
                cfg = dataclasses.replace(
                    base, policy=pc, data=data, optim=optim, run_dir=str(out_dir / "points" / name),
                    eval=dataclasses.replace(base.eval, episodes_per_task=sc.eval_episodes_per_task, baselines=False))
                desc = {"point": name, "backbone": bname, "head": f"{width}x{depth}", "head_width": width,
                        "head_depth": depth, "embodiments": k}
                if sc.suites:
                    desc["suites"] = list(sc.suites[:k])
                points.append((desc, cfg))
    return points


POINT, POINT_SPEC, POINT_LOG = "point.json", "point_spec.json", "log.txt"
_VOLATILE = ("threads", "env_workers")  # how a point ran, not what it is: not compared when resuming


def _comparable(cfg: TrainConfig) -> dict[str, Any]:
    d = config_io.to_dict(cfg)
    for k in _VOLATILE:
        d.pop(k, None)
    return d


def finished_row(desc: dict[str, Any], cfg: TrainConfig) -> dict[str, Any] | None:
    """The row of a point finished before with the same config (``point.json``), else None."""
    path = Path(cfg.run_dir) / POINT
    if not path.is_file():
        return None
    try:
        done = json.loads(path.read_text())
    except ValueError:
        return None
    if done.get("config") != _comparable(cfg):
        print(f"[scaling] {desc['point']}: finished with another config; running it again")
        return None
    return done["row"]


def point_row(desc: dict[str, Any], cfg: TrainConfig, summary: dict[str, Any]) -> dict[str, Any]:
    """The results row of a finished point from its ``recipes.finetune.run`` summary."""
    p_total = summary["params"]["total"]
    trained = f"{cfg.policy.head} (trained)"
    row = dict(desc)
    row.update(
        params_total=p_total, params_trainable=summary["params"]["trainable"], params_head=summary["params"]["head"],
        steps=summary["train_steps"], batch_size=cfg.optim.batch_size,
        samples=summary["train_steps"] * cfg.optim.batch_size,
        param_samples=float(summary["train_steps"]) * cfg.optim.batch_size * p_total,
        train_seconds=summary["train_seconds"], samples_per_s=summary["samples_per_s"],
        wall_seconds=(summary.get("timing_s") or {}).get("total"),
        final_loss=summary["final_loss"], stop_reason=summary["stop_reason"], git_commit=summary.get("git_commit"),
        success=(summary.get("success") or {}).get(trained),
        run_dir=cfg.run_dir,
    )
    if desc.get("suites"):
        row["success_per_suite"] = {
            name: {"success": info["success"].get(trained), **info["trained"], "embodiment": info["embodiment"],
                   "train_samples": info["train_samples"]}
            for name, info in (summary.get("suites") or {}).items()}
    return row


def run_point(desc: dict[str, Any], cfg: TrainConfig, progress: bool = False) -> dict[str, Any]:
    """Train and evaluate one point in this process; write ``point.json`` (marks it finished); its row."""
    from recipes.finetune import run

    summary = run(cfg, progress=progress)
    row = point_row(desc, cfg, summary)
    config_io.save_json(Path(cfg.run_dir) / POINT, {"point": desc, "config": _comparable(cfg), "row": row})
    return row


def _run_point_process(desc: dict[str, Any], cfg: TrainConfig) -> dict[str, Any]:
    """``run_point`` in a single-thread process (``--run-point``), output appended to ``log.txt``."""
    d = Path(cfg.run_dir)
    d.mkdir(parents=True, exist_ok=True)
    cfg = dataclasses.replace(cfg, threads=1, env_workers=0)
    config_io.save_json(d / POINT_SPEC, {"point": desc, "config": config_io.to_dict(cfg)})
    repo = Path(__file__).resolve().parent.parent
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false",
               PYTHONPATH=os.pathsep.join([str(repo), *filter(None, [os.environ.get("PYTHONPATH")])]))
    with open(d / POINT_LOG, "a") as f:
        f.write(f"\n=== attempt {time.strftime('%Y-%m-%d %H:%M:%S')} ===\n")
        f.flush()
        p = subprocess.run([sys.executable, "-m", "recipes.scaling", "--run-point", str(d / POINT_SPEC)], cwd=repo,
                           env=env, stdout=f, stderr=subprocess.STDOUT)
    if p.returncode != 0:
        tail = (d / POINT_LOG).read_text(errors="replace").splitlines()[-15:]
        raise RuntimeError(f"point process exited with code {p.returncode}; last lines of {d / POINT_LOG}:\n"
                           + "\n".join(tail))
    return json.loads((d / POINT).read_text())["row"]


def run_sweep(sc: ScalingConfig, progress: bool = False) -> list[dict[str, Any]]:
    """Train every point not finished before (``sc.jobs`` at a time: in this process, or single-thread
    processes); write results.json / .md and the plots."""
    out_dir = Path(sc.out)
    points = point_configs(sc)
    rows: list[dict[str, Any] | None] = [finished_row(desc, cfg) for desc, cfg in points]
    todo = [i for i, r in enumerate(rows) if r is None]
    print(f"[scaling] {len(points)} points -> {out_dir}; {len(points) - len(todo)} finished before (skipped), "
          f"{len(todo)} to run, {max(1, sc.jobs)} at a time")
    lock = threading.Lock()

    def one(i: int) -> None:
        desc, cfg = points[i]
        print(f"[scaling] point {i + 1}/{len(points)}: {desc['point']}", flush=True)
        try:
            row = run_point(desc, cfg, progress) if sc.jobs <= 1 else _run_point_process(desc, cfg)
        except Exception as e:  # noqa: BLE001 - one diverged/broken point must not end the sweep
            traceback.print_exc()
            row = {**desc, "error": f"{type(e).__name__}: {e}"}
        with lock:
            rows[i] = row
            write_results(sc, [r for r in rows if r is not None], out_dir)  # partial results survive a kill

    if sc.jobs <= 1:
        for i in todo:
            one(i)
    else:
        if sc.suites and todo:  # demonstrations once, here (env workers), not by several points at a time
            from recipes.data import prefetch_sim_demos

            biggest = max((points[i][1] for i in todo), key=lambda c: len(c.data.suites))
            prefetch_sim_demos(biggest.data, env_workers=sc.jobs)
        with ThreadPoolExecutor(max_workers=sc.jobs) as pool:
            list(pool.map(one, todo))
    done = [r for r in rows if r is not None]
    write_results(sc, done, out_dir)
    plot_sweep(done, out_dir / "scaling.png")
    if sc.suites:
        plot_embodiments(done, list(sc.suites), out_dir / "embodiments.png")
    return done


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


def _ci(c: dict[str, Any] | None) -> str:
    if not c or c.get("success") is None:
        return "-"
    return f"{c['success']:.2f} [{c['ci_low']:.2f}, {c['ci_high']:.2f}] ({c['successes']}/{c['episodes']})"


def embodiment_markdown(rows: list[dict[str, Any]], suites: list[str]) -> str:
    """Success per suite (95 % Wilson interval, successes / episodes) against the number of embodiments
    trained on, with each point's compute; then, per suite, how each larger mixture compares with the
    smallest one holding that suite ("separated" only where the intervals do not overlap)."""
    ok = [r for r in rows if "error" not in r and r.get("success_per_suite") is not None]
    if not ok:
        return ""
    lines = ["### Success per suite against the number of embodiments", "",
             f"Target suite: **{suites[0]}**; suites added in the order {suites[1:]}. Closed-loop success on each "
             "suite trained on (the policy acting as that suite's embodiment), 95 % Wilson interval over the "
             "evaluation episodes; compute = training samples (steps x batch) and training seconds.", "",
             "| backbone | head | embodiments | " + " | ".join(suites) + " | steps | samples | train s | wall s |",
             "|---" * (7 + len(suites)) + "|"]
    for r in ok:
        cells = [_ci(r["success_per_suite"].get(s)) for s in suites]
        lines.append(f"| {r['backbone']} | {r['head']} | {r['embodiments']} | " + " | ".join(cells) +
                     f" | {_fmt(r['steps'])} | {_fmt(r['samples'])} | {_fmt(r['train_seconds'])} | "
                     f"{_fmt(r.get('wall_seconds'))} |")
    lines.append("")
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in ok:
        groups.setdefault((r["backbone"], r["head"]), []).append(r)
    for (bname, head), grp in groups.items():
        grp = sorted(grp, key=lambda r: r["embodiments"])
        for s in suites:
            have = [r for r in grp if s in r["success_per_suite"]]
            if len(have) < 2:
                continue
            ref = have[0]["success_per_suite"][s]
            parts = []
            for r in have[1:]:
                c = r["success_per_suite"][s]
                if c["ci_low"] > ref["ci_high"]:
                    verdict = "higher, separated"
                elif c["ci_high"] < ref["ci_low"]:
                    verdict = "lower, separated"
                else:
                    verdict = "not separated"
                parts.append(f"{r['embodiments']}: {c['success']:.2f} ({c['success'] - ref['success']:+.2f}, {verdict})")
            lines.append(f"* {bname} {head}, **{s}**: {have[0]['embodiments']} embodiment(s) {ref['success']:.2f} -> "
                         + "; ".join(parts))
    return "\n".join(lines) + "\n"


def write_results(sc: ScalingConfig, rows: list[dict[str, Any]], out_dir: Path) -> None:
    from recipes.compare.artifacts import git_commit

    config_io.save_json(out_dir / "results.json", {"config": config_io.to_dict(sc), "git_commit": git_commit(),
                                                   "rows": rows})
    md = results_markdown(rows)
    if sc.suites:
        md += "\n" + embodiment_markdown(rows, list(sc.suites))
    config_io.atomic_write_text(out_dir / "results.md", md)


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


def plot_embodiments(rows: list[dict[str, Any]], suites: list[str], path: Path) -> Path | None:
    """Success per suite (with its Wilson interval) against the number of embodiments and against
    training seconds; one line per suite and (backbone, head)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    ok = [r for r in rows if "error" not in r and r.get("success_per_suite")]
    if not ok:
        return None
    fig = Figure(figsize=(10, 3.8), layout="constrained")
    FigureCanvasAgg(fig)
    axes = [fig.add_subplot(1, 2, i + 1) for i in range(2)]
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in ok:
        groups.setdefault((r["backbone"], r["head"]), []).append(r)
    for (bname, head), grp in sorted(groups.items()):
        for si, s in enumerate(suites):
            pts = sorted((r["embodiments"], r["train_seconds"], r["success_per_suite"][s]) for r in grp
                         if s in r["success_per_suite"] and r["success_per_suite"][s].get("success") is not None)
            if not pts:
                continue
            label = s + (" (target)" if s == suites[0] else "") + ("" if len(groups) == 1 else f", {bname} {head}")
            for ax, xi in zip(axes, (0, 1)):
                xs = [p[xi] + (0.04 * (si - (len(suites) - 1) / 2) if xi == 0 else 0.0) for p in pts]  # bars apart
                ys = [p[2]["success"] for p in pts]
                err = [[y - p[2]["ci_low"] for y, p in zip(ys, pts)], [p[2]["ci_high"] - y for y, p in zip(ys, pts)]]
                ax.errorbar(xs, ys, yerr=err, marker="o", capsize=3, label=label)
    for ax, xlabel in zip(axes, ("embodiments (suites) trained on", "training seconds")):
        ax.set_xlabel(xlabel)
        ax.set_ylabel("closed-loop success (95% Wilson)")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
    axes[0].set_xticks(sorted({r["embodiments"] for r in ok}))
    axes[0].legend(fontsize=7)
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
    import torch

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["--run-point"]:  # one point in this process (the sweep's jobs > 1)
        spec = config_io.load_json(args[1])
        run_point(spec["point"], config_io.from_dict(TrainConfig, spec["config"], where=args[1]))
        return
    sc = parse_scaling_args(args)
    rows = run_sweep(sc)
    print((Path(sc.out) / "results.md").read_text())
    print(f"[scaling] wrote {Path(sc.out) / 'results.md'}, results.json, scaling.png"
          + (", embodiments.png" if sc.suites else ""))
    if all("error" in r for r in rows):
        raise SystemExit("error: every point of the sweep failed (see results.json)")


if __name__ == "__main__":
    main()
