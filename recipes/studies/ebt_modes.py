"""EBT objectives on two demonstrated modes: mode shares, unimodal error, the energy as a signal, cost.

    python -m recipes.studies.ebt_modes --out docs/results/ebt_modes [--seeds 0 1 2] [--steps 1000] [--jobs 2]

The synthetic task of tests/vla_ebt/heads/test_ebt_multimodal.py (``tests.synthetic_tasks.goal_reach_batch``: a 2-D goal
in context token 0, chunk (H=8, D=4) ramping toward 0.9 * goal in dims 0-1; bimodal: dim 2 = +/-0.8 * ramp,
a fair coin per sample). Every variant (``NAME:HEAD:field=value,...`` as in head_to_head; defaults: EBT
``reference``, ``path``, ``eqm``, ``energy_matching``, the diffusion head, and the flow head where one is
registered) is trained per seed on the bimodal task and, separately, on the unimodal one (width 64,
depth 2, 4 heads, batch 64, AdamW lr 1e-3, grad clip 1.0, one thread per process). Measured per
trained head:

- **modes** (bimodal): from each of ``--contexts`` held-out contexts, ``--starts`` random starts at 1 / 2 /
  4 / 8 inference steps (diffusion: DDIM at those steps, plus DDPM-100; EBT: also best-of-4 by energy at
  2 and 4 steps). A sample is in the + (-) mode when its last-step dim-2 value is > 0.4 (< -0.4), between
  the modes when |v| < 0.2 (the criterion of tests/vla_ebt/heads/test_ebt_multimodal.py); ``in_mode`` also asks the
  whole chunk to be near that mode (nearest-mode MSE < 0.016, a quarter of the modes' average's);
  ``both_covered`` is the share of contexts where both modes got >= 10% of the starts.
- **energy as a signal** (heads that report an energy): AUROC of the final energy for "not in a mode"
  (between the modes or far from both) vs "in a mode", pooled over contexts and within each context
  (mean over the contexts where both classes occur).
- **unimodal**: MSE to the demonstrated chunk at 1 / 2 / 4 / 8 steps on 256 held-out contexts, beside the
  mean predictor's.
- **Bayes field** (no training): the exactly optimal field of each objective on this task (the posterior
  over (gamma or t, mode) given a point, by quadrature over a 1,500-point grid), sampled with the same
  step rule, momentum and starts: what the objective could reach with a perfect network.
- **cost**: milliseconds per training step at the same size, 1 thread: the median over each cell's own
  training, and an interleaved measurement in one process after the cells (every variant in turn, 20
  timed steps per round, 3 rounds, median; Energy Matching in its contrastive phase 2), which shares
  the machine's load equally between the variants.

Cells (variant x task x seed) are written to ``OUT/cells/*.json`` as they finish, so an interrupted
study resumes; then ``OUT/ebt_modes.json`` (config, git commit, seeds, every cell) and
``OUT/ebt_modes.md`` (tables averaged over seeds, with the per-seed range).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import subprocess
import time
from pathlib import Path
from typing import Any, Sequence

H, D, W = 8, 4, 64
STEPS_EVAL = (1, 2, 4, 8)
MODE_IN, MODE_BETWEEN, NEAR_MSE = 0.4, 0.2, 0.016

DEFAULT_VARIANTS = (
    "reference:ebt:objective=reference",
    "path:ebt:objective=path",
    "eqm:ebt:objective=eqm",
    "energy_matching:ebt:objective=energy_matching",
    "diffusion:diffusion",
    "flow:flow",
)


def default_variants() -> list[str]:
    return list(DEFAULT_VARIANTS)


def _git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True,
                              cwd=Path(__file__).resolve().parents[2]).stdout.strip()
    except Exception:  # noqa: BLE001 - a missing git is not fatal for a study
        return "unknown"


def build_head(variant: Any) -> Any:
    """The variant's head at the study size (width 64, depth 2, H 8, D 4)."""
    from vla_ebt.heads import build_head as _build, head_config_for
    from vla_ebt.heads.trunk import TrunkConfig

    cfg = head_config_for(variant.head, TrunkConfig(width=W, depth=2, num_heads=4), H, D, **dict(variant.overrides))
    return _build(variant.head, cfg)


