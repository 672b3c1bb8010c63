"""``python -m recipes.compare``: the head comparison (docs/comparison_protocol.md).

    python -m recipes.compare --suite metaworld --heads ebt flow diffusion regression --seeds 0 1 2 --out DIR
        [--protocols lora frozen] [--steps N] [--checkpoints 5] [--episodes 10] [--tune-steps N]
        [--tune-lr 1e-4 3e-4 1e-3] [--tune-ema 0.99 0.999] [--jobs N] [--publish] [--dry-run]
        [--variants ebt_eqm:ebt:objective=eqm,infer_steps=4]   # a head with changed config, as its own cell

Per suite and protocol: (1) every head x (lr, EMA) candidate trains on training seed ``--tune-seed`` for
``--tune-steps`` and is evaluated on the tuning seeds; the best candidate per head is written to
``DIR/<suite>/<protocol>/tuning.json``; (2) every head trains with its choice on every ``--seeds``
seed for ``--steps`` with ``--checkpoints`` evenly spaced checkpoints, each evaluated on the final
evaluation seeds under every preset with warm start off, and on for heads that can warm start.
Every run is resumable and writes its artifact; ``--publish`` copies the finished ones to
docs/results/compare/ and regenerates the tables, plots and README section (``python -m recipes.results``).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any, Sequence

from vla_ebt.heads import available_heads

from recipes.studies.head_to_head import HeadVariant, parse_variant

from .plan import PROTOCOLS, RunSpec, SeedPlan, Variant, check_seed_plan, head_variants, train_config, tune_decay

__all__ = ["main", "build_plan"]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m recipes.compare", description=__doc__.split("\n\n")[0])
    p.add_argument("--suite", nargs="+", default=["metaworld"], help="suites (each uses the recipe <suite>_<head>)")
    p.add_argument("--variants", nargs="+", default=[], metavar="NAME:HEAD:key=value,...",
                   help="extra cells: HEAD trained with config fields changed, compared as its own head NAME "
                        "(e.g. ebt_eqm:ebt:objective=eqm,infer_steps=4); tuned and evaluated like every head")
    p.add_argument("--heads", nargs="*", default=None,
                   help="registered heads (default: all; the flag alone: none, only the --variants cells)")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], help="training seeds of the final runs")
    p.add_argument("--out", required=True, help="run folders, tuning.json and artifacts go here")
    p.add_argument("--protocols", nargs="+", default=["lora"], choices=PROTOCOLS, help="backbone fine-tuning modes")
    p.add_argument("--recipe", default=None, help="base recipe (default: <suite>_<first registered head>)")
    p.add_argument("--demos-per-task", type=int, default=None, help="override the recipe's demonstrations per task")
    p.add_argument("--steps", type=int, default=None, help="training steps of a final run (default: the recipe's)")
    p.add_argument("--checkpoints", type=int, default=5, help="evenly spaced checkpoints evaluated per final run")
    p.add_argument("--episodes", type=int, default=10, help="final evaluation episodes per task and eval seed")
    p.add_argument("--curve-episodes", type=int, default=0,
                   help="episodes per task and eval seed at the checkpoints before the last (the first ones of "
                        "the final list; the learning-curve AUC uses these at every checkpoint); 0: --episodes")
    p.add_argument("--eval-seeds", nargs="+", type=int, default=[10_000], help="final evaluation base seeds")
    p.add_argument("--tune-steps", type=int, default=None, help="tuning budget (default steps // 4; 0: no tuning, "
                   "the recipe's lr / EMA for every head)")
    p.add_argument("--tune-lr", nargs="+", type=float, default=[1e-4, 3e-4, 1e-3])
    p.add_argument("--tune-ema", nargs="+", type=float, default=[0.99, 0.999],
                   help="EMA decays meant for the final budget (tuning runs use decay ** (steps / tune_steps))")
    p.add_argument("--tune-seed", type=int, default=0, help="training seed of the tuning runs")
    p.add_argument("--tune-eval-seeds", nargs="+", type=int, default=[20_000], help="tuning evaluation base seeds")
    p.add_argument("--tune-episodes", type=int, default=None, help="tuning episodes per task (default: --episodes)")
    p.add_argument("--no-warm-rows", action="store_true", help="skip the warm-start-on rows")
    p.add_argument("--final-presets", nargs="+", default=[], metavar="HEAD=PRESET[,PRESET...]",
                   help="evaluate the final runs of HEAD (a head or a --variants name) under only these of its "
                        "presets, e.g. diffusion=ddim-10 (its tuning still uses its first preset)")
    p.add_argument("--tune-presets", nargs="+", default=[], metavar="HEAD=PRESET",
                   help="tune HEAD by this preset instead of its first, e.g. diffusion=ddim-10 with "
                        "--final-presets diffusion=ddim-10, so that it is chosen by the rows it is scored by")
    p.add_argument("--fixed-hparams", nargs="+", default=[], metavar="HEAD=LR,EMA",
                   help="train HEAD (a head or a --variants name) at this lr and EMA decay without tuning it, "
                        "e.g. an ablation at another cell's choice; its tuning.json entry and table row say "
                        "'untuned'")
    p.add_argument("--tuning-from", nargs="+", default=[], metavar="TUNING.json",
                   help="reuse the choices of a stored tuning.json (e.g. a published one) for the cells it covers "
                        "instead of re-running their tuning; its budget, grid and tuning seeds must match this run's")
    p.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="parallel single-thread runs")
    p.add_argument("--demo-cache", default=None, help="demo / feature cache root (default: the recipe's)")
    p.add_argument("--publish", action="store_true", help="copy finished artifacts to docs/results/compare and "
                   "regenerate tables, plots and the README section")
    p.add_argument("--publish-dir", default=None, help="publish to this folder instead (implies --publish; the "
                   "README is regenerated only for the default folder)")
    p.add_argument("--finished-only", action="store_true", help="run nothing: report (and with --publish, "
                   "publish) the runs that have finished, e.g. a grid stopped part-way; a head whose tuning is "
                   "unfinished gets no choice and no final artifacts")
    p.add_argument("--dry-run", action="store_true", help="print the plan and exit")
    return p


def _base_recipe(suite: str, a: argparse.Namespace, heads: list[str]) -> Any:
    import dataclasses

    from recipes.configs import named_recipe, recipes

    name = a.recipe or f"{suite}_{heads[0]}"
    if name not in recipes():
        raise ValueError(f"no recipe {name!r} for suite {suite!r}; pass --recipe NAME (known: {sorted(recipes())})")
    cfg = named_recipe(name, a.demos_per_task)
    if cfg.data.suite != suite:
        cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, suite=suite, tasks=(), suite_args=()))
    return cfg


def _tasks(cfg: Any) -> tuple[str, ...]:
    from eval.sim.suites import make_suite, parse_suite_args

    return tuple(cfg.data.tasks) or tuple(make_suite(cfg.data.suite, **parse_suite_args(cfg.data.suite_args)).task_names())


def build_plan(a: argparse.Namespace) -> dict[str, Any]:
    """{"tune": [RunSpec], "final": {(suite, protocol, head): steps, ...}, "bases", "seeds"} from the
    parsed arguments; ValueError on bad input (overlapping seeds, unknown heads / recipes)."""
    from .artifacts import git_commit

    heads = available_heads() if a.heads is None else list(a.heads)
    unknown = [h for h in heads if h not in available_heads()]
    if unknown:
        raise ValueError(f"unknown head(s) {unknown}; registered: {available_heads()}")
    cells_heads = [HeadVariant(h, h) for h in heads] + [_variant(s) for s in a.variants]
    if not cells_heads:
        raise ValueError("--heads names no head and there are no --variants: nothing to compare")
    names = [v.name for v in cells_heads]
    clash = sorted({n for n in names if names.count(n) > 1} | {v.name for v in cells_heads[len(heads):]
                                                                  if v.name in available_heads()})
    if clash:
        raise ValueError(f"--variants: name(s) {clash} repeat a head or another variant; give each its own NAME")
    out = Path(a.out).resolve()
    commit = git_commit()
    plan: dict[str, Any] = {"tune": [], "cells": [], "bases": {}, "seed_plans": {}, "commit": commit,
                            "final_presets": final_presets(a.final_presets, cells_heads),
                            "tune_presets": tune_presets(a.tune_presets, cells_heads),
                            "fixed": fixed_hparams(a.fixed_hparams, cells_heads)}
    reused = stored_tunings(a.tuning_from)
    for suite in a.suite:
        base = _base_recipe(suite, a, [v.head for v in cells_heads])  # a variants-only run: its first variant's head
        steps = a.steps or base.optim.steps
        if steps % a.checkpoints:
            raise ValueError(f"--steps {steps} is not a multiple of --checkpoints {a.checkpoints}")
        tune_steps = steps // 4 if a.tune_steps is None else a.tune_steps
        tasks = _tasks(base)
        seeds = SeedPlan(tasks, base.data.seed, base.data.episodes_per_task, tuple(a.tune_eval_seeds),
                         a.tune_episodes or a.episodes, tuple(a.eval_seeds), a.episodes)
        check_seed_plan(seeds)
        plan["bases"][suite] = base
        plan["seed_plans"][suite] = seeds
        for protocol in a.protocols:
            for hv in cells_heads:
                head = hv.name
                cell = {"suite": suite, "protocol": protocol, "head": head, "steps": steps, "tune_steps": tune_steps,
                        "tune": [], "variant": hv}
                grid = [(lr, ema) for lr in a.tune_lr for ema in a.tune_ema] if tune_steps > 0 else []
                tp = plan["tune_presets"].get(head, "")
                stored = reused.get((suite, protocol, head))
                if head in plan["fixed"]:
                    cell["fixed"] = plan["fixed"][head]
                    grid, stored = [], None
                if stored is not None and grid and stored["entry"].get("tune_preset", "") != tp:
                    print(f"[compare] {suite}/{protocol}/{head}: {stored['file']} was tuned under preset "
                          f"{stored['entry'].get('tune_preset') or 'first'!r}, this run tunes by {tp or 'first'!r}: tuned again")
                    stored = None
                if stored is not None and grid:
                    check_reusable(stored, suite=suite, protocol=protocol, steps=steps, tune_steps=tune_steps, a=a)
                    cell["reused"] = stored
                    grid = []
                for lr, ema in grid:
                    spec = RunSpec(suite, protocol, head, "tune", lr, ema, a.tune_seed, tune_steps, 1,
                                   seeds.tune_eval_seeds, seeds.tune_episodes, tasks,
                                   tuple(_rows(hv, warm_rows=False, presets=(tp,) if tp else None)[:1]),
                                   str(out), meta={"git_commit": commit, "jobs": a.jobs}, tune_preset=tp,
                                   **_variant_fields(hv))
                    cfg = train_config(base, suite=suite, head=hv.head, protocol=protocol, lr=lr,
                                       ema_decay=tune_decay(ema, steps, tune_steps), seed=a.tune_seed, steps=tune_steps,
                                       checkpoints=1, run_dir=spec.run_dir, demo_cache=a.demo_cache,
                                       head_overrides=hv.overrides)
                    spec = _with_config(spec, cfg)
                    cell["tune"].append(spec)
                    plan["tune"].append(spec)
                plan["cells"].append(cell)
    return plan


def fixed_hparams(items: Sequence[str], cells_heads: Sequence[HeadVariant]) -> dict[str, tuple[float, float]]:
    """``--fixed-hparams HEAD=LR,EMA`` items -> {cell name: (lr, ema_decay)}; ValueError naming the item
    for an unknown cell, a repeated one, or values that are not an lr > 0 and an EMA decay in [0, 1)."""
    names = {v.name for v in cells_heads}
    out: dict[str, tuple[float, float]] = {}
    for item in items:
        name, _, rest = item.partition("=")
        parts = rest.split(",")
        if name not in names:
            raise ValueError(f"--fixed-hparams {item!r}: {name!r} is not a cell of this run (cells: {sorted(names)})")
        if name in out:
            raise ValueError(f"--fixed-hparams {item!r}: {name!r} is given twice")
        try:
            lr, ema = (float(x) for x in parts) if len(parts) == 2 else (None, None)
        except ValueError:
            lr = ema = None
        if lr is None or ema is None or not 0 < lr < float("inf") or not 0 <= ema < 1:
            raise ValueError(f"--fixed-hparams {item!r}: expected HEAD=LR,EMA with LR > 0 and 0 <= EMA < 1, "
                             "e.g. diffusion=1e-3,0.99")
        out[name] = (lr, ema)
    return out


def stored_tunings(paths: Sequence[str]) -> dict[tuple[str, str, str], dict[str, Any]]:
    """``--tuning-from`` files -> {(suite, protocol, head): {"file": path, "tuning": the file's dict,
    "head": head, "entry": its head entry}}; ValueError naming the file for an unreadable file or a
    missing field. A head entry without a complete choice is refused only where a cell uses it
    (:func:`check_reusable`)."""
    import json

    out: dict[tuple[str, str, str], dict[str, Any]] = {}
    for path in paths:
        try:
            t = json.loads(Path(path).read_text())
        except (OSError, ValueError) as e:
            raise ValueError(f"--tuning-from {path}: cannot read a tuning.json ({e})") from None
        missing = [k for k in ("suite", "protocol", "heads", "steps", "tune_steps", "grid") if k not in t]
        if missing:
            raise ValueError(f"--tuning-from {path}: missing field(s) {missing} of a tuning.json")
        for head, entry in t["heads"].items():
            out[(t["suite"], t["protocol"], head)] = {"file": str(path), "tuning": t, "head": head, "entry": entry}
    return out


def check_reusable(stored: dict[str, Any], *, suite: str, protocol: str, steps: int, tune_steps: int,
                   a: argparse.Namespace) -> None:
    """ValueError naming the file and field where a stored tuning was made under other settings than
    this run's (final / tuning budget, lr x EMA grid, tuning seed, evaluation seeds or episodes), or where
    its entry has no complete choice (e.g. published by ``--finished-only`` before its tuning finished)."""
    t, f = stored["tuning"], stored["file"]
    chosen = stored["entry"].get("chosen") or {}
    if not stored["entry"].get("complete") or "lr" not in chosen or "ema_decay" not in chosen:
        raise ValueError(f"--tuning-from {f}: heads.{stored['head']} has no complete choice (lr, ema_decay)")
    want = {"steps": steps, "tune_steps": tune_steps,
            "grid": {"lr": list(a.tune_lr), "ema_decay": list(a.tune_ema)},
            "tune_seed": a.tune_seed, "tune_eval_seeds": list(a.tune_eval_seeds),
            "tune_episodes": a.tune_episodes or a.episodes}
    for field, value in want.items():
        if field in t and t[field] != value:
            raise ValueError(f"--tuning-from {f}: {suite}/{protocol} field {field!r} is {t[field]!r}, this run "
                             f"has {value!r}; tune again or pass the same settings")


def _variant(spec: str) -> HeadVariant:
    try:
        return parse_variant(spec)
    except ValueError as e:
        raise ValueError(str(e).replace("--variant ", "--variants ")) from None


def _rows(hv: HeadVariant, warm_rows: bool = True, presets: Sequence[str] | None = None) -> list[Variant]:
    """The evaluation rows of a cell: the head's presets (only ``presets`` when given), labelled by the
    variant's name."""
    return head_variants(hv.head, warm_rows=warm_rows, name=hv.name, presets=presets)


