"""Fine-tune a VLA policy from a named recipe, then evaluate it closed-loop.

    python recipes/finetune.py --recipe default [--optim.steps 200 --policy.head diffusion ...]
    python recipes/finetune.py --recipe default --help     # every overridable field
    python recipes/finetune.py --recipe scaling --help     # the scaling sweep (recipes/scaling.py)

Writes to ``run_dir``: config.json (resolved), metrics.jsonl, tb/ (TensorBoard scalars), plots/,
policy/ (save_pretrained), eval/report.json + report.md (sim data), summary.json (train_seconds,
train_steps, samples_per_s, stop_reason, final_loss, success ...).

Bad input ends the process with a message naming the field / dataset / path and a non-zero exit
status; a non-finite loss ends it with a message naming the step, leaving the checkpoints already
written intact.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from pathlib import Path

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


def make_eval_callback(suite, tasks: list[str], episodes_per_task: int, seed: int):
    """``on_eval(step, policy)`` for train_policy: closed-loop success of ``policy`` (the EMA weights)
    on ``episodes_per_task`` episodes of every task; returns {"success", "success/<task>"}."""
    from eval.sim.rollout import evaluate

    def on_eval(step: int, policy) -> dict[str, float]:
        report = evaluate(policy, suite, tasks, episodes_per_task, seed=seed)
        return {"success": report.success_rate, **{f"success/{t}": report.tasks[t].success_rate for t in tasks}}

    return on_eval


def run(cfg: TrainConfig, progress: bool = True, resume: str | None = None,
        deepspeed_config: str | None = None) -> dict:
    """Load data, build the policy, train, save, evaluate (sim data); returns the summary dict.

    With ``deepspeed_config`` (or ``cfg.deepspeed``, or under a launcher that set RANK/WORLD_SIZE)
    training runs through DeepSpeed; only rank 0 writes files and evaluates (other ranks return ``{}``).
    Raises :class:`vla_ebt.train.NonFiniteLossError` when the loss diverges (``main`` turns it into an
    exit message); bad config / data raise SystemExit naming the field.
    """
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

    from eval.sim.rollout import ExpertPolicy, RandomPolicy, evaluate
    from recipes.plots import plot_run
    from vla_ebt.policy import VLAPolicy
    from vla_ebt.train import train_policy

    torch.manual_seed(cfg.seed)
    run_dir = Path(cfg.run_dir)
    if rank == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
        config_io.save_json(run_dir / "config.json", config_io.to_dict(cfg))

    pc = cfg.policy
    data = build_data(cfg.data, pc, cfg.optim.batch_size, cfg.seed, world, rank)
    sim = data.suite is not None
    tasks = data.tasks or []

    policy = VLAPolicy(pc, data.normalizer)
    if data.prepare_policy is not None:  # e.g. the frozen-backbone feature cache
        data.prepare_policy(policy)
    n_train = sum(p.numel() for p in policy.parameters() if p.requires_grad)
    n_all = sum(p.numel() for p in policy.parameters())
    print(f"[policy] head={pc.head} backbone={pc.backbone.family}:{pc.backbone.model} finetune={pc.finetune.mode} "
          f"trainable {n_train / 1e6:.2f}M / {n_all / 1e6:.2f}M params; {data.num_samples} training samples")
    on_eval = None
    if cfg.optim.eval_every > 0:
        if sim:
            on_eval = make_eval_callback(data.suite, tasks, cfg.eval.periodic_episodes_per_task, cfg.eval.seed)
        elif rank == 0:
            print("[eval] data.source='shards': no simulator for these embodiments, periodic evaluation skipped")
    if world > 1:  # same initial weights on every rank, different loss noise per rank
        torch.manual_seed(cfg.seed + 7919 * rank)
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

    summary = {
        "run_dir": str(run_dir),
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
    }
    if sim and cfg.eval.episodes_per_task <= 0:
        print("[eval] eval.episodes_per_task = 0: no closed-loop evaluation")
    elif sim:
        rows = {}
        report = evaluate(result.eval_policy, data.suite, tasks, cfg.eval.episodes_per_task, seed=cfg.eval.seed)
        report.to_json(run_dir / "eval" / "report.json")
        (run_dir / "eval" / "report.md").write_text(report.to_markdown())
        rows[f"{pc.head} (trained)"] = report
        if cfg.eval.baselines:
            rows["random"] = evaluate(RandomPolicy(data.suite, seed=cfg.eval.seed), data.suite, tasks,
                                      cfg.eval.episodes_per_task, seed=cfg.eval.seed)
            rows["expert"] = evaluate(ExpertPolicy(data.suite), data.suite, tasks, cfg.eval.episodes_per_task,
                                      seed=cfg.eval.seed)
        print(comparison_table(rows, tasks))
        summary["success"] = {name: r.success_rate for name, r in rows.items()}
        summary["per_task"] = {name: {t: r.tasks[t].success_rate for t in tasks} for name, r in rows.items()}
    else:
        print("[eval] data.source='shards': no closed-loop evaluation (no simulator for these embodiments)")
    config_io.save_json(run_dir / "summary.json", summary)
    return summary


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
    from vla_ebt.train import NonFiniteLossError

    cfg, launch = parse_launch_args(args)
    try:
        run(cfg, resume=launch.resume, deepspeed_config=launch.deepspeed_config)
    except NonFiniteLossError as e:
        raise SystemExit(diverged_message(cfg, e)) from None


if __name__ == "__main__":
    main()
