"""Fine-tune a VLA policy from a named recipe, then evaluate it closed-loop.

    python recipes/finetune.py --recipe default [--optim.steps 200 --policy.head diffusion ...]
    python recipes/finetune.py --recipe default --help     # every overridable field

Writes to ``run_dir``: config.json (resolved), metrics.jsonl, policy/ (save_pretrained),
eval/report.json + report.md, summary.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402
import tyro  # noqa: E402

from recipes.configs import TrainConfig, recipes  # noqa: E402
from vla_ebt import config_io  # noqa: E402


def parse_launch_args(argv: list[str] | None = None) -> tuple[TrainConfig, argparse.Namespace]:
    """Like ``parse_args``, plus the launch flags that are not part of TrainConfig:

    ``--resume [PATH]`` (no PATH: the newest checkpoint in run_dir/checkpoints), ``--deepspeed-config FILE``
    (train through DeepSpeed; the default under a launcher is recipes/deepspeed/zero0.json), and
    ``--local_rank``/``--local-rank`` (passed by the deepspeed launcher; ignored, LOCAL_RANK is read).
    """
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--recipe", default="default")
    pre.add_argument("--resume", nargs="?", const="latest", default=None)
    pre.add_argument("--deepspeed-config", "--deepspeed_config", dest="deepspeed_config", default=None)
    pre.add_argument("--local_rank", "--local-rank", dest="local_rank", type=int, default=None)
    known, rest = pre.parse_known_args(argv)
    all_recipes = recipes()
    if known.recipe not in all_recipes:
        raise SystemExit(f"error: unknown recipe {known.recipe!r}; known recipes: {sorted(all_recipes)}")
    cfg = tyro.cli(TrainConfig, default=all_recipes[known.recipe], args=rest,
                   prog=f"finetune.py --recipe {known.recipe}")
    return cfg, known


def parse_args(argv: list[str] | None = None) -> TrainConfig:
    """``--recipe NAME`` picks the defaults; every other flag overrides a field of TrainConfig."""
    return parse_launch_args(argv)[0]


def run(cfg: TrainConfig, progress: bool = True, resume: str | None = None,
        deepspeed_config: str | None = None) -> dict:
    """Generate/load demos, build the policy, train, save, evaluate; returns the summary dict.

    With ``deepspeed_config`` (or under a launcher that set RANK/WORLD_SIZE) training runs through
    DeepSpeed; only rank 0 writes files and evaluates (other ranks return ``{}``).
    """
    from torch.utils.data import DataLoader, DistributedSampler

    from vla_ebt import distributed as vdist

    if deepspeed_config is None and vdist.launched_distributed():
        deepspeed_config = str(Path(__file__).resolve().parent / "deepspeed" / "zero0.json")
    world, rank = 1, 0
    if deepspeed_config is not None:
        vdist.init_distributed()
        world, rank = vdist.world_size(), vdist.rank()

    from eval.sim.demos import ChunkDataset, collate, collect_demos, dataset_stats
    from eval.sim.rollout import ExpertPolicy, RandomPolicy, evaluate
    from eval.sim.suites import make_suite
    from vla_ebt.normalize import Normalizer
    from vla_ebt.policy import VLAPolicy
    from vla_ebt.train import train_policy

    torch.manual_seed(cfg.seed)
    run_dir = Path(cfg.run_dir)
    if rank == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
        config_io.save_json(run_dir / "config.json", config_io.to_dict(cfg))

    suite = make_suite(cfg.data.suite)
    tasks = list(cfg.data.tasks) or suite.task_names()
    pc = cfg.policy
    if pc.action_dim < suite.action_dim or pc.state_dim < suite.state_dim:
        raise SystemExit(
            f"error: policy.action_dim/state_dim ({pc.action_dim}/{pc.state_dim}) smaller than suite "
            f"{cfg.data.suite!r} needs ({suite.action_dim}/{suite.state_dim})"
        )
    print(f"[data] {cfg.data.episodes_per_task} expert episodes x {len(tasks)} tasks from suite {cfg.data.suite!r}")
    episodes = collect_demos(suite, tasks, cfg.data.episodes_per_task, seed=cfg.data.seed,
                             action_noise=cfg.data.action_noise)
    normalizer = Normalizer({cfg.data.suite: dataset_stats(episodes)}, max_action_dim=pc.action_dim,
                            max_state_dim=pc.state_dim)
    dataset = ChunkDataset(episodes, horizon=pc.horizon, obs_steps=pc.obs_steps)
    if world > 1:  # each rank reads its own shard; batch_size is per rank
        sampler = DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=True, seed=cfg.seed,
                                     drop_last=True)
        loader = DataLoader(dataset, batch_size=cfg.optim.batch_size, sampler=sampler, drop_last=True,
                            collate_fn=collate, num_workers=cfg.data.num_workers)
    else:
        sampler = None
        loader = DataLoader(dataset, batch_size=cfg.optim.batch_size, shuffle=True, drop_last=True,
                            collate_fn=collate, num_workers=cfg.data.num_workers,
                            generator=torch.Generator().manual_seed(cfg.seed))

    def forever():
        epoch = 0
        while True:
            if sampler is not None:
                sampler.set_epoch(epoch)
            yield from loader
            epoch += 1

    policy = VLAPolicy(pc, normalizer)
    n_train = sum(p.numel() for p in policy.parameters() if p.requires_grad)
    n_all = sum(p.numel() for p in policy.parameters())
    print(f"[policy] head={pc.head} backbone={pc.backbone.family}:{pc.backbone.model} finetune={pc.finetune.mode} "
          f"trainable {n_train / 1e6:.2f}M / {n_all / 1e6:.2f}M params; {len(dataset)} training samples")
    if world > 1:  # same initial weights on every rank, different loss noise per rank
        torch.manual_seed(cfg.seed + 7919 * rank)
    result = train_policy(policy, forever(), cfg.optim, run_dir=run_dir, progress=progress, resume=resume,
                          deepspeed_config=deepspeed_config)
    if rank != 0:
        return {}
    print(f"[train] {result.steps} steps in {result.seconds:.0f} s; loss {sum(result.losses[:10]) / 10:.4f} -> "
          f"{sum(result.losses[-10:]) / 10:.4f}")
    result.eval_policy.save_pretrained(run_dir / "policy")

    rows = {}
    report = evaluate(result.eval_policy, suite, tasks, cfg.eval.episodes_per_task, seed=cfg.eval.seed)
    report.to_json(run_dir / "eval" / "report.json")
    (run_dir / "eval" / "report.md").write_text(report.to_markdown())
    rows[f"{pc.head} (trained)"] = report
    if cfg.eval.baselines:
        rows["random"] = evaluate(RandomPolicy(suite, seed=cfg.eval.seed), suite, tasks, cfg.eval.episodes_per_task,
                                  seed=cfg.eval.seed)
        rows["expert"] = evaluate(ExpertPolicy(suite), suite, tasks, cfg.eval.episodes_per_task, seed=cfg.eval.seed)
    print(comparison_table(rows, tasks))
    summary = {
        "run_dir": str(run_dir),
        "train_seconds": result.seconds,
        "train_steps": result.steps,
        "final_loss": sum(result.losses[-10:]) / 10,
        "success": {name: r.success_rate for name, r in rows.items()},
        "per_task": {name: {t: r.tasks[t].success_rate for t in tasks} for name, r in rows.items()},
    }
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


def main(argv: list[str] | None = None) -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    cfg, launch = parse_launch_args(argv)
    run(cfg, resume=launch.resume, deepspeed_config=launch.deepspeed_config)


if __name__ == "__main__":
    main()