def tune_presets(specs: Sequence[str], cells_heads: Sequence[HeadVariant]) -> dict[str, str]:
    """``--tune-presets HEAD=PRESET ...`` -> {cell name: preset}; ValueError naming the flag as for
    ``--final-presets``, and for more than one preset per head."""
    out = {}
    for name, presets in final_presets(specs, cells_heads, flag="--tune-presets").items():
        if len(presets) != 1:
            raise ValueError(f"--tune-presets {name}={','.join(presets)}: one preset per head")
        out[name] = presets[0]
    return out


def final_presets(specs: Sequence[str], cells_heads: Sequence[HeadVariant],
                  flag: str = "--final-presets") -> dict[str, tuple[str, ...]]:
    """``--final-presets HEAD=P1,P2 ...`` -> {cell name: presets}; ValueError naming the flag for an
    unknown cell name or a preset its head does not declare."""
    from recipes.studies.head_to_head import eval_variants

    by_name = {hv.name: hv for hv in cells_heads}
    out: dict[str, tuple[str, ...]] = {}
    for item in specs:
        name, sep, rest = item.partition("=")
        presets = tuple(p for p in rest.split(",") if p)
        if not sep or not presets:
            raise ValueError(f"{flag} {item!r}: expected HEAD=PRESET[,PRESET...]")
        if name not in by_name:
            raise ValueError(f"{flag} {item!r}: {name!r} is not a head of this run ({list(by_name)})")
        known = [label for label, _ in eval_variants(by_name[name].head)]
        bad = [p for p in presets if p not in known]
        if bad:
            raise ValueError(f"{flag} {item!r}: head {by_name[name].head!r} has no preset(s) {bad}; "
                             f"its presets: {known}")
        out[name] = presets
    return out


