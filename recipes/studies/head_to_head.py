"""Study 1, head-to-head: EBT vs diffusion (DDPM-100 and DDIM-10 samplers of one trained model) vs
regression, identical data, backbone and trunk, compared at equal gradient steps and at equal
training wall-clock, on unimodal (``reach2d``) and multimodal (``reach2d_detour``) demonstrations.

    python -m recipes.studies.head_to_head --recipe reach2d_ebt --suites reach2d reach2d_detour \\
        --steps 1000 --episodes 20 --out runs/studies/head_to_head

Per suite: every head trains ``--steps`` steps (equal steps; its wall-clock time is recorded);
then, with ``--equal-wall-clock``, every head also trains for the recipe's head's (EBT's) wall-clock
time (its step count is set from its own measured seconds per step, and ``optim.max_seconds`` caps
it). Each trained policy is evaluated on the same seeded episodes under each of its head's presets
(``capabilities.presets``: DDPM-100 and DDIM-10 for diffusion). Rows: suite, budget, head/preset,
training steps and seconds, success (95% interval), per-task success, network evaluations per chunk
(and in trunk forward-pass equivalents), latency per chunk, and on multimodal suites the share of episodes that commit to each mode (left / right) and that
average (collide with the obstacle) or stall. Trained runs are reused when their folder has a
saved policy, so an interrupted study resumes. Writes ``head_to_head.{json,md,png}``.

Variants of a head join the table as rows of their own: ``--variant ebt-path:ebt:objective=path``
trains the EBT head with ``policy.ebt.objective = "path"`` (fields of the head's config, values
parsed as JSON) under the same budgets as the plain heads.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from vla_ebt.heads import available_heads, head_class

from .common import load_policy, predict_overrides, write_study, pyplot, save_figure
from .episodes import run_study_episodes

__all__ = ["eval_variants", "HeadVariant", "parse_variant", "train_head", "evaluate_variant", "run_head_to_head", "main"]


def eval_variants(head: str) -> list[tuple[str, dict[str, Any]]]:
    """[(row label, inference overrides)] a trained ``head`` is evaluated under: its declared presets
    (``capabilities.presets``), else one row named after the head with its configured inference."""
    presets = head_class(head).capabilities.presets
    return [(label, dict(ov)) for label, ov in presets] or [(head, {})]


@dataclasses.dataclass(frozen=True)
class HeadVariant:
    """A head trained with some of its config fields changed, e.g. EBT with ``objective="path"``."""

    name: str
    head: str
    overrides: tuple[tuple[str, Any], ...] = ()


def parse_variant(spec: str) -> HeadVariant:
    """``"NAME:HEAD:key=value,key=value"`` -> HeadVariant (values parsed as JSON, else strings)."""
    from eval.sim.suites import parse_suite_args

    parts = spec.split(":", 2)
    if len(parts) < 2 or not parts[0] or parts[1] not in available_heads():
        raise ValueError(f"--variant {spec!r}: expected NAME:HEAD[:key=value,...] with HEAD one of {available_heads()}")
    fields = parse_suite_args([x for x in parts[2].split(",") if x]) if len(parts) == 3 else {}
    return HeadVariant(parts[0], parts[1], tuple(sorted(fields.items())))


#: training fields a variant may change besides its head's config (``optim.<field>=value``): ones that
#: leave the data, the budget and the tuned lr / EMA decay as the comparison sets them
VARIANT_OPTIM_FIELDS = ("ema_warmup",)


def split_overrides(overrides: Sequence[tuple[str, Any]]) -> tuple[tuple[tuple[str, Any], ...], dict[str, Any]]:
    """A variant's ``overrides`` -> (head config fields, optim fields without the ``optim.`` prefix).
    Raises ValueError for an ``optim.`` field outside :data:`VARIANT_OPTIM_FIELDS` or of the wrong type."""
    from vla_ebt.train import OptimConfig

    head: list[tuple[str, Any]] = []
    optim: dict[str, Any] = {}
    defaults = OptimConfig()
    for key, value in overrides:
        if not key.startswith("optim."):
            head.append((key, value))
            continue
        name = key[len("optim."):]
        if name not in VARIANT_OPTIM_FIELDS:
            raise ValueError(f"variant field {key!r}: of the training settings a variant may change only "
                             f"{['optim.' + f for f in VARIANT_OPTIM_FIELDS]} (the comparison sets data, budget, lr "
                             "and EMA decay for every cell)")
        expected = type(getattr(defaults, name))
        if type(value) is not expected:
            raise ValueError(f"variant field {key!r}: expected a {expected.__name__}, got {value!r}")
        optim[name] = value
    return tuple(head), optim


def variant_optim(optim_cfg: Any, overrides: Sequence[tuple[str, Any]]) -> Any:
    """``optim_cfg`` (an OptimConfig) with the variant's ``optim.`` fields applied (see :func:`split_overrides`)."""
    changed = split_overrides(overrides)[1]
    return dataclasses.replace(optim_cfg, **changed) if changed else optim_cfg


