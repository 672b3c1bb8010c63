"""``python -m eval.sim.run``: closed-loop evaluation of a saved policy (or a baseline) on a suite.

::

    python -m eval.sim.run --policy runs/default/policy --suite reach2d --episodes 20 \\
        --seeds 0 1 2 --workers 4 --videos 2 --out runs/default/eval_sim
    python -m eval.sim.run --policy expert --suite reach2d --suite-arg image_size=64 --out /tmp/expert
    # asynchronous chunk execution, inference taking 2 control steps (docs/realtime.md):
    python -m eval.sim.run --policy runs/default/policy --suite reach2d --strategy naive_async --delay 2 --out /tmp/d2

``--policy`` is a ``VLAPolicy.save_pretrained`` directory, or ``expert`` / ``random`` for the
suite's scripted expert / uniform random actions. Each base seed of ``--seeds`` runs
``--episodes`` episodes per task (env seeds from :func:`vla_ebt.data.episodes.episode_seed`).

Writes (atomically) ``OUT/report.json`` (per task: episodes, successes, success rate, 95 % Wilson
interval, mean length, chunk latency, mean energy, steps per chunk, errors; every episode; the
run's settings), ``OUT/report.md``, ``OUT/report.png`` and ``OUT/videos/*.mp4`` (the first
``--videos`` episodes of each task, first seed).

Bad input (unknown suite or task, a policy that does not fit the suite, a missing or corrupt
policy directory) exits with code 2 and a message naming what is wrong, before any episode runs.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any, Sequence

from vla_ebt.config_io import atomic_write_text

from .suites import parse_suite_args

__all__ = ["main", "parse_args", "check_policy_fits", "PolicyMismatch", "UsageError"]


class UsageError(Exception):
    """Bad command-line input; main prints it and exits with code 2."""


class PolicyMismatch(UsageError):
    """The policy's observation/action spec does not fit the suite."""


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m eval.sim.run", description="Closed-loop evaluation of a policy on a simulated suite.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--policy", required=True, help="save_pretrained directory, or 'expert' / 'random'")
    p.add_argument("--suite", required=True, help="registered suite name (e.g. reach2d, metaworld, pusht, libero)")
    p.add_argument("--tasks", nargs="+", default=None, help="task names (default: all of the suite's tasks)")
    p.add_argument("--episodes", type=int, default=10, help="episodes per task and seed")
    p.add_argument("--seeds", type=int, nargs="+", default=[0], help="base seeds; each runs --episodes per task")
    p.add_argument("--workers", type=int, default=0, help="env worker processes (0: serial, in this process)")
    p.add_argument("--split", choices=["train", "heldout"], default="train", help="instruction paraphrases")
    p.add_argument("--videos", type=int, default=0, help="mp4 videos of the first K episodes per task (first seed)")
    p.add_argument("--suite-arg", action="append", default=[], metavar="KEY=VALUE",
                   help="make_suite keyword argument (VALUE parsed as JSON when possible); repeatable")
    p.add_argument("--suite-module", action="append", default=[], metavar="MODULE",
                   help="module to import (here and in every worker) that registers extra suites; repeatable")
    p.add_argument("--worker-python", default=None,
                   help="python interpreter of the env workers (a suite living in another virtualenv)")
    p.add_argument("--step-timeout", type=float, default=30.0, help="seconds an env step may take in a worker")
    p.add_argument("--reset-timeout", type=float, default=120.0, help="seconds make_env + reset may take in a worker")
    p.add_argument("--embodiment", default=None,
                   help="policy embodiment (normalizer name or index); default: the suite's name (a sim-mixture "
                        "policy acts as the embodiment of the suite it is evaluated on), or the only one")
    p.add_argument("--instruction", default=None, help="override every episode's instruction")
    p.add_argument("--noise", type=float, default=0.0, help="action noise of --policy expert")
    p.add_argument("--allow-image-resize", action="store_true",
                   help="accept a policy whose backbone image size differs from the suite's (the backbone resizes)")
    p.add_argument("--device", default="cpu", help="torch device of the policy")
    p.add_argument("--strategy", default="sync",
                   choices=["sync", "naive_async", "temporal_ensemble", "rtc", "energy_gate"],
                   help="chunk execution (docs/realtime.md, 'Asynchronous execution')")
    p.add_argument("--delay", type=int, default=0, help="simulated inference delay in control steps")
    p.add_argument("--delay-mode", choices=["steps", "wall_clock"], default="steps",
                   help="wall_clock: each chunk's measured latency at --control-hz sets its delay")
    p.add_argument("--control-hz", type=float, default=10.0, help="control rate of --delay-mode wall_clock")
    p.add_argument("--on-starve", choices=["hold", "block"], default="hold",
                   help="async: the plan ran out before the next chunk: hold the last action or wait")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--quiet", action="store_true", help="no per-episode log lines")
    args = p.parse_args(argv)
    if args.episodes < 1:
        p.error(f"--episodes must be >= 1, got {args.episodes}")
    if args.workers < 0:
        p.error(f"--workers must be >= 0, got {args.workers}")
    if args.videos < 0:
        p.error(f"--videos must be >= 0, got {args.videos}")
    if args.delay < 0:
        p.error(f"--delay must be >= 0, got {args.delay}")
    if args.worker_python and args.workers < 1:
        p.error("--worker-python needs --workers >= 1 (the suite is then served by that interpreter's workers)")
    return args