def _variant_fields(hv: HeadVariant) -> dict[str, Any]:
    return {} if hv.name == hv.head else {"base_head": hv.head, "head_overrides": tuple(hv.overrides)}


def _with_config(spec: RunSpec, cfg: Any) -> RunSpec:
    import dataclasses

    from vla_ebt import config_io

    return dataclasses.replace(spec, config=config_io.to_dict(cfg))


def final_specs(plan: dict[str, Any], cell: dict[str, Any], hp: dict[str, Any], a: argparse.Namespace) -> list[RunSpec]:
    """The final runs of one (suite, protocol, head) with the chosen hyperparameters ``hp``."""
    suite, head, hv = cell["suite"], cell["head"], cell["variant"]
    base, seeds = plan["bases"][suite], plan["seed_plans"][suite]
    out = []
    for s in a.seeds:
        spec = RunSpec(suite, cell["protocol"], head, "final", hp["lr"], hp["ema_decay"], s, cell["steps"],
                       a.checkpoints, seeds.eval_seeds, seeds.episodes, seeds.tasks,
                       tuple(_rows(hv, warm_rows=not a.no_warm_rows, presets=plan["final_presets"].get(hv.name))),
                       str(Path(a.out).resolve()),
                       meta={"git_commit": plan["commit"], "jobs": a.jobs, "hparams": {"tuned": hp["tuned"]}},
                       curve_episodes=a.curve_episodes, **_variant_fields(hv))
        cfg = train_config(base, suite=suite, head=hv.head, protocol=cell["protocol"], lr=hp["lr"],
                           ema_decay=hp["ema_decay"], seed=s, steps=cell["steps"], checkpoints=a.checkpoints,
                           run_dir=spec.run_dir, demo_cache=a.demo_cache, head_overrides=hv.overrides)
        out.append(_with_config(spec, cfg))
    return out