def _head_config(policy_cfg: Any, head: str, overrides: Sequence[tuple[str, Any]]) -> Any:
    """policy config with ``head`` selected and ``overrides`` applied to that head's config (``optim.``
    fields are checked here and applied by :func:`variant_optim`)."""
    overrides = split_overrides(overrides)[0]
    policy_cfg = dataclasses.replace(policy_cfg, head=head)
    if not overrides:
        return policy_cfg
    head_cfg = policy_cfg.head_config()
    known = {f.name for f in dataclasses.fields(head_cfg)}
    bad = sorted(k for k, _ in overrides if k not in known)
    if bad:
        raise ValueError(f"unknown {head} config field(s) {bad}; known: {sorted(known)}")
    typed = getattr(policy_cfg, head, None)
    if isinstance(typed, type(head_cfg)):  # the head's typed field (policy.ebt, ...)
        return dataclasses.replace(policy_cfg, **{head: dataclasses.replace(typed, **dict(overrides))})
    return dataclasses.replace(policy_cfg, head_options={**policy_cfg.head_options, **dict(overrides)})


def train_head(base_cfg: Any, suite: str, head: str, steps: int, run_dir: Path, max_seconds: float = 0.0,
               overrides: Sequence[tuple[str, Any]] = ()) -> dict[str, Any]:
    """Train one head with the recipe's everything-else (reused if ``run_dir/policy`` exists);
    ``overrides`` change fields of that head's config. Returns {"train_seconds", "train_steps", "policy_dir"}."""
    summary_path = run_dir / "summary.json"
    if (run_dir / "policy" / "config.json").exists() and summary_path.exists():
        s = json.loads(summary_path.read_text())
        return {"train_seconds": float(s["train_seconds"]), "train_steps": int(s["train_steps"]),
                "policy_dir": str(run_dir / "policy")}
    from recipes.finetune import run

    optim = variant_optim(dataclasses.replace(base_cfg.optim, steps=int(steps)), overrides)
    if max_seconds > 0:
        optim = dataclasses.replace(optim, max_seconds=float(max_seconds))
    cfg = dataclasses.replace(
        base_cfg,
        policy=_head_config(base_cfg.policy, head, overrides),
        data=dataclasses.replace(base_cfg.data, suite=suite),
        optim=optim,
        eval=dataclasses.replace(base_cfg.eval, episodes_per_task=0, baselines=False),
        run_dir=str(run_dir),
    )
    s = run(cfg)
    return {"train_seconds": float(s["train_seconds"]), "train_steps": int(s["train_steps"]),
            "policy_dir": str(run_dir / "policy")}