# --------------------------------------------------------------------------------------------
# suite and policy
# --------------------------------------------------------------------------------------------


def _suite_and_info(args: argparse.Namespace, suite_kwargs: dict[str, Any]) -> tuple[Any, Any]:
    """(Suite or None, SuiteInfo); with --worker-python the suite is only built in a worker."""
    from .suites import available_suites, make_suite
    from .workers import EnvWorkerPool, SuiteInfo, WorkerConfig, WorkerStartError

    if args.worker_python:
        cfg = WorkerConfig(args.suite, suite_kwargs, tuple(args.suite_module), python=args.worker_python)
        try:
            with EnvWorkerPool(cfg, 1) as pool:
                return None, pool.info
        except WorkerStartError as e:
            raise UsageError(str(e)) from None
    for mod in args.suite_module:
        try:
            importlib.import_module(mod)
        except ImportError as e:
            raise UsageError(f"--suite-module {mod!r} cannot be imported: {e}") from None
    if args.suite not in available_suites():
        raise UsageError(f"unknown suite {args.suite!r}; known suites: {available_suites()}")
    try:
        suite = make_suite(args.suite, **suite_kwargs)
    except TypeError as e:
        raise UsageError(f"suite {args.suite!r} does not accept --suite-arg {sorted(suite_kwargs)}: {e}") from None
    except ImportError as e:
        raise UsageError(f"suite {args.suite!r} cannot be imported here: {e} (use --worker-python for a suite "
                         f"living in another environment)") from None
    return suite, SuiteInfo.from_suite(suite)


def _embodiment_index(names: Sequence[str], requested: str | None, suite_name: str) -> int:
    names = list(names)
    if requested is not None:
        if requested.isdigit():
            i = int(requested)
            if not 0 <= i < len(names):
                raise PolicyMismatch(f"--embodiment {i} out of range; the policy's embodiments are {names}")
            return i
        if requested not in names:
            raise PolicyMismatch(f"--embodiment {requested!r} is not one of the policy's embodiments {names}")
        return names.index(requested)
    if suite_name in names:
        return names.index(suite_name)
    if len(names) == 1:
        return 0
    raise PolicyMismatch(f"the policy was not trained on suite {suite_name!r}: its embodiments are {names} "
                         f"(evaluate it on one of those suites, or pass --embodiment NAME to act as one of them)")


