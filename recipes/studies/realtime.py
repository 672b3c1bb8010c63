"""Study: chunk execution under inference delay: success and smoothness per head x strategy x delay.

    python -m recipes.studies.realtime --policies ebt=runs/ebt/policy flow=runs/flow/policy \\
        --suite reach2d --delays 0 1 2 4 8 \\
        --strategies sync naive_async temporal_ensemble rtc energy_gate --episodes 20 \\
        --out runs/studies/realtime

Each cell (policy, strategy, delay d) runs the same seeded episodes through
``eval.sim.rollout.evaluate`` with ``EvalConfig(strategy=..., delay_steps=d)``: inference "takes" d
control steps and the env advances with the actions already committed meanwhile (``sync`` waits
instead: the env does not advance, the waited periods are counted as stalls). ``--wall-clock`` adds
a cell per strategy whose delay is each chunk's measured latency at ``--control-hz``. Strategies a
head cannot run (rtc without ``capabilities.inpainting``, energy_gate without energy) are skipped
and listed. Every finished cell is saved under ``OUT/cells/`` and reused by a rerun with the same
settings (an interrupted study resumes). Writes ``realtime.{json,md,png}``: per cell the success
rate (95% interval), the largest action jump at a chunk switch and the mean squared second
difference of the actions (episode means), stalls and starved steps per episode, switches,
energy-gate rejections and chunk latency. See docs/realtime.md, "Asynchronous execution".
"""

from __future__ import annotations

import argparse
import json
import math
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from vla_ebt.config_io import atomic_write_text, json_safe

from .common import fmt, load_policy, pyplot, save_figure

__all__ = ["COLUMNS", "parse_policies", "cell_name", "run_cell", "run_realtime", "plot", "main"]

COLUMNS = ["policy", "head", "strategy", "delay", "success", "ci_low", "ci_high", "episodes", "max_switch_jump",
           "mean_sq_second_diff", "stalls", "starved", "switches", "gate_rejections", "chunk_ms"]
WALL = "wall"


def parse_policies(specs: Sequence[str]) -> dict[str, str]:
    """["ebt=DIR", "flow=DIR"] -> {"ebt": "DIR", "flow": "DIR"} (names unique, no "/" in names)."""
    out: dict[str, str] = {}
    for s in specs:
        name, sep, path = s.partition("=")
        if not sep or not name or not path or "/" in name:
            raise ValueError(f"--policies expects NAME=DIR (NAME without '/'), got {s!r}")
        if name in out:
            raise ValueError(f"--policies: name {name!r} given twice")
        out[name] = path
    return out


def cell_name(policy: str, strategy: str, delay: int | str) -> str:
    return f"{policy}__{strategy}__d{delay}"


def _mean(xs: Sequence[Any]) -> float:
    v = [float(x) for x in xs if x is not None and math.isfinite(float(x))]
    return float(np.mean(v)) if v else float("nan")


def run_cell(policy: Any, suite: Any, tasks: Sequence[str], episodes: int, seed: int, strategy: str,
             delay: int | str, *, control_hz: float = 10.0, on_starve: str = "hold",
             request_remaining: int | None = None, split: str = "train") -> dict[str, Any]:
    """One cell: ``evaluate`` with the strategy and delay (``"wall"``: measured latency); a row."""
    from eval.sim.rollout import EvalConfig, evaluate

    wall = delay == WALL
    cfg = EvalConfig(tasks=list(tasks), episodes_per_task=episodes, seed=seed, split=split, num_workers=0,
                     strategy=strategy, delay_steps=0 if wall else int(delay),
                     delay_mode="wall_clock" if wall else "steps", control_hz=control_hz, on_starve=on_starve,
                     request_remaining=request_remaining)
    rep = evaluate(policy, suite, cfg)
    o, eps = rep.overall, rep.episodes
    return {
        "strategy": strategy, "delay": delay, "success": o.success_rate, "ci_low": o.ci_low, "ci_high": o.ci_high,
        "episodes": o.episodes, "successes": o.successes, "errors": o.errors, "mean_length": o.mean_length,
        "max_switch_jump": _mean([e.max_switch_jump for e in eps]),
        "mean_switch_jump": _mean([e.mean_switch_jump for e in eps]),
        "mean_sq_second_diff": _mean([e.mean_sq_second_diff for e in eps]),
        "stalls": _mean([e.stalls for e in eps]), "starved": _mean([e.starved for e in eps]),
        "switches": _mean([e.switches for e in eps]), "gate_rejections": _mean([e.gate_rejections for e in eps]),
        "chunks": _mean([e.num_chunks for e in eps]), "chunk_ms": o.mean_chunk_latency_ms,
        "per_task": {t: r.success_rate for t, r in rep.tasks.items()},
        "first_error": next((e.error for e in eps if e.error), None),
    }


