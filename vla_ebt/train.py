"""The training loop: AdamW + warmup/cosine schedule + gradient clipping + EMA of weights.

Single-process, or through a DeepSpeed engine (ZeRO 0-2; see vla_ebt/distributed.py) with
periodic atomic checkpoints and ``resume``.
Metrics go to ``run_dir/metrics.jsonl`` (one JSON object per logged step) and a tqdm bar.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import random
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np
import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm.auto import tqdm

from .policy import VLAPolicy


@dataclass
class OptimConfig:
    """Optimizer and schedule. Reference (EBT-Policy): AdamW lr 1e-4, warmup 500, clip 1.0, EMA."""

    steps: int = 1000
    batch_size: int = 32  # per rank (DeepSpeed: train_micro_batch_size_per_gpu)
    lr: float = 1e-4
    weight_decay: float = 0.01
    warmup_steps: int = 500
    min_lr_ratio: float = 0.1  # cosine decays to lr * min_lr_ratio
    grad_clip: float = 1.0
    ema_decay: float = 0.999  # 0 disables EMA
    log_every: int = 25
    ckpt_every: int = 0  # checkpoint to run_dir/checkpoints every N optimizer steps; 0: never
    ckpt_keep: int = 2  # keep the last K checkpoints


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


class _LossModule(torch.nn.Module):
    """Wraps the policy so the DeepSpeed engine's forward returns ``compute_loss(batch)``."""

    def __init__(self, policy: VLAPolicy):
        super().__init__()
        self.policy = policy

    def forward(self, batch: Mapping[str, Any]):
        return self.policy.compute_loss(batch)


def _trainable_keys(module: torch.nn.Module) -> set[str]:
    return {n for n, p in module.named_parameters() if p.requires_grad} | {n for n, _ in module.named_buffers()}


def _rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: Mapping[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


_CKPT_RE = re.compile(r"^step_(\d+)$")


def list_checkpoints(ckpt_dir: str | Path) -> list[Path]:
    """Complete checkpoints (``step_N``; temp dirs are ignored), oldest first."""
    d = Path(ckpt_dir)
    if not d.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in d.iterdir() if p.is_dir() and (m := _CKPT_RE.match(p.name))]
    return [p for _, p in sorted(found)]


def resolve_resume(resume: str | Path, run_dir: str | Path | None) -> Path | None:
    """``"latest"``: newest checkpoint under run_dir/checkpoints (None if there is none); else a path."""
    if str(resume) == "latest":
        if run_dir is None:
            raise ValueError("resume='latest' needs a run_dir")
        ckpts = list_checkpoints(Path(run_dir) / "checkpoints")
        return ckpts[-1] if ckpts else None
    p = Path(resume)
    if not p.is_dir():
        raise FileNotFoundError(f"checkpoint {p} not found")
    return p


