"""The training loop: AdamW + warmup/cosine schedule + gradient clipping + EMA of weights.

Single-process here; the DeepSpeed engine plugs in at the same seams (issue: training recipes).
Metrics go to ``run_dir/metrics.jsonl`` (one JSON object per logged step) and a tqdm bar.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping

import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm.auto import tqdm

from .policy import VLAPolicy


@dataclass
class OptimConfig:
    """Optimizer and schedule. Reference (EBT-Policy): AdamW lr 1e-4, warmup 500, clip 1.0, EMA."""

    steps: int = 1000
    batch_size: int = 32
    lr: float = 1e-4
    weight_decay: float = 0.01
    warmup_steps: int = 500
    min_lr_ratio: float = 0.1  # cosine decays to lr * min_lr_ratio
    grad_clip: float = 1.0
    ema_decay: float = 0.999  # 0 disables EMA
    log_every: int = 25


@dataclass
class TrainResult:
    """What a run produced: per-step losses, wall time, and the policy to evaluate (EMA if on)."""

    losses: list[float]
    seconds: float
    steps: int
    eval_policy: VLAPolicy
    last_info: dict[str, float] = field(default_factory=dict)


def lr_lambda(cfg: OptimConfig):
    """Linear warmup to 1, then cosine to ``min_lr_ratio`` at ``cfg.steps``."""

    def f(step: int) -> float:
        if step < cfg.warmup_steps:
            return (step + 1) / max(cfg.warmup_steps, 1)
        progress = min(1.0, (step - cfg.warmup_steps) / max(cfg.steps - cfg.warmup_steps, 1))
        return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return f


def train_policy(
    policy: VLAPolicy,
    batches: Iterator[Mapping[str, Any]],
    cfg: OptimConfig,
    run_dir: str | Path | None = None,
    progress: bool = True,
) -> TrainResult:
    """Run ``cfg.steps`` optimizer steps on batches from ``batches`` (training schema).

    Raises FloatingPointError on a non-finite loss (nothing is written past the last good step).
    """
    params = [p for p in policy.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(cfg))
    ema = (
        AveragedModel(policy, multi_avg_fn=get_ema_multi_avg_fn(cfg.ema_decay), use_buffers=True)
        if cfg.ema_decay > 0
        else None
    )
    log = None
    if run_dir is not None:
        Path(run_dir).mkdir(parents=True, exist_ok=True)
        log = open(Path(run_dir) / "metrics.jsonl", "a")
    policy.train()
    losses: list[float] = []
    info: dict[str, float] = {}
    t0 = time.perf_counter()
    bar = tqdm(range(cfg.steps), desc="train", disable=not progress, dynamic_ncols=True)
    try:
        for step in bar:
            batch = next(batches)
            loss, info = policy.compute_loss(batch)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"training step {step}: loss is {loss.item()} (info {info})")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            gnorm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            opt.step()
            sched.step()
            if ema is not None:
                ema.update_parameters(policy)
            losses.append(loss.item())
            if step % cfg.log_every == 0 or step == cfg.steps - 1:
                elapsed = time.perf_counter() - t0
                rec = {"step": step, "loss": loss.item(), "grad_norm": float(gnorm), "lr": sched.get_last_lr()[0],
                       "samples_per_s": (step + 1) * cfg.batch_size / elapsed, **info}
                bar.set_postfix(loss=f"{loss.item():.4f}", sps=f"{rec['samples_per_s']:.1f}")
                if log is not None:
                    log.write(json.dumps(rec) + "\n")
                    log.flush()
    finally:
        if log is not None:
            log.close()
    seconds = time.perf_counter() - t0
    eval_policy = ema.module if ema is not None else policy
    eval_policy.eval()
    return TrainResult(losses=losses, seconds=seconds, steps=cfg.steps, eval_policy=eval_policy, last_info=info)