def train(head: Any, steps: int, bimodal: bool, lr: float = 1e-3, batch: int = 64) -> dict[str, float]:
    """AdamW + clip 1.0 on fresh goal_reach batches (as tests.synthetic_tasks.train_head); returns the
    median and mean ms per step (steps 10.. only: the first ones warm caches) and the last losses."""
    import torch

    from tests.synthetic_tasks import goal_reach_batch

    opt = torch.optim.AdamW(head.parameters(), lr=lr)
    head.train()
    times, losses = [], []
    for _ in range(steps):
        ctx, target = goal_reach_batch(batch, H, D, W, bimodal=bimodal)
        t0 = time.perf_counter()
        loss, _ = head.compute_loss(ctx, target)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(head.parameters(), 1.0)
        opt.step()
        times.append(time.perf_counter() - t0)
        losses.append(loss.item())
    head.eval()
    tail = times[10:] or times
    return {"ms_per_step_median": 1000 * statistics.median(tail), "ms_per_step_mean": 1000 * statistics.mean(tail),
            "train_seconds": sum(times), "loss_last50": statistics.mean(losses[-50:])}


def _auroc(scores: Sequence[float], labels: Sequence[bool]) -> float:
    from recipes.studies.common import auroc

    return auroc(scores, labels)


def _inference_rows(head: Any) -> list[tuple[str, int, dict[str, Any]]]:
    """(label, steps, predict overrides) evaluated for this head."""
    knobs = head.capabilities.knobs
    rows = []
    # the energy AUROC scores the returned chunk: its own energy (one more evaluation where the head folds it)
    final = {"final_eval": True} if "final_eval" in knobs else {}
    for k in STEPS_EVAL:
        ov: dict[str, Any] = {"num_steps": k, **final}
        if "sampler" in knobs:
            ov["sampler"] = "ddim"
        rows.append((f"{k}", k, ov))
    if "sampler" in knobs:
        rows.append(("ddpm-100", 100, {"num_steps": 100, "sampler": "ddpm"}))
    if "num_candidates" in knobs:
        for k in (2, 4):
            rows.append((f"{k} best-of-4", k, {"num_steps": k, "num_candidates": 4, **final}))
    return rows


def eval_modes(head: Any, contexts: int, starts: int, seed: int = 100) -> list[dict[str, Any]]:
    """Mode shares / energy AUROC per inference setting, ``starts`` random starts at each of ``contexts``
    held-out bimodal contexts."""
    import torch

    from tests.synthetic_tasks import goal_reach_batch

    ctx, target = goal_reach_batch(contexts, H, D, W, bimodal=True, generator=torch.Generator().manual_seed(seed))
    modes = target.unsqueeze(1).repeat(1, 2, 1, 1)  # (C, 2, H, D): + mode, - mode
    modes[:, 0, :, 2] = target[:, :, 2].abs()
    modes[:, 1, :, 2] = -target[:, :, 2].abs()
    big = ctx.repeat_interleave(starts)
    out = []
    for label, k, ov in _inference_rows(head):
        with torch.random.fork_rng():
            torch.manual_seed(seed + 7)
            pred = head.predict(big, **ov)
        a = pred.actions.detach().view(contexts, starts, H, D)
        v = a[:, :, -1, 2]
        mse = ((a.unsqueeze(2) - modes.unsqueeze(1)) ** 2).mean((-1, -2))  # (C, S, 2)
        near = mse.min(-1).values
        plus, minus = v > MODE_IN, v < -MODE_IN
        between = v.abs() < MODE_BETWEEN
        in_mode = (plus | minus) & (near < NEAR_MSE)
        row: dict[str, Any] = {
            "inference": label, "steps": k, "nfe": int(pred.nfe),
            "plus": plus.float().mean().item(), "minus": minus.float().mean().item(),
            "between": between.float().mean().item(), "in_mode": in_mode.float().mean().item(),
            "both_covered": ((plus.float().mean(1) >= 0.1) & (minus.float().mean(1) >= 0.1)).float().mean().item(),
            "nearest_mode_mse_median": near.median().item(),
            "min_mode_share_per_context": torch.minimum(plus.float().mean(1), minus.float().mean(1)).min().item(),
        }
        if pred.energy is not None:
            e = pred.energy.detach().view(contexts, starts)
            bad = ~in_mode
            row["energy_auroc_pooled"] = _auroc(e.flatten().tolist(), bad.flatten().tolist())
            per = [_auroc(e[c].tolist(), bad[c].tolist()) for c in range(contexts)]
            per = [p for p in per if p == p]
            row["energy_auroc_within"] = statistics.mean(per) if per else float("nan")
            row["energy_auroc_within_contexts"] = len(per)
            row["energy_in_mode_mean"] = e[in_mode].mean().item() if in_mode.any() else float("nan")
            row["energy_not_in_mode_mean"] = e[bad].mean().item() if bad.any() else float("nan")
        out.append(row)
    return out