def train_policy(
    policy: VLAPolicy,
    batches: Iterator[Mapping[str, Any]],
    cfg: OptimConfig,
    run_dir: str | Path | None = None,
    progress: bool = True,
    resume: str | Path | None = None,
    deepspeed_config: str | Path | None = None,
) -> TrainResult:
    """Run ``cfg.steps`` optimizer steps on batches from ``batches`` (training schema).

    ``resume``: a checkpoint directory or ``"latest"`` (run_dir/checkpoints; starts fresh if none).
    Resuming restores model, optimizer, scheduler, EMA, RNG states and the losses so far, and skips the
    batches already consumed (``batches`` must replay the same sequence, e.g. a re-seeded loader).
    ``deepspeed_config``: train through a DeepSpeed engine (the process group must be initialized,
    see ``vla_ebt.distributed.init_distributed``); otherwise a plain single-process loop.

    Raises FloatingPointError on a non-finite loss (nothing is written past the last good step).
    """
    from . import distributed as vdist

    use_ds = deepspeed_config is not None
    main = vdist.is_main() if use_ds else True
    ckpt_dir = Path(run_dir) / "checkpoints" if run_dir is not None else None
    if cfg.ckpt_every > 0 and ckpt_dir is None:
        raise ValueError("ckpt_every > 0 needs a run_dir")

    params = [p for p in policy.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    engine = None
    grad_accum = 1
    if use_ds:
        import deepspeed

        ds_cfg = vdist.load_ds_config(deepspeed_config, cfg.batch_size, cfg.grad_clip)
        grad_accum = int(ds_cfg["gradient_accumulation_steps"])
        zero_stage = int(ds_cfg.get("zero_optimization", {}).get("stage", 0))
        if zero_stage == 3 and policy.cfg.head == "ebt":
            # Measured: forward runs, backward fails ("mat2 must be a matrix"): the create_graph=True
            # energy gradient keeps references to weights that ZeRO-3 re-partitions after forward.
            raise NotImplementedError("ZeRO-3 does not support the second-order EBT loss; use ZeRO 0-2")
        for p in policy.parameters():  # DeepSpeed broadcasts/flattens raw storage: needs contiguous tensors
            if p.dim() > 0 and (not p.data.is_contiguous() or p.data.stride(-1) != 1):
                p.data = p.data.clone(memory_format=torch.contiguous_format)
        engine, opt, _, sched = deepspeed.initialize(
            model=_LossModule(policy), optimizer=opt, config=ds_cfg,
            lr_scheduler=lambda o: torch.optim.lr_scheduler.LambdaLR(o, lr_lambda(cfg)))
        if zero_stage == 3 and cfg.ema_decay > 0:
            print("[deepspeed] ZeRO-3 partitions parameters: EMA disabled")
            cfg = dataclasses.replace(cfg, ema_decay=0.0)
    else:
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(cfg))
    ema = (
        AveragedModel(policy, multi_avg_fn=get_ema_multi_avg_fn(cfg.ema_decay), use_buffers=True)
        if cfg.ema_decay > 0
        else None
    )
    keys = _trainable_keys(policy)

    def save_checkpoint(done: int, losses: list[float]) -> None:
        final = ckpt_dir / f"step_{done:08d}"
        tmp = ckpt_dir / f".tmp_step_{done:08d}"
        if main:
            ckpt_dir.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir()
        vdist.barrier() if use_ds else None
        state: dict[str, Any] = {"step": done, "losses": losses, "rng": _rng_state()}
        if ema is not None:
            state["ema"] = {k: v for k, v in ema.module.state_dict().items() if k in keys}
            state["ema_n_averaged"] = ema.n_averaged.clone()
        if use_ds:
            engine.save_checkpoint(str(tmp), tag="ds", exclude_frozen_parameters=True)
            torch.save(state, tmp / f"trainer_rank{vdist.rank()}.pt")
            vdist.barrier()
        else:
            state["model"] = {k: v for k, v in policy.state_dict().items() if k in keys}
            state["optimizer"] = opt.state_dict()
            state["scheduler"] = sched.state_dict()
            torch.save(state, tmp / "trainer_rank0.pt")
        if main:
            os.rename(tmp, final)  # atomic: a checkpoint dir either is complete or has a .tmp name
            for old in list_checkpoints(ckpt_dir)[: -max(cfg.ckpt_keep, 1)]:
                shutil.rmtree(old, ignore_errors=True)
        vdist.barrier() if use_ds else None

    def load_checkpoint(path: Path) -> tuple[int, list[float], dict]:
        r = vdist.rank() if use_ds else 0
        f = path / f"trainer_rank{r}.pt"
        state = torch.load(f if f.exists() else path / "trainer_rank0.pt", map_location="cpu", weights_only=False)
        if use_ds:
            engine.load_checkpoint(str(path), tag="ds", load_module_strict=False, load_optimizer_states=True,
                                   load_lr_scheduler_states=True)
        else:
            missing, unexpected = policy.load_state_dict(state["model"], strict=False)
            if unexpected or set(missing) & keys:
                raise RuntimeError(f"checkpoint {path} does not match the policy: missing {sorted(set(missing) & keys)[:5]}, "
                                   f"unexpected {unexpected[:5]}")
            opt.load_state_dict(state["optimizer"])
            sched.load_state_dict(state["scheduler"])
        if ema is not None and "ema" in state:
            ema.module.load_state_dict(state["ema"], strict=False)
            ema.n_averaged.copy_(state["ema_n_averaged"])
        return int(state["step"]), list(state["losses"]), state["rng"]

    start, losses, rng = 0, [], None
    if resume is not None:
        path = resolve_resume(resume, run_dir)
        if path is not None:
            start, losses, rng = load_checkpoint(path)
            print(f"[train] resumed from {path} at step {start}")
    for _ in range(start * grad_accum):  # data position: replay and drop the consumed batches
        next(batches)
    if rng is not None:
        _set_rng_state(rng)

    log = None
    if run_dir is not None and main:
        Path(run_dir).mkdir(parents=True, exist_ok=True)
        mpath = Path(run_dir) / "metrics.jsonl"
        if start > 0 and mpath.exists():  # drop records past the checkpoint (they are recomputed)
            kept = [ln for ln in mpath.read_text().splitlines() if ln.strip() and json.loads(ln).get("step", 0) < start]
            mpath.write_text("".join(ln + "\n" for ln in kept))
        log = open(mpath, "a")
    model = engine if use_ds else policy
    model.train()
    info: dict[str, float] = {}
    t0 = time.perf_counter()
    bar = tqdm(range(start, cfg.steps), desc="train", disable=not (progress and main), dynamic_ncols=True,
               initial=start, total=cfg.steps)
    try:
        for step in bar:
            step_loss = 0.0
            for _ in range(grad_accum):
                batch = next(batches)
                loss, info = engine(batch) if use_ds else policy.compute_loss(batch)
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"training step {step}: loss is {loss.item()} (info {info})")
                if use_ds:
                    engine.backward(loss)
                    engine.step()
                else:
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                step_loss += loss.item() / grad_accum
            if use_ds:
                gnorm = engine.get_global_grad_norm()
                gnorm = float("nan") if gnorm is None else float(gnorm)
            else:
                gnorm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
                opt.step()
                sched.step()
            if ema is not None:
                ema.update_parameters(policy)
            losses.append(step_loss)
            if log is not None and (step % cfg.log_every == 0 or step == cfg.steps - 1):
                elapsed = time.perf_counter() - t0
                world = vdist.world_size() if use_ds else 1
                rec = {"step": step, "loss": step_loss, "grad_norm": float(gnorm) if math.isfinite(float(gnorm)) else None, "lr": sched.get_last_lr()[0],
                       "samples_per_s": (step + 1 - start) * cfg.batch_size * grad_accum * world / elapsed, **info}
                bar.set_postfix(loss=f"{step_loss:.4f}", sps=f"{rec['samples_per_s']:.1f}")
                log.write(json.dumps(rec) + "\n")
                log.flush()
            if cfg.ckpt_every > 0 and (step + 1) % cfg.ckpt_every == 0:
                save_checkpoint(step + 1, losses)
    finally:
        if log is not None:
            log.close()
    seconds = time.perf_counter() - t0
    eval_policy = ema.module if ema is not None else policy
    eval_policy.eval()
    return TrainResult(losses=losses, seconds=seconds, steps=cfg.steps, eval_policy=eval_policy, last_info=info)
