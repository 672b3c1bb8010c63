"""Fine-tune a VLA policy from a named recipe, then evaluate it closed-loop.

    python recipes/finetune.py --recipe default [--optim.steps 200 --policy.head diffusion ...]
    python recipes/finetune.py --recipe default --help     # every overridable field
    python recipes/finetune.py --recipe scaling --help     # the scaling sweep (recipes/scaling.py)

Writes to ``run_dir``: config.json (resolved), metrics.jsonl, tb/ (TensorBoard scalars), plots/,
policy/ (save_pretrained), eval/report.json + report.md (sim data; eval/<suite>/ for every suite of a
sim mixture, ``--data.suites``), summary.json (train_seconds, train_steps, samples_per_s, stop_reason,
final_loss, success (of ``data.suite``), suites (success per suite, as its embodiment), timing_s ...).

Uses the machine's cores phase by phase (``threads``, ``env_workers``; :mod:`vla_ebt.cores`): demos
and the final evaluation in env worker processes, training with one torch thread per core. The
random / expert baselines are cached beside the demos (:func:`eval.sim.demo_cache.cached_baseline`).

Bad input ends the process with a message naming the field / dataset / path and a non-zero exit
status; a non-finite loss ends it with a message naming the step, leaving the checkpoints already
written intact.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402
import tyro  # noqa: E402

from recipes.configs import SWEEP_RECIPES, TrainConfig, recipes  # noqa: E402
from vla_ebt import config_io  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


def parse_launch_args(argv: list[str] | None = None) -> tuple[TrainConfig, argparse.Namespace]:
    """Like ``parse_args``, plus the launch flags that are not part of TrainConfig:

    ``--resume [PATH]`` (no PATH: the newest checkpoint in run_dir/checkpoints), ``--deepspeed-config FILE``
    (train through DeepSpeed; overrides the recipe's ``deepspeed`` field; the default under a launcher
    is recipes/deepspeed/zero0.json), and ``--local_rank``/``--local-rank`` (passed by the deepspeed
    launcher; ignored, LOCAL_RANK is read).
    """
    # exact names only: --deepspeed (a TrainConfig field) is not an abbreviation of --deepspeed-config
    pre = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    pre.add_argument("--recipe", default="default")
    pre.add_argument("--resume", nargs="?", const="latest", default=None)
    pre.add_argument("--deepspeed-config", "--deepspeed_config", dest="deepspeed_config", default=None)
    pre.add_argument("--local_rank", "--local-rank", dest="local_rank", type=int, default=None)
    known, rest = pre.parse_known_args(argv)
    all_recipes = recipes()
    if known.recipe not in all_recipes:
        raise SystemExit(f"error: unknown recipe {known.recipe!r}; known recipes: "
                         f"{sorted([*all_recipes, *SWEEP_RECIPES])}")
    cfg = tyro.cli(TrainConfig, default=all_recipes[known.recipe], args=rest,
                   prog=f"finetune.py --recipe {known.recipe}")
    return cfg, known


def parse_args(argv: list[str] | None = None) -> TrainConfig:
    """``--recipe NAME`` picks the defaults; every other flag overrides a field of TrainConfig."""
    return parse_launch_args(argv)[0]


def _resolve_ds_config(path: str) -> str:
    p = Path(path)
    if p.is_file():
        return str(p)
    if not p.is_absolute() and (REPO / p).is_file():
        return str(REPO / p)
    raise SystemExit(f"error: DeepSpeed config {path!r} not found (--deepspeed-config / deepspeed field)")


def _mean_tail(xs: list[float], n: int = 10) -> float:
    tail = xs[-n:]
    return sum(tail) / len(tail) if tail else float("nan")


def _mean_head(xs: list[float], n: int = 10) -> float:
    return _mean_tail(xs[:n], n)


def make_eval_callback(suite, tasks: list[str], episodes_per_task: int, seed: int, embodiment: int = 0):
    """``on_eval(step, policy)`` for train_policy: closed-loop success of ``policy`` (the EMA weights)
    on ``episodes_per_task`` episodes of every task, acting as ``embodiment``; returns {"success",
    "success/<task>"}."""
    from eval.sim.rollout import EvalConfig, evaluate

    def on_eval(step: int, policy) -> dict[str, float]:
        report = evaluate(policy, suite, EvalConfig(tasks=tasks, episodes_per_task=episodes_per_task, seed=seed,
                                                    embodiment=embodiment))
        return {"success": report.success_rate, **{f"success/{t}": report.tasks[t].success_rate for t in tasks}}

    return on_eval


def make_mixture_eval_callback(sim_suites: list, episodes_per_task: int, seed: int):
    """``on_eval`` for a sim mixture (``recipes.data.SimSuite`` s): every suite evaluated as its own
    embodiment; returns {"success": mean over suites, "success/<suite>": each suite's success}."""
    per_suite = [(s.name, make_eval_callback(s.suite, s.tasks, episodes_per_task, seed, s.embodiment))
                 for s in sim_suites]

    def on_eval(step: int, policy) -> dict[str, float]:
        rates = {f"success/{name}": cb(step, policy)["success"] for name, cb in per_suite}
        return {"success": sum(rates.values()) / len(rates), **rates}

    return on_eval


def run(cfg: TrainConfig, progress: bool = True, resume: str | None = None,
        deepspeed_config: str | None = None) -> dict:
    """Load data, build the policy, train, save, evaluate (sim data); returns the summary dict.

    With ``deepspeed_config`` (or ``cfg.deepspeed``, or under a launcher that set RANK/WORLD_SIZE)
    training runs through DeepSpeed; only rank 0 writes files and evaluates (other ranks return ``{}``).
    Runs with ``cfg.threads`` torch threads (the caller's count is restored after; during the final
    evaluation the policy gets threads - env_workers, at least 1) and ``cfg.env_workers`` env worker
    processes (demos, final evaluation, baselines); ``summary["timing_s"]`` holds the wall seconds of each
    phase (demos, policy, training, evaluation, baselines) and of the whole call (total).
    Raises :class:`vla_ebt.train.NonFiniteLossError` when the loss diverges (``main`` turns it into an
    exit message); bad config / data raise SystemExit naming the field.
    """
    from vla_ebt.cores import available_cores, resolve_threads, resolve_workers, torch_threads

    try:
        threads = resolve_threads(cfg.threads)
    except ValueError as e:
        raise SystemExit(f"error: threads: {e}") from None
    try:
        env_workers = resolve_workers(cfg.env_workers)
    except ValueError as e:
        raise SystemExit(f"error: env_workers: {e}") from None
    print(f"[cores] {available_cores()} usable; torch threads {threads} (threads={cfg.threads!r}), "
          f"env workers {env_workers} (env_workers={cfg.env_workers!r})")
    with torch_threads(threads):
        return _run(cfg, progress, resume, deepspeed_config, threads, env_workers)


def _run(cfg: TrainConfig, progress: bool, resume: str | None, deepspeed_config: str | None, threads: int,
         env_workers: int) -> dict:
    t_start = time.perf_counter()
    timing: dict[str, float] = {}
    from recipes.data import build_data, check_shard_datasets
    from vla_ebt import distributed as vdist

    if cfg.data.source == "shards":
        check_shard_datasets(cfg.data)  # fail on missing folders / statistics before any launch work
    if deepspeed_config is None and cfg.deepspeed:
        deepspeed_config = cfg.deepspeed
    if deepspeed_config is None and vdist.launched_distributed():
        deepspeed_config = str(REPO / "recipes" / "deepspeed" / "zero0.json")
    if deepspeed_config is not None:
        deepspeed_config = _resolve_ds_config(deepspeed_config)
    world, rank = 1, 0
    if deepspeed_config is not None:
        vdist.init_distributed()
        world, rank = vdist.world_size(), vdist.rank()

    from eval.sim.rollout import EvalConfig, evaluate
    from recipes.plots import plot_run
    from vla_ebt.cores import torch_threads
    from vla_ebt.policy import VLAPolicy
    from vla_ebt.train import train_policy

    torch.manual_seed(cfg.seed)
    run_dir = Path(cfg.run_dir)
    if rank == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
        config_io.save_json(run_dir / "config.json", config_io.to_dict(cfg))

    pc = cfg.policy
    t = time.perf_counter()
    data = build_data(cfg.data, pc, cfg.optim.batch_size, cfg.seed, world, rank,
                      env_workers=env_workers if world == 1 else 0)  # ranks share the cores: serial there
    timing["demos"] = time.perf_counter() - t
    sim = data.suite is not None
    tasks = data.tasks or []

    t = time.perf_counter()
    policy = VLAPolicy(pc, data.normalizer)
    if data.prepare_policy is not None:  # e.g. the frozen-backbone feature cache
        data.prepare_policy(policy)
    timing["policy"] = time.perf_counter() - t
    n_train = sum(p.numel() for p in policy.parameters() if p.requires_grad)
    n_all = sum(p.numel() for p in policy.parameters())
    print(f"[policy] head={pc.head} backbone={pc.backbone.family}:{pc.backbone.model} finetune={pc.finetune.mode} "
          f"trainable {n_train / 1e6:.2f}M / {n_all / 1e6:.2f}M params; {data.num_samples} training samples")
    on_eval = None
    if cfg.optim.eval_every > 0:
        if sim and len(data.sim_suites) > 1:
            on_eval = make_mixture_eval_callback(data.sim_suites, cfg.eval.periodic_episodes_per_task, cfg.eval.seed)
        elif sim:
            on_eval = make_eval_callback(data.suite, tasks, cfg.eval.periodic_episodes_per_task, cfg.eval.seed)
        elif rank == 0:
            print("[eval] data.source='shards': no simulator for these embodiments, periodic evaluation skipped")
    if world > 1:  # same initial weights on every rank, different loss noise per rank
        torch.manual_seed(cfg.seed + 7919 * rank)
    t = time.perf_counter()
    try:
        result = train_policy(policy, data.make_batches, cfg.optim, run_dir=run_dir, progress=progress,
                              resume=resume, deepspeed_config=deepspeed_config, on_eval=on_eval)
    finally:
        if rank == 0:
            plot_run(run_dir)
    if rank != 0:
        return {}
    stop = f" (stopped: wall-clock budget {cfg.optim.max_seconds:g} s)" if result.stop_reason == "max_seconds" else ""
    print(f"[train] {result.steps} steps in {result.seconds:.1f} s ({result.samples_per_s:.1f} samples/s){stop}; "
          f"loss {_mean_head(result.losses):.4f} -> {_mean_tail(result.losses):.4f}")
    result.eval_policy.save_pretrained(run_dir / "policy")
    timing["training"] = time.perf_counter() - t

    from recipes.compare.artifacts import git_commit

    summary = {
        "run_dir": str(run_dir),
        "git_commit": git_commit(),  # the code this run trained with ("-dirty": uncommitted changes)
        "data_source": cfg.data.source,
        "datasets": data.datasets,
        "train_seconds": result.seconds,
        "train_steps": result.steps,
        "planned_steps": cfg.optim.steps,
        "start_step": result.start_step,
        "stop_reason": result.stop_reason,
        "max_seconds": cfg.optim.max_seconds,
        "samples_per_s": result.samples_per_s,
        "batch_size": cfg.optim.batch_size,
        "world_size": world,
        "periodic_eval_seconds": result.eval_seconds,
        "params": {"total": n_all, "trainable": n_train, "head": sum(p.numel() for p in policy.head.parameters())},
        "final_loss": _mean_tail(result.losses),
        "evals": result.evals,
        "threads": threads,
        "env_workers": env_workers,
    }
    if sim and cfg.eval.episodes_per_task <= 0:
        print("[eval] eval.episodes_per_task = 0: no closed-loop evaluation")
    elif sim:
        # every suite of the data (one, or each suite of a sim mixture), the policy acting as its embodiment
        mixture = len(data.sim_suites) > 1
        summary["suites"] = {}
        for s in data.sim_suites:
            rows = {}
            t = time.perf_counter()
            ecfg = EvalConfig(tasks=s.tasks, episodes_per_task=cfg.eval.episodes_per_task, seed=cfg.eval.seed,
                              num_workers=env_workers, embodiment=s.embodiment)
            # the env workers take cores too: the policy gets what is left (at least one thread)
            with torch_threads(max(1, threads - env_workers)):
                report = evaluate(result.eval_policy, s.suite, ecfg)
            out = run_dir / "eval" / s.name if mixture else run_dir / "eval"  # one suite: eval/report.json
            report.to_json(out / "report.json")
            (out / "report.md").write_text(report.to_markdown())
            timing["evaluation"] = timing.get("evaluation", 0.0) + time.perf_counter() - t
            rows[f"{pc.head} (trained)"] = report
            cached: dict[str, bool] = {}
            if cfg.eval.baselines:
                t = time.perf_counter()
                baselines, cached = baseline_reports(s.suite, s.tasks, cfg.eval.episodes_per_task, cfg.eval.seed,
                                                     env_workers, cfg.data.demo_cache)
                rows.update(baselines)
                timing["baselines"] = timing.get("baselines", 0.0) + time.perf_counter() - t
            if mixture:
                print(f"[eval] suite {s.name!r}: the policy acts as embodiment {s.embodiment} of "
                      f"{list(data.normalizer.names)}")
            print(comparison_table({f"{k} (cached)" if cached.get(k) else k: r for k, r in rows.items()}, s.tasks))
            o = report.overall
            summary["suites"][s.name] = {
                "embodiment": s.embodiment, "tasks": s.tasks, "train_samples": s.train_samples,
                "success": {name: r.success_rate for name, r in rows.items()},
                "per_task": {name: {t: r.tasks[t].success_rate for t in s.tasks} for name, r in rows.items()},
                "trained": {"episodes": o.episodes, "successes": o.successes, "ci_low": o.ci_low, "ci_high": o.ci_high},
                "baselines_cached": cached,
            }
            if s.suite is data.suite:  # the recipe's suite (data.suite): the run's headline numbers
                summary["success"] = summary["suites"][s.name]["success"]
                summary["per_task"] = summary["suites"][s.name]["per_task"]
                summary["baselines_cached"] = cached
    else:
        print("[eval] data.source='shards': no closed-loop evaluation (no simulator for these embodiments)")
    timing["total"] = time.perf_counter() - t_start
    summary["timing_s"] = timing
    print(timing_line(timing, summary.get("baselines_cached") or {}))
    config_io.save_json(run_dir / "summary.json", summary)
    return summary


def baseline_reports(suite: Any, tasks: list[str], episodes_per_task: int, seed: int, num_workers: int,
                     demo_cache: str) -> tuple[dict[str, Any], dict[str, bool]]:
    """The random and expert baselines' reports ({"random", "expert"}) and whether each came from the
    baseline cache beside the demos (``demo_cache`` as DataConfig.demo_cache: "" default root, "off":
    always evaluate, never store)."""
    from eval.sim.demo_cache import BaselineSpec, cached_baseline
    from eval.sim.rollout import EvalConfig, ExpertPolicy, RandomPolicy, evaluate

    ecfg = EvalConfig(tasks=tasks, episodes_per_task=episodes_per_task, seed=seed, num_workers=num_workers)
    makers: dict[str, tuple[Callable[[], Any], dict[str, Any]]] = {
        "random": (lambda: RandomPolicy(suite, seed=seed), {"seed": seed}),
        "expert": (lambda: ExpertPolicy(suite), {"noise": 0.0}),
    }
    reports: dict[str, Any] = {}
    cached: dict[str, bool] = {}
    for name, (make, policy_args) in makers.items():
        def run_eval(make: Callable[[], Any] = make) -> Any:
            return evaluate(make(), suite, ecfg)

        if demo_cache == "off":
            reports[name], cached[name] = run_eval(), False
            continue
        spec = BaselineSpec(suite=suite.name, policy=name, tasks=tuple(tasks), episodes_per_task=episodes_per_task,
                            seed=seed, suite_kwargs=dict(getattr(suite, "make_kwargs", None) or {}),
                            policy_args=policy_args)
        reports[name], cached[name] = cached_baseline(spec, run_eval, demo_cache or None)
    return reports, cached


def timing_line(timing: dict[str, float], cached: dict[str, bool]) -> str:
    """One line: the wall seconds of each phase in ``timing`` (as summary["timing_s"])."""
    parts = []
    for k, v in timing.items():
        note = " (cached)" if k == "baselines" and cached and all(cached.values()) else ""
        parts.append(f"{k} {v:.1f} s{note}")
    return "[timing] " + " | ".join(parts)


def comparison_table(rows: dict, tasks: list[str]) -> str:
    """Markdown table: success rate (95% interval) per task for each evaluated policy."""
    lines = ["| task | " + " | ".join(rows) + " |", "|---" * (len(rows) + 1) + "|"]
    for t in tasks:
        cells = [f"{r.tasks[t].success_rate:.2f} [{r.tasks[t].ci_low:.2f}, {r.tasks[t].ci_high:.2f}]" for r in rows.values()]
        lines.append(f"| {t} | " + " | ".join(cells) + " |")
    lines.append("| **mean** | " + " | ".join(f"**{r.success_rate:.2f}**" for r in rows.values()) + " |")
    return "\n".join(lines)


def diverged_message(cfg: TrainConfig, err) -> str:
    """The exit message for a non-finite loss: the step, the error, and the checkpoints left intact."""
    from vla_ebt.train import list_checkpoints

    ckpts = list_checkpoints(Path(cfg.run_dir) / "checkpoints")
    where = (f"the checkpoints written before it are intact (latest: {ckpts[-1]}; --resume continues from it, "
             f"or start again with e.g. a lower --optim.lr)") if ckpts else "no checkpoint had been written"
    return f"error: training diverged at step {err.step} (loss {err.loss}); {where}. Details: {err}"


def main(argv: list[str] | None = None) -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    args = list(sys.argv[1:] if argv is None else argv)
    pre = argparse.ArgumentParser(add_help=False, allow_abbrev=False)  # other flags pass through unchanged
    pre.add_argument("--recipe", default="default")
    known, rest = pre.parse_known_args(args)
    if known.recipe in SWEEP_RECIPES:
        importlib.import_module(SWEEP_RECIPES[known.recipe]).main(rest)
        return
    from vla_ebt.distributed import shutdown_distributed
    from vla_ebt.train import NonFiniteLossError

    cfg, launch = parse_launch_args(args)
    try:
        run(cfg, resume=launch.resume, deepspeed_config=launch.deepspeed_config)
    except NonFiniteLossError as e:
        raise SystemExit(diverged_message(cfg, e)) from None
    finally:
        shutdown_distributed()


if __name__ == "__main__":
    main()