def eval_unimodal(head: Any, seed: int = 1, batch: int = 256) -> dict[str, Any]:
    import torch

    from tests.synthetic_tasks import goal_reach_batch

    ctx, target = goal_reach_batch(batch, H, D, W, generator=torch.Generator().manual_seed(seed))
    res = {"mean_predictor_mse": (target - target.mean(0)).pow(2).mean().item()}
    for k in STEPS_EVAL:
        ov: dict[str, Any] = {"num_steps": k}
        if "sampler" in head.capabilities.knobs:
            ov["sampler"] = "ddim"
        with torch.random.fork_rng():
            torch.manual_seed(seed + 7)
            pred = head.predict(ctx, **ov)
        res[f"mse_{k}"] = (pred.actions.detach() - target).pow(2).mean().item()
    return res


def run_cell(spec: str, task: str, seed: int, steps: int, contexts: int, starts: int, out: str) -> dict[str, Any]:
    """Train one variant on one task with one seed, evaluate, write ``out`` (JSON)."""
    import torch

    from recipes.studies.head_to_head import parse_variant

    torch.set_num_threads(1)
    variant = parse_variant(spec)
    torch.manual_seed(seed)
    head = build_head(variant)
    cost = train(head, steps, bimodal=(task == "bimodal"))
    cell: dict[str, Any] = {"variant": variant.name, "head": variant.head, "overrides": dict(variant.overrides),
                            "task": task, "seed": seed, "train_steps": steps, **cost,
                            "head_config": json.loads(json.dumps(dataclasses.asdict(head.cfg), default=str))}
    if task == "bimodal":
        cell["modes"] = eval_modes(head, contexts, starts)
    else:
        cell["unimodal"] = eval_unimodal(head)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(out).with_suffix(".tmp")
    tmp.write_text(json.dumps(cell, indent=1))
    os.replace(tmp, out)
    return cell


def _cell_path(out_dir: Path, spec: str, task: str, seed: int) -> Path:
    name = spec.split(":", 1)[0]
    return out_dir / "cells" / f"{name}__{task}__s{seed}.json"


def _spread(vals: list[float]) -> str:
    vals = [v for v in vals if v == v]
    if not vals:
        return "-"
    m = statistics.mean(vals)
    if len(vals) == 1:
        return f"{m:.3f}"
    return f"{m:.3f} ({min(vals):.3f}-{max(vals):.3f})"


def _pct(vals: list[float]) -> str:
    vals = [v for v in vals if v == v]
    if not vals:
        return "-"
    m = 100 * statistics.mean(vals)
    return f"{m:.0f}" if len(vals) == 1 else f"{m:.0f} ({100 * min(vals):.0f}-{100 * max(vals):.0f})"