def check_policy_fits(cfg: Any, normalizer: Any, suite: Any, embodiment: str | None = None,
                      allow_image_resize: bool = False, where: str = "policy") -> tuple[int, bool]:
    """Check a PolicyConfig + Normalizer against a suite (Suite or SuiteInfo) before any episode.

    Returns (embodiment index, image_history). Raises PolicyMismatch naming the field, the
    policy's value and the suite's: action/state dims (policy max dims and the embodiment's own),
    camera views (``num_views`` = cameras, or cameras x obs_steps with image history) and the
    backbone's image size.
    """
    emb = _embodiment_index(normalizer.names, embodiment, suite.name)
    name = normalizer.names[emb]
    problems = []
    if cfg.action_dim < suite.action_dim:
        problems.append(f"action_dim {cfg.action_dim} is smaller than the suite's action_dim {suite.action_dim}")
    elif normalizer.action_dim(name) != suite.action_dim:
        problems.append(f"embodiment {name!r} has action dim {normalizer.action_dim(name)}, the suite's actions have "
                        f"{suite.action_dim}")
    if cfg.state_dim < suite.state_dim:
        problems.append(f"state_dim {cfg.state_dim} is smaller than the suite's state_dim {suite.state_dim}")
    elif normalizer.state_dim(name) not in (0, suite.state_dim):
        problems.append(f"embodiment {name!r} has state dim {normalizer.state_dim(name)}, the suite's states have "
                        f"{suite.state_dim}")
    image_history = False
    if cfg.num_views != suite.num_views:
        if cfg.obs_steps > 1 and cfg.num_views == suite.num_views * cfg.obs_steps:
            image_history = True
        else:
            problems.append(f"num_views {cfg.num_views} (camera views per observation) does not match the suite's "
                            f"{suite.num_views} camera view(s)"
                            + (f" x obs_steps {cfg.obs_steps}" if cfg.obs_steps > 1 else ""))
    if suite.image_size and cfg.backbone.image_size != suite.image_size and not allow_image_resize:
        problems.append(f"backbone.image_size {cfg.backbone.image_size} does not match the suite's image_size "
                        f"{suite.image_size} (pass --suite-arg image_size={cfg.backbone.image_size} if the suite "
                        f"supports it, or --allow-image-resize)")
    if problems:
        raise PolicyMismatch(f"{where} does not fit suite {suite.name!r}: " + "; ".join(problems))
    return emb, image_history


def _load_policy(args: argparse.Namespace, suite: Any, info: Any) -> tuple[Any, dict[str, Any]]:
    """(policy, the EvalConfig fields it needs)."""
    from .rollout import ExpertPolicy, RandomPolicy

    if args.policy == "expert":
        return ExpertPolicy(suite if suite is not None else info, noise=args.noise), {}
    if args.policy == "random":
        return RandomPolicy(suite if suite is not None else info, seed=args.seeds[0]), {}
    from vla_ebt.normalize import Normalizer
    from vla_ebt.policy import NORMALIZER_NAME, VLAPolicy

    d = Path(args.policy)
    if not d.is_dir():
        raise UsageError(f"policy directory not found: {d} (expected a save_pretrained directory, or 'expert' / "
                         f"'random')")
    try:
        cfg = VLAPolicy.load_config(d)
        normalizer = Normalizer.load_json(d / NORMALIZER_NAME)
    except Exception as e:  # noqa: BLE001 - any unreadable config is a usage error naming the path
        raise UsageError(f"cannot load policy from {d}: {type(e).__name__}: {e}") from None
    emb, image_history = check_policy_fits(cfg, normalizer, info, args.embodiment, args.allow_image_resize,
                                           where=f"policy {d}")
    try:
        policy = VLAPolicy.from_pretrained(d, map_location=args.device)
    except Exception as e:  # noqa: BLE001
        raise UsageError(f"cannot load policy from {d}: {type(e).__name__}: {e}") from None
    policy.name = d.name if d.name != "policy" else f"{d.parent.name}/{d.name}"
    return policy, {"embodiment": emb, "image_history": image_history, "obs_steps": cfg.obs_steps}


# --------------------------------------------------------------------------------------------
# outputs
# --------------------------------------------------------------------------------------------


def _per_seed(report: Any) -> dict[str, dict[str, float]]:
    """{task: {seed: success rate}} over the report's episodes."""
    out: dict[str, dict[str, float]] = {}
    for t in report.tasks:
        for s in report.seeds or [report.seed]:
            eps = [e for e in report.episodes if e.task == t and e.base_seed == s]
            if eps:
                out.setdefault(t, {})[str(s)] = sum(e.success for e in eps) / len(eps)
    return out