def run_realtime(policies: dict[str, str], suite_name: str, out: str | Path, *, tasks: Sequence[str] | None = None,
                 episodes: int = 20, seed: int = 30_000, delays: Sequence[int] = (0, 1, 2, 4, 8),
                 strategies: Sequence[str] = ("sync", "naive_async", "temporal_ensemble", "rtc", "energy_gate"),
                 wall_clock: bool = False, control_hz: float = 10.0, on_starve: str = "hold",
                 request_remaining: int | None = None, suite_kwargs: dict[str, Any] | None = None,
                 split: str = "train", log: Any = print) -> dict[str, Any]:
    """Every (policy, strategy, delay) cell, resuming from ``OUT/cells``; writes the outputs and
    returns ``{"meta", "rows", "skipped"}``."""
    from eval.sim.rollout import EvalConfig, execution_problem
    from eval.sim.suites import make_suite
    from vla_ebt_client import STRATEGIES

    bad = [s for s in strategies if s not in STRATEGIES]
    if bad:
        raise ValueError(f"unknown strategies {bad}; known: {list(STRATEGIES)}")
    out = Path(out)
    cells = out / "cells"
    cells.mkdir(parents=True, exist_ok=True)
    suite = make_suite(suite_name, **(suite_kwargs or {}))
    task_list = list(tasks or suite.task_names())
    cell_delays: list[int | str] = [int(d) for d in delays] + ([WALL] if wall_clock else [])
    rows: list[dict[str, Any]] = []
    skipped: list[dict[str, Any]] = []
    for name, path in policies.items():
        policy = load_policy(path)
        head = getattr(policy.cfg, "head", "?")
        for strategy in strategies:
            why = execution_problem(policy, EvalConfig(strategy=strategy))
            if why:
                skipped.append({"policy": name, "head": head, "strategy": strategy, "reason": why})
                if log:
                    log(f"{name} / {strategy}: skipped ({why})")
                continue
            for d in cell_delays:
                settings = {"policy_path": str(path), "suite": suite_name, "suite_kwargs": suite_kwargs or {},
                            "tasks": task_list, "episodes": episodes, "seed": seed, "split": split,
                            "strategy": strategy, "delay": d, "control_hz": control_hz, "on_starve": on_starve,
                            "request_remaining": request_remaining}
                f = cells / f"{cell_name(name, strategy, d)}.json"
                row = None
                if f.exists():
                    saved = json.loads(f.read_text())
                    if saved.get("settings") == json_safe(settings):
                        row = saved["row"]
                if row is None:
                    row = {"policy": name, "head": head, **run_cell(
                        policy, suite, task_list, episodes, seed, strategy, d, control_hz=control_hz,
                        on_starve=on_starve, request_remaining=request_remaining, split=split)}
                    row = json.loads(json.dumps(json_safe(row)))  # NaN -> None, as a resumed cell reads
                    atomic_write_text(f, json.dumps({"settings": json_safe(settings), "row": row}, indent=2))
                    if log:
                        log(f"{name} / {strategy} / d={d}: success {row['success']:.3f}, max switch jump "
                            f"{row['max_switch_jump']}, stalls {row['stalls']}, starved {row['starved']}")
                rows.append(row)
    meta = {"policies": dict(policies), "suite": suite_name, "suite_kwargs": suite_kwargs or {}, "tasks": task_list,
            "episodes_per_task": episodes, "seed": seed, "split": split, "delays": list(cell_delays),
            "strategies": list(strategies), "control_hz": control_hz, "on_starve": on_starve,
            "request_remaining": request_remaining}
    result = {"meta": meta, "rows": rows, "skipped": skipped}
    write_outputs(out, result)
    return result