def evaluate_variant(policy: Any, suite: Any, tasks: Sequence[str], episodes: int, seed: int,
                     overrides: dict[str, Any]) -> dict[str, Any]:
    """Success, per-task success, network evaluations per chunk (``nfe``, and ``forward_equiv`` = nfe x
    the head's ``eval_cost``), latency per chunk, and mode shares (if the suite's envs track a
    ``mode``) for one policy under ``overrides``."""
    with predict_overrides(policy, **overrides):
        res = run_study_episodes(policy, suite, tasks, episodes, seed, env_attrs=("mode",))
    rep = res.report
    o = rep.overall
    nfes = [x for sig in res.signals for x in sig.nfe]  # as each prediction reported it
    lat = [x for e in rep.episodes for x in e.chunk_latency_ms]
    nfe = float(np.mean(nfes)) if nfes else float("nan")
    row: dict[str, Any] = {
        "success": o.success_rate, "ci_low": o.ci_low, "ci_high": o.ci_high, "episodes": o.episodes,
        "nfe": nfe, "forward_equiv": nfe * policy.head.capabilities.eval_cost,
        "chunk_ms": float(np.mean(lat)) if lat else float("nan"),
        "per_task": {t: r.success_rate for t, r in rep.tasks.items()},
        "errors": sum(1 for e in rep.episodes if e.error),
    }
    modes = [f.get("mode") for f in res.final]
    if any(m is not None for m in modes):
        n = len(modes)
        for m in ("left", "right", "collision", "none"):
            row[f"mode_{m}"] = sum(1 for x in modes if x == m) / n
        row["commit"] = row["mode_left"] + row["mode_right"]
    return row


def run_head_to_head(base_cfg: Any, suites: Sequence[str], heads: Sequence[str | HeadVariant], steps: int, episodes: int,
                     seed: int, out: Path, equal_wall_clock: bool = True,
                     seconds_per_step: dict[str, float] | None = None) -> list[dict[str, Any]]:
    """``heads``: head names or :class:`HeadVariant` s (keyed by their name). The equal-wall-clock budget
    is the recipe's head's run (``base_cfg.policy.head``) if requested, else the first of ``heads``.
    ``seconds_per_step`` (head/variant name -> s/step, e.g. from ``benchmarks/train_throughput.py`` run
    alone on the machine) sets the equal-wall-clock step counts; without it each head's own
    equal-steps run time is used (fine on an otherwise idle machine, biased when runs share the CPU
    with other work)."""
    sps = dict(seconds_per_step or {})
    specs = {v.name: v for v in (h if isinstance(h, HeadVariant) else HeadVariant(h, h) for h in heads)}
    heads = list(specs)
    from eval.sim.suites import make_suite, parse_suite_args

    rows: list[dict[str, Any]] = []
    for suite_name in suites:
        # the recipe's suite arguments (e.g. the episode limit) apply to its own suite
        kw = parse_suite_args(base_cfg.data.suite_args) if suite_name == base_cfg.data.suite else {}
        suite = make_suite(suite_name, **kw)
        tasks = list(base_cfg.data.tasks) or suite.task_names()
        trained: dict[tuple[str, str], dict[str, Any]] = {}
        for head in heads:
            v = specs[head]
            trained[("steps", head)] = train_head(base_cfg, suite_name, v.head, steps, out / suite_name / f"{head}_steps{steps}",
                                                  overrides=v.overrides)
        if equal_wall_clock:
            ref_head = base_cfg.policy.head if base_cfg.policy.head in specs else heads[0]
            ref = trained[("steps", ref_head)]
            budget = ref["train_steps"] * sps[ref_head] if ref_head in sps else ref["train_seconds"]
            for head in heads:
                t = trained[("steps", head)]
                if head == ref_head:
                    trained[("wall", head)] = t
                    continue
                per_step = sps.get(head, t["train_seconds"] / max(1, t["train_steps"]))
                n = max(1, int(budget / per_step))
                # with measured s/step the budget is already a step count (a time cap would cut runs short
                # whenever the machine is busier than when s/step was measured); else cap the wall-clock too
                cap = 0.0 if head in sps and ref_head in sps else budget
                trained[("wall", head)] = train_head(base_cfg, suite_name, specs[head].head, n,
                                                     out / suite_name / f"{head}_wall{int(budget)}s", max_seconds=cap,
                                                     overrides=specs[head].overrides)
        for (budget_kind, head), t in trained.items():
            policy = load_policy(t["policy_dir"])
            variants = eval_variants(specs[head].head)
            for label, ov in variants:
                if head != specs[head].head:  # a variant: its own name, plus the preset's if several
                    label = head if len(variants) == 1 else f"{head}/{label}"
                r = evaluate_variant(policy, suite, tasks, episodes, seed, ov)
                rows.append({"suite": suite_name, "budget": "equal steps" if budget_kind == "steps" else "equal wall-clock",
                             "head": label, "train_steps": t["train_steps"], "train_s": t["train_seconds"], **r})
    return rows