def _markdown(report: Any, extra: dict[str, Any]) -> str:
    lines = [f"# Evaluation: {report.policy} on {report.suite}", "", report.to_markdown(max_errors=20), ""]
    seeds = report.seeds or [report.seed]
    if len(seeds) > 1:
        per = extra["per_seed"]
        lines += ["Success rate per seed:", "", "| task | " + " | ".join(f"seed {s}" for s in seeds) + " |",
                  "|---" + "|---:" * len(seeds) + "|"]
        for t, row in per.items():
            lines.append(f"| {t} | " + " | ".join(f"{row.get(str(s), math.nan):.3f}" for s in seeds) + " |")
        lines.append("")
    vids = [e for e in report.episodes if e.video]
    if vids:
        lines += ["Videos:", ""]
        lines += [f"- [{Path(e.video).name}](videos/{Path(e.video).name})" for e in vids]
        lines.append("")
    lines += ["![report](report.png)", "", f"Command: `{extra['command']}`", ""]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the CLI; returns the report dict written to OUT/report.json. Exit code 2 on bad input."""
    args = parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        import torch

        torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1") or 1))
        try:
            suite_kwargs = parse_suite_args(args.suite_arg)
        except ValueError as e:
            raise UsageError(str(e)) from None
        suite, info = _suite_and_info(args, suite_kwargs)
        tasks = list(args.tasks) if args.tasks else info.task_names()
        unknown = [t for t in tasks if t not in info.task_names()]
        if unknown:
            raise UsageError(f"suite {info.name!r} has no task(s) {unknown}; known tasks: {info.task_names()}")
        policy, policy_kw = _load_policy(args, suite, info)
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None

    from .report_plot import plot_report
    from .rollout import EvalConfig, evaluate, execution_problem

    execution = dict(strategy=args.strategy, delay_steps=args.delay, delay_mode=args.delay_mode,
                     control_hz=args.control_hz, on_starve=args.on_starve)
    problem = execution_problem(policy, EvalConfig(**execution))
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        raise SystemExit(2)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    log = None if args.quiet else (lambda msg: print(f"[eval] {msg}", flush=True))
    n = len(tasks) * args.episodes * len(args.seeds)
    print(f"[eval] {args.policy} on {info.name}: {len(tasks)} task(s) x {args.episodes} episode(s) x "
          f"{len(args.seeds)} seed(s) = {n} episodes, {args.workers or 'no'} env worker(s)", flush=True)
    t0 = time.perf_counter()
    report = evaluate(policy, suite if suite is not None else info.name, EvalConfig(
        tasks=tasks, episodes_per_task=args.episodes, seeds=args.seeds,
        num_workers=args.workers, video_dir=out / "videos" if args.videos else None,
        max_videos_per_task=args.videos, video_format="mp4", split=args.split, instruction=args.instruction,
        suite_kwargs=suite_kwargs, import_modules=tuple(args.suite_module), worker_python=args.worker_python,
        step_timeout_s=args.step_timeout, reset_timeout_s=args.reset_timeout, log=log, **execution, **policy_kw,
    ))
    wall = time.perf_counter() - t0
    extra = {
        "command": "python -m eval.sim.run " + " ".join(argv if argv is not None else sys.argv[1:]),
        "args": {k: v for k, v in vars(args).items()},
        "suite_kwargs": suite_kwargs,
        "per_seed": _per_seed(report),
        "suite_info": dataclasses.asdict(info),
        "total_wall_s": wall,
    }
    d = report.to_dict()
    d["run"] = extra
    atomic_write_text(out / "report.json", json.dumps(d, indent=2))
    atomic_write_text(out / "report.md", _markdown(report, extra))
    plot_report(report, out / "report.png")
    print(report.to_markdown())
    print(f"[eval] wrote {out / 'report.json'}, report.md, report.png"
          + (f", {sum(1 for e in report.episodes if e.video)} video(s) in {out / 'videos'}" if args.videos else "")
          + f" ({wall:.1f} s)")
    return d


if __name__ == "__main__":
    main()