def to_markdown(result: dict[str, Any]) -> str:
    m = result["meta"]
    lines = ["# Real-time chunk execution: success and smoothness vs inference delay", "",
             f"suite {m['suite']} · tasks {', '.join(m['tasks'])} · {m['episodes_per_task']} episodes per task and "
             f"cell · seed {m['seed']} · on starve `{m['on_starve']}` · delays in control steps"
             + (f" (`wall`: measured latency at {m['control_hz']:g} Hz)" if WALL in m["delays"] else ""), "",
             "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for r in result["rows"]:
        lines.append("| " + " | ".join("-" if r.get(c) is None else fmt(r.get(c, "")) for c in COLUMNS) + " |")
    lines += ["", "max_switch_jump: largest ||a_t - a_{t-1}|| at a chunk switch; mean_sq_second_diff: mean "
              "||a_{t+1} - 2 a_t + a_{t-1}||^2 (both episode means); stalls / starved: control periods per episode "
              "the loop waited for a chunk / held its last action."]
    if result["skipped"]:
        lines += ["", "Skipped (the head cannot run the strategy):", ""]
        lines += [f"- {s['policy']} ({s['head']}) / {s['strategy']}: {s['reason']}" for s in result["skipped"]]
    return "\n".join(lines) + "\n"


def plot(rows: list[dict[str, Any]], path: Path) -> Path:
    """Success (with interval), max switch jump and mean squared second difference vs delay, one line
    per strategy, one column per policy (wall-clock cells are left out)."""
    plt = pyplot()
    names = list(dict.fromkeys(r["policy"] for r in rows)) or ["-"]
    metrics = [("success", "success rate"), ("max_switch_jump", "max jump at a switch"),
               ("mean_sq_second_diff", "mean sq. 2nd difference")]
    fig, axes = plt.subplots(len(metrics), len(names), figsize=(4.2 * len(names), 8), squeeze=False)
    for j, name in enumerate(names):
        mine = [r for r in rows if r["policy"] == name and r["delay"] != WALL]
        for strategy in dict.fromkeys(r["strategy"] for r in mine):
            rs = sorted((r for r in mine if r["strategy"] == strategy), key=lambda r: r["delay"])
            x = [r["delay"] for r in rs]
            for i, (key, _) in enumerate(metrics):
                y = np.array([np.nan if r[key] is None else r[key] for r in rs], float)
                if key == "success":
                    err = np.array([[r["success"] - r["ci_low"] for r in rs], [r["ci_high"] - r["success"] for r in rs]])
                    axes[i, j].errorbar(x, y, yerr=err, marker="o", capsize=3, label=strategy)
                else:
                    axes[i, j].plot(x, y, marker="o", label=strategy)
        axes[0, j].set_title(name)
        axes[0, j].set_ylim(-0.02, 1.05)
        for i, (_, label) in enumerate(metrics):
            axes[i, j].set_xlabel("inference delay d (control steps)")
            axes[i, j].set_ylabel(label)
        axes[0, j].legend(fontsize=7)
    return save_figure(fig, path)


def write_outputs(out: Path, result: dict[str, Any]) -> None:
    atomic_write_text(out / "realtime.json", json.dumps(json_safe(result), indent=2))
    text = to_markdown(result)
    atomic_write_text(out / "realtime.md", text)
    print(text)
    plot(result["rows"], out / "realtime.png")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    import torch

    from eval.sim.suites import parse_suite_args

    p = argparse.ArgumentParser(prog="python -m recipes.studies.realtime", description=__doc__.split("\n\n")[0])
    p.add_argument("--policies", nargs="+", required=True, metavar="NAME=DIR", help="save_pretrained directories")
    p.add_argument("--suite", default="reach2d")
    p.add_argument("--suite-arg", action="append", default=[], metavar="KEY=VALUE", help="make_suite keyword")
    p.add_argument("--tasks", nargs="*", default=None)
    p.add_argument("--episodes", type=int, default=20, help="episodes per task per cell")
    p.add_argument("--seed", type=int, default=30_000)
    p.add_argument("--delays", type=int, nargs="+", default=[0, 1, 2, 4, 8], help="inference delays in control steps")
    p.add_argument("--strategies", nargs="+", default=["sync", "naive_async", "temporal_ensemble", "rtc", "energy_gate"])
    p.add_argument("--wall-clock", action="store_true", help="add a cell per strategy with the measured latency")
    p.add_argument("--control-hz", type=float, default=10.0, help="control rate of the --wall-clock cells")
    p.add_argument("--on-starve", choices=["hold", "block"], default="hold")
    p.add_argument("--request-remaining", type=int, default=None,
                   help="request the next chunk when this many actions remain (default horizon - n_action_steps)")
    p.add_argument("--split", choices=["train", "heldout"], default="train")
    p.add_argument("--out", required=True)
    a = p.parse_args(argv)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    return run_realtime(parse_policies(a.policies), a.suite, a.out, tasks=a.tasks, episodes=a.episodes, seed=a.seed,
                        delays=a.delays, strategies=a.strategies, wall_clock=a.wall_clock, control_hz=a.control_hz,
                        on_starve=a.on_starve, request_remaining=a.request_remaining,
                        suite_kwargs=parse_suite_args(a.suite_arg), split=a.split)


if __name__ == "__main__":
    main()