def plot(rows: list[dict[str, Any]], path: Path) -> Path:
    plt = pyplot()

    groups = list(dict.fromkeys((r["suite"], r["budget"]) for r in rows))
    fig, axes = plt.subplots(1, len(groups), figsize=(3.6 * len(groups), 3.4), squeeze=False)
    for ax, (s, b) in zip(axes[0], groups):
        rs = [r for r in rows if r["suite"] == s and r["budget"] == b]
        x = np.arange(len(rs))
        y = [r["success"] for r in rs]
        err = [[r["success"] - r["ci_low"] for r in rs], [r["ci_high"] - r["success"] for r in rs]]
        ax.bar(x, y, yerr=err, capsize=3, color=["C0", "C1", "C2", "C3"][: len(rs)])
        ax.set_xticks(x, [f"{r['head']}\n{r['nfe']:.0f} nfe" for r in rs], fontsize=7)
        ax.set_ylim(0, 1.05)
        ax.set_title(f"{s}: {b}", fontsize=8)
    axes[0][0].set_ylabel("success rate")
    return save_figure(fig, path)


COLUMNS = ["suite", "budget", "head", "train_steps", "train_s", "success", "ci_low", "ci_high", "nfe", "forward_equiv", "chunk_ms",
           "commit", "mode_left", "mode_right", "mode_collision", "mode_none"]


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    import torch

    from recipes.configs import named_recipe

    p = argparse.ArgumentParser(prog="python -m recipes.studies.head_to_head", description=__doc__.split("\n\n")[0])
    p.add_argument("--recipe", default="reach2d_ebt", help="the recipe every head shares (data size, backbone, trunk, optim)")
    p.add_argument("--suites", nargs="+", default=["reach2d", "reach2d_detour"])
    p.add_argument("--heads", nargs="*", default=None, choices=available_heads(),
                   help="heads to train (default: every registered head, the recipe's first)")
    p.add_argument("--variant", action="append", default=[], metavar="NAME:HEAD:key=value,...",
                   help="also train HEAD with these config fields changed, as rows named NAME (repeatable)")
    p.add_argument("--steps", type=int, default=None, help="gradient steps (default: the recipe's)")
    p.add_argument("--episodes-per-task-data", type=int, default=None, help="override the recipe's demos per task")
    p.add_argument("--episodes", type=int, default=20, help="evaluation episodes per task")
    p.add_argument("--seed", type=int, default=60_000)
    p.add_argument("--no-equal-wall-clock", action="store_true")
    p.add_argument("--seconds-per-step", nargs="*", default=[], metavar="HEAD=S",
                   help="measured training s/step per head (benchmarks/train_throughput.py) for the wall-clock budget")
    p.add_argument("--out", required=True)
    a = p.parse_args(argv)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    try:
        cfg = named_recipe(a.recipe, a.episodes_per_task_data)
    except ValueError as e:
        raise SystemExit(f"error: {e}") from None
    steps = a.steps or cfg.optim.steps
    try:
        variants = [parse_variant(v) for v in a.variant]
        for v in variants:
            _head_config(cfg.policy, v.head, v.overrides)
    except ValueError as e:
        raise SystemExit(f"error: {e}") from None
    out = Path(a.out)
    sps = {k: float(v) for k, v in (x.split("=", 1) for x in a.seconds_per_step)}
    heads = a.heads if a.heads is not None else [cfg.policy.head, *(h for h in available_heads() if h != cfg.policy.head)]
    rows = run_head_to_head(cfg, a.suites, [*heads, *variants], steps, a.episodes, a.seed, out, not a.no_equal_wall_clock, sps)
    write_study(out, "head_to_head", rows, COLUMNS,
                meta={"recipe": a.recipe, "variants": a.variant, "steps": steps, "episodes_per_task": a.episodes, "seed": a.seed},
                title="Head-to-head at equal steps and equal training wall-clock")
    plot(rows, out / "head_to_head.png")
    return rows


if __name__ == "__main__":
    main()