def aggregate(out_dir: Path, specs: list[str], seeds: list[int], meta: dict[str, Any]) -> Path:
    """OUT/ebt_modes.json (meta + every cell) and OUT/ebt_modes.md (tables over seeds)."""
    cells = []
    for spec in specs:
        for task in ("bimodal", "unimodal"):
            for s in seeds:
                p = _cell_path(out_dir, spec, task, s)
                if p.exists():
                    cells.append(json.loads(p.read_text()))
    (out_dir / "ebt_modes.json").write_text(json.dumps({"meta": meta, "cells": cells}, indent=1))
    names = [s.split(":", 1)[0] for s in specs]
    lines = ["# EBT objectives on two demonstrated modes", "",
             f"git {meta['git_commit'][:10]}, seeds {seeds}, {meta['train_steps']} training steps, batch 64, width 64, "
             f"depth 2; {meta['contexts']} contexts x {meta['starts']} starts. Cells: mean over seeds (min-max). "
             "Shares in %.", "",
             "## Mode shares (bimodal task)", "",
             "| variant | inference | nfe | + mode | - mode | between | in a mode | both modes covered | nearest-mode MSE | energy AUROC pooled | energy AUROC within |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for n in names:
        bim = [c for c in cells if c["variant"] == n and c["task"] == "bimodal"]
        if not bim:
            continue
        for i, r0 in enumerate(bim[0]["modes"]):
            rs = [c["modes"][i] for c in bim]
            g = lambda k: [r.get(k, float("nan")) for r in rs]  # noqa: E731
            lines.append(f"| {n} | {r0['inference']} | {r0['nfe']} | {_pct(g('plus'))} | {_pct(g('minus'))} | "
                         f"{_pct(g('between'))} | {_pct(g('in_mode'))} | {_pct(g('both_covered'))} | "
                         f"{_spread(g('nearest_mode_mse_median'))} | {_spread(g('energy_auroc_pooled'))} | "
                         f"{_spread(g('energy_auroc_within'))} |")
    if meta.get("bayes_field"):
        lines += ["", "## The exactly optimal field, same sampler (no network)", "",
                  "| field | steps | + mode | - mode | between | in a mode |", "|---|---|---|---|---|---|"]
        for r in meta["bayes_field"]:
            lines.append(f"| {r['field']} | {r['steps']} | {_pct([r['plus']])} | {_pct([r['minus']])} | "
                         f"{_pct([r['between']])} | {_pct([r['in_mode']])} |")
    lines += ["", "## Unimodal task: MSE to the demonstration", "",
              "| variant | 1 step | 2 steps | 4 steps | 8 steps | mean predictor |", "|---|---|---|---|---|---|"]
    for n in names:
        uni = [c["unimodal"] for c in cells if c["variant"] == n and c["task"] == "unimodal"]
        if uni:
            lines.append(f"| {n} | " + " | ".join(_spread([u[f"mse_{k}"] for u in uni]) for k in STEPS_EVAL)
                         + f" | {_spread([u['mean_predictor_mse'] for u in uni])} |")
    cost = meta.get("cost", {})
    lines += ["", "## Training cost (ms per step; 1 thread, same size)", "",
              "Interleaved: every variant in turn in one process (median of 3 x 20 steps; x reference). "
              "Cells: the median of each cell's own training (machine load differs between cells).", "",
              "| variant | interleaved | x reference | cells, bimodal | cells, unimodal |", "|---|---|---|---|---|"]
    for n in names:
        b = [c["ms_per_step_median"] for c in cells if c["variant"] == n and c["task"] == "bimodal"]
        u = [c["ms_per_step_median"] for c in cells if c["variant"] == n and c["task"] == "unimodal"]
        c = cost.get(n, {})
        lines.append(f"| {n} | {_spread([c.get('ms_per_step', float('nan'))])} | "
                     f"{_spread([c.get('vs_reference', float('nan'))])} | {_spread(b)} | {_spread(u)} |")
    md = out_dir / "ebt_modes.md"
    md.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return md


def measure_costs(specs: Sequence[str], steps: int = 20, rounds: int = 3, warmup: int = 5) -> dict[str, dict[str, float]]:
    """ms per training step of every variant, interleaved in this process (1 thread): per round every
    variant trains ``warmup`` untimed + ``steps`` timed steps on bimodal batches; the median over all
    timed steps of all rounds. Energy Matching is timed in phase 2 (with its contrastive chains)."""
    import torch

    from recipes.studies.head_to_head import parse_variant
    from tests.synthetic_tasks import goal_reach_batch

    torch.set_num_threads(1)
    times: dict[str, list[float]] = {s.split(":", 1)[0]: [] for s in specs}
    for r in range(rounds):
        for spec in specs:
            v = parse_variant(spec)
            torch.manual_seed(r)
            head = build_head(v)
            if hasattr(head, "_loss_calls"):
                head._loss_calls = 10**9  # steady state: Energy Matching's phase 2
            opt = torch.optim.AdamW(head.parameters(), lr=1e-3)
            head.train()
            for i in range(warmup + steps):
                ctx, target = goal_reach_batch(64, H, D, W, bimodal=True)
                t0 = time.perf_counter()
                loss, _ = head.compute_loss(ctx, target)
                opt.zero_grad()
                loss.backward()
                torch.nn.utils.clip_grad_norm_(head.parameters(), 1.0)
                opt.step()
                if i >= warmup:
                    times[v.name].append(1000 * (time.perf_counter() - t0))
    ref = statistics.median(times["reference"]) if times.get("reference") else float("nan")
    return {n: {"ms_per_step": statistics.median(t), "vs_reference": statistics.median(t) / ref} for n, t in times.items()}


def bayes_field_rows(contexts: int, starts: int, seed: int = 100, grid: int = 1500) -> list[dict[str, Any]]:
    """Mode shares of the exactly optimal ("Bayes") field of eqm and of energy_matching's flow term on the
    bimodal task, sampled with the EBTConfig defaults' step rule and momentum at 1 / 2 / 4 / 8 steps.

    For a point y the target of eqm is E[c(g) (eps - x)] = E[c(g) (y - x) / (1 - g) | y] and the flow
    term's is E[(x - x0) | y] = E[(x - y) / (1 - t) | y] (its negative: the same form with c = 1),
    the expectation over g (or t) ~ U[0, 1) and the two modes x given y = g x + (1 - g) eps, eps ~ N(0, I)."""
    import torch

    from tests.synthetic_tasks import goal_reach_batch
    from vla_ebt.heads.ebt import EBTConfig
    from vla_ebt.heads.ebt_objectives import eqm_c

    cfg = EBTConfig()
    _, target = goal_reach_batch(contexts, H, D, W, bimodal=True, generator=torch.Generator().manual_seed(seed))
    g = torch.linspace(0.0, 0.999, grid, dtype=torch.float64)
    n = H * D
    kinds = {
        "eqm": (eqm_c(g, cfg.eqm_c, cfg.eqm_lambda, cfg.eqm_a), lambda k: cfg.eqm_step, cfg.eqm_momentum),
        "energy_matching (flow term)": (torch.ones_like(g), lambda k: 1.0 / k, cfg.em_momentum),
    }
    rows = []
    for name, (c, step, mu) in kinds.items():
        for k in STEPS_EVAL:
            gen = torch.Generator().manual_seed(seed + 7)
            acc = {"plus": 0.0, "minus": 0.0, "between": 0.0, "in_mode": 0.0}
            for ci in range(contexts):
                xs = target[ci].unsqueeze(0).repeat(2, 1, 1).double()
                xs[0, :, 2], xs[1, :, 2] = target[ci, :, 2].abs(), -target[ci, :, 2].abs()
                xs = xs.flatten(1)  # (2, n)

                def field(y: torch.Tensor) -> torch.Tensor:
                    logw = torch.stack([-n * torch.log1p(-g)[None] - ((y[:, None, :] - g[None, :, None] * x) ** 2).sum(-1)
                                        / (2 * (1 - g)[None] ** 2) for x in xs], 1)  # (S, 2, G)
                    w = torch.softmax(logw.flatten(1), 1).view_as(logw) * (c / (1 - g))[None, None]
                    return w.sum((1, 2))[:, None] * y - torch.einsum("smg,mn->sn", w, xs)

                y = torch.randn(starts, n, generator=gen, dtype=torch.float64)
                v = torch.zeros_like(y)
                for _ in range(k):
                    v = mu * v - step(k) * field(y + mu * v)
                    y = y + v
                last = y.view(starts, H, D)[:, -1, 2]
                near = torch.minimum(((y - xs[0]) ** 2).mean(1), ((y - xs[1]) ** 2).mean(1))
                plus, minus = last > MODE_IN, last < -MODE_IN
                acc["plus"] += plus.double().mean().item() / contexts
                acc["minus"] += minus.double().mean().item() / contexts
                acc["between"] += (last.abs() < MODE_BETWEEN).double().mean().item() / contexts
                acc["in_mode"] += ((plus | minus) & (near < NEAR_MSE)).double().mean().item() / contexts
            rows.append({"field": name, "steps": k, **acc})
    return rows


def _worker(args: tuple) -> str:
    spec, task, seed, steps, contexts, starts, out = args
    os.environ["OMP_NUM_THREADS"] = "1"
    run_cell(spec, task, seed, steps, contexts, starts, out)
    return out


def main(argv: Sequence[str] | None = None) -> Path:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="output folder (cells/ + ebt_modes.json/.md)")
    p.add_argument("--variants", nargs="*", default=None, help="NAME:HEAD[:field=value,...] (default: see module doc)")
    p.add_argument("--seeds", nargs="*", type=int, default=[0, 1, 2])
    p.add_argument("--steps", type=int, default=1000, help="training steps per cell")
    p.add_argument("--contexts", type=int, default=8)
    p.add_argument("--starts", type=int, default=64)
    p.add_argument("--tasks", nargs="*", default=["bimodal", "unimodal"])
    p.add_argument("--jobs", type=int, default=1, help="parallel processes (1 thread each)")
    p.add_argument("--no-cost", action="store_true", help="skip the interleaved cost measurement")
    a = p.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    specs = a.variants or default_variants()
    out_dir = Path(a.out)
    todo = [(s, t, seed, a.steps, a.contexts, a.starts, str(_cell_path(out_dir, s, t, seed)))
            for seed in a.seeds for s in specs for t in a.tasks if not _cell_path(out_dir, s, t, seed).exists()]
    print(f"{len(todo)} cells to run", flush=True)
    if a.jobs > 1 and todo:
        import multiprocessing as mp

        with mp.get_context("spawn").Pool(a.jobs) as pool:
            for done in pool.imap_unordered(_worker, todo):
                print("done", done, flush=True)
    else:
        for job in todo:
            _worker(job)
            print("done", job[-1], flush=True)
    meta = {"git_commit": _git_commit(), "seeds": a.seeds, "variants": specs, "train_steps": a.steps,
            "contexts": a.contexts, "starts": a.starts, "horizon": H, "action_dim": D, "width": W, "depth": 2,
            "batch": 64, "lr": 1e-3, "mode_threshold": MODE_IN, "between_threshold": MODE_BETWEEN,
            "near_mse": NEAR_MSE, "eval_context_seed": 100, "unimodal_eval_seed": 1}
    cost_path = out_dir / "cost.json"
    if not a.no_cost and not cost_path.exists():
        out_dir.mkdir(parents=True, exist_ok=True)
        cost_path.write_text(json.dumps(measure_costs(specs), indent=1))
    if cost_path.exists():
        meta["cost"] = json.loads(cost_path.read_text())
    bayes_path = out_dir / "bayes.json"
    if not bayes_path.exists():
        import torch

        torch.set_num_threads(1)
        bayes_path.write_text(json.dumps(bayes_field_rows(a.contexts, a.starts), indent=1))
    meta["bayes_field"] = json.loads(bayes_path.read_text())
    return aggregate(out_dir, specs, a.seeds, meta)


if __name__ == "__main__":
    main()