def _prepare(plan: dict[str, Any], a: argparse.Namespace) -> None:
    """Generate each suite's demonstrations (and, for the frozen protocol, the feature cache) once,
    before parallel runs would all do it at the same time."""
    import dataclasses

    import torch

    from recipes.data import build_data
    from vla_ebt.policy import VLAPolicy

    for suite, base in plan["bases"].items():
        for protocol in a.protocols:
            cfg = train_config(base, suite=suite, head=available_heads()[0], protocol=protocol, lr=base.optim.lr,
                               ema_decay=base.optim.ema_decay, seed=0, steps=a.checkpoints, checkpoints=a.checkpoints,
                               run_dir=Path(a.out) / ".prepare", demo_cache=a.demo_cache)
            data = build_data(cfg.data, cfg.policy, cfg.optim.batch_size, 0)
            if data.prepare_policy is not None:
                torch.set_num_threads(max(1, min(a.jobs, os.cpu_count() or 1)))
                data.prepare_policy(VLAPolicy(dataclasses.replace(cfg.policy), data.normalizer))


def main(argv: list[str] | None = None, execute: Any = None) -> int:
    """Returns 0 when every planned run finished, 1 otherwise (failed runs are listed). ``execute``
    replaces the subprocess executor (tests inject a fake trainer)."""
    from vla_ebt.config_io import atomic_write_json

    from .runner import run_specs, select_hparams, subprocess_execute

    a = _parser().parse_args(argv)
    try:
        plan = build_plan(a)
    except ValueError as e:
        raise SystemExit(f"error: {e}") from None
    n_final = len(plan["cells"]) * len(a.seeds)
    print(f"[compare] {len(plan['tune'])} tuning run(s), {n_final} final run(s) "
          f"({len(plan['cells'])} suite x protocol x head cells x {len(a.seeds)} seeds) -> {a.out}")
    if a.dry_run:
        for c in plan["cells"]:
            tuning = (f"tuning reused from {c['reused']['file']}" if "reused" in c
                      else f"untuned: fixed lr {c['fixed'][0]:g}, EMA {c['fixed'][1]:g}" if "fixed" in c
                      else f"{len(c['tune'])} x {c['tune_steps']} tuning steps")
            print(f"  {c['suite']}/{c['protocol']}/{c['head']}: {tuning}, "
                  f"{len(a.seeds)} x {c['steps']} final steps, rows {[v.label for v in _rows(c['variant'], not a.no_warm_rows, plan['final_presets'].get(c['head']))]}")
        return 0
    if execute is None:
        if not a.finished_only:
            _prepare(plan, a)
        execute = subprocess_execute
    run = not a.finished_only
    tuned = {s.key: o for s, o in zip(plan["tune"], run_specs(plan["tune"], execute, a.jobs, run=run))}
    finals, failed, tunings = [], [o for o in tuned.values() if o.status == "failed"], {}
    for c in plan["cells"]:
        if "reused" in c:  # --tuning-from: the stored choice, with where it came from
            sel = {**c["reused"]["entry"], "reused_from": c["reused"]["file"], "reused_at_commit": plan["commit"]}
        else:
            sel = (select_hparams([tuned[s.key] for s in c["tune"]]) if c["tune"] else
                   {"candidates": [], "complete": True, "chosen": None})
            if plan["tune_presets"].get(c["head"]) and "fixed" not in c:
                sel["tune_preset"] = plan["tune_presets"][c["head"]]
        base = plan["bases"][c["suite"]]
        if "reused" in c:
            hp = {**sel["chosen"], "tuned": True}
        elif "fixed" in c:  # --fixed-hparams: no tuning, the given settings
            hp = {"lr": c["fixed"][0], "ema_decay": c["fixed"][1], "tuned": False, "fixed": True}
        elif not c["tune"]:  # --tune-steps 0: the recipe's settings for every head
            hp = {"lr": base.optim.lr, "ema_decay": base.optim.ema_decay, "tuned": False}
        else:
            hp = {**sel["chosen"], "tuned": True} if sel["chosen"] else None
        t = tunings.setdefault((c["suite"], c["protocol"]), {
            "suite": c["suite"], "protocol": c["protocol"], "steps": c["steps"], "tune_steps": c["tune_steps"],
            "tune_seed": a.tune_seed, "tune_eval_seeds": a.tune_eval_seeds, "tune_episodes": a.tune_episodes or a.episodes,
            "grid": {"lr": a.tune_lr, "ema_decay": a.tune_ema},
            "rule": "highest mean success on the tuning seeds at the end of the tuning run (primary row, warm start "
                    "off); ties: lower final training loss. Tuning runs use EMA decay ** (steps / tune_steps).",
            "heads": {}})
        t["heads"][c["head"]] = {**sel, "chosen": hp}
        if hp is None:
            print(f"[compare] {c['suite']}/{c['protocol']}/{c['head']}: tuning incomplete, final runs skipped")
            continue
        finals += final_specs(plan, c, hp, a)
    tuning_files = []
    for (suite, protocol), t in tunings.items():
        p = Path(a.out) / suite / protocol / "tuning.json"
        atomic_write_json(p, t)
        tuning_files.append(p)
    final_out = run_specs(finals, execute, a.jobs, run=run)
    failed += [o for o in final_out if o.status == "failed"]
    done = [o for o in final_out if o.result is not None]
    print(f"[compare] final runs: {len(done)} of {n_final} finished; {len(failed)} failed this time")
    for o in failed:
        print(f"  FAILED {o.spec.key}: {o.error.splitlines()[0] if o.error else '?'}")
    if a.publish or a.publish_dir:
        from recipes import results

        from .artifacts import DEFAULT_RESULTS_DIR, publish

        dest = Path(a.publish_dir) if a.publish_dir else DEFAULT_RESULTS_DIR
        written = publish([o.result for o in done], tuning_files, dest)
        print(f"[compare] published {len(written)} file(s) to {dest}")
        if dest.resolve() == DEFAULT_RESULTS_DIR.resolve():
            results.main([])
    return 0 if not failed and len(done) == n_final else 1


if __name__ == "__main__":
    sys.exit(main())
