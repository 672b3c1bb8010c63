"""Training backends: everything that differs between the single-process loop and a DeepSpeed engine.

A backend owns the optimizer and learning-rate schedule (and the DeepSpeed engine). Per micro-batch
the loop calls ``model(batch) -> (loss, info)`` and ``backward(loss)``; per optimizer step
``optimizer_step() -> grad norm``. Checkpoints: ``save(dir, state)`` writes this rank's trainer state
plus the optimizer/model state, ``load(dir) -> state`` restores them. ``save_policy`` writes a
``save_pretrained`` folder (rank 0; gathered first where parameters are partitioned).
``barrier`` / ``any_rank`` are the collectives; both are no-ops for a single process.
"""

from __future__ import annotations

import json
import math
from abc import ABC, abstractmethod
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping

import torch

from .policy import VLAPolicy

if TYPE_CHECKING:
    from .train import OptimConfig


def lr_lambda(cfg: OptimConfig) -> Callable[[int], float]:
    """Linear warmup to 1, then cosine to ``min_lr_ratio`` at ``cfg.steps``."""

    def f(step: int) -> float:
        if step < cfg.warmup_steps:
            return (step + 1) / max(cfg.warmup_steps, 1)
        progress = min(1.0, (step - cfg.warmup_steps) / max(cfg.steps - cfg.warmup_steps, 1))
        return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return f


def bf16_as_autocast(ds_cfg: dict[str, Any]) -> dict[str, Any]:
    """Turn a DeepSpeed config's ``bf16`` mode into ``torch_autocast`` bf16 (returns a new dict).

    DeepSpeed's bf16 mode casts the whole module to bf16, but the policy feeds float32 tensors into it
    (backbone outputs, normalized states, the energy gradient w.r.t. float32 actions), so its first bf16
    Linear fails on mixed dtypes. torch_autocast keeps float32 master weights and runs matmuls/convs in
    bf16.
    """
    out = json.loads(json.dumps(ds_cfg))
    if out.get("bf16", {}).get("enabled"):
        out["bf16"]["enabled"] = False
        out["torch_autocast"] = {"enabled": True, "dtype": "bfloat16"}
    return out


def trainable_keys(module: torch.nn.Module) -> set[str]:
    """State-dict keys that training changes: trainable parameters and all buffers."""
    return {n for n, p in module.named_parameters() if p.requires_grad} | {n for n, _ in module.named_buffers()}


class _LossModule(torch.nn.Module):
    """Wraps the policy so that calling the module returns ``compute_loss(batch)``."""

    def __init__(self, policy: VLAPolicy) -> None:
        super().__init__()
        self.policy = policy

    def forward(self, batch: Mapping[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
        return self.policy.compute_loss(batch)


def _adamw(params: list[torch.nn.Parameter], cfg: OptimConfig) -> torch.optim.AdamW:
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


class TrainBackend(ABC):
    """The interface :func:`vla_ebt.train.train_policy` trains through (see the module docstring)."""

    model: torch.nn.Module  #: ``model(batch) -> (loss, info)``; train()/eval() switch the policy's mode
    grad_accum: int = 1  #: micro-batches per optimizer step
    rank: int = 0
    world_size: int = 1
    partitions_params: bool = False  #: parameters are sharded across ranks (ZeRO-3)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @abstractmethod
    def lr(self) -> float:
        """The learning rate the next optimizer step uses."""

    @abstractmethod
    def backward(self, loss: torch.Tensor) -> None:
        """Accumulate the gradient of one micro-batch's loss."""

    @abstractmethod
    def optimizer_step(self) -> float:
        """Finish the optimizer step (clip, update, schedule); returns the gradient norm (nan if unknown)."""

    @abstractmethod
    def save(self, directory: Path, state: Mapping[str, Any]) -> None:
        """Write ``state`` (this rank's trainer state) and the model/optimizer/scheduler state into ``directory``."""

    @abstractmethod
    def load(self, directory: Path) -> dict[str, Any]:
        """Restore model/optimizer/scheduler from ``directory``; returns the trainer state saved with them."""

    def barrier(self) -> None:
        """Wait for every rank."""

    def any_rank(self, flag: bool, src: int | None = None) -> bool:
        """The same decision on every rank: OR over ranks, or rank ``src``'s value."""
        return flag

    def save_policy(self, policy: VLAPolicy, directory: Path) -> None:
        """``policy.save_pretrained(directory)`` on rank 0; every rank must call it."""
        if self.is_main:
            policy.save_pretrained(directory)


class PlainBackend(TrainBackend):
    """Single process: AdamW + LambdaLR, gradient clipping by ``clip_grad_norm_``."""

    def __init__(self, policy: VLAPolicy, cfg: OptimConfig) -> None:
        self.policy = policy
        self.model = _LossModule(policy)
        self.params = [p for p in policy.parameters() if p.requires_grad]
        self.opt = _adamw(self.params, cfg)
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, lr_lambda(cfg))
        self.grad_clip = cfg.grad_clip
        self.keys = trainable_keys(policy)

    def lr(self) -> float:
        return self.sched.get_last_lr()[0]

    def backward(self, loss: torch.Tensor) -> None:
        self.opt.zero_grad(set_to_none=True)
        loss.backward()

    def optimizer_step(self) -> float:
        gnorm = torch.nn.utils.clip_grad_norm_(self.params, self.grad_clip)
        self.opt.step()
        self.sched.step()
        return float(gnorm)

    def save(self, directory: Path, state: Mapping[str, Any]) -> None:
        model = {k: v for k, v in self.policy.state_dict().items() if k in self.keys}
        full = {**state, "model": model, "optimizer": self.opt.state_dict(), "scheduler": self.sched.state_dict()}
        torch.save(full, directory / "trainer_rank0.pt")

    def load(self, directory: Path) -> dict[str, Any]:
        state = torch.load(directory / "trainer_rank0.pt", map_location="cpu", weights_only=False)
        missing, unexpected = self.policy.load_state_dict(state["model"], strict=False)
        if unexpected or set(missing) & self.keys:
            raise RuntimeError(f"checkpoint {directory} does not match the policy: missing "
                               f"{sorted(set(missing) & self.keys)[:5]}, unexpected {unexpected[:5]}")
        self.opt.load_state_dict(state["optimizer"])
        self.sched.load_state_dict(state["scheduler"])
        return state


class DeepSpeedBackend(TrainBackend):
    """A DeepSpeed engine (ZeRO 0-2; ZeRO-3 for non-EBT heads). The process group must be initialized
    (``vla_ebt.distributed.init_distributed``). bf16 configs run as torch autocast (:func:`bf16_as_autocast`)."""

    def __init__(self, policy: VLAPolicy, cfg: OptimConfig, config_path: str | Path) -> None:
        import deepspeed

        from . import distributed as vdist

        self._vdist = vdist
        self.rank, self.world_size = vdist.rank(), vdist.world_size()
        ds_cfg = bf16_as_autocast(vdist.load_ds_config(config_path, cfg.batch_size, cfg.grad_clip))
        if self.is_main and ds_cfg.get("torch_autocast", {}).get("enabled"):
            print("[deepspeed] bf16: torch autocast (float32 master weights, bf16 matmuls)")
        self.grad_accum = int(ds_cfg["gradient_accumulation_steps"])
        self.partitions_params = int(ds_cfg.get("zero_optimization", {}).get("stage", 0)) == 3
        if self.partitions_params and policy.head.capabilities.second_order_loss:
            # the create_graph=True energy gradient keeps references to weights ZeRO-3 re-partitions
            raise NotImplementedError(f"ZeRO-3 does not support the second-order {policy.cfg.head.upper()} loss; "
                                      "use ZeRO 0-2")
        opt = _adamw([p for p in policy.parameters() if p.requires_grad], cfg)
        for p in policy.parameters():  # DeepSpeed broadcasts/flattens raw storage: needs contiguous tensors
            if p.dim() > 0 and (not p.data.is_contiguous() or p.data.stride(-1) != 1):
                p.data = p.data.clone(memory_format=torch.contiguous_format)
        self.engine, _, _, self.sched = deepspeed.initialize(
            model=_LossModule(policy), optimizer=opt, config=ds_cfg,
            lr_scheduler=lambda o: torch.optim.lr_scheduler.LambdaLR(o, lr_lambda(cfg)))
        self.model = self.engine

    def lr(self) -> float:
        return self.sched.get_last_lr()[0]

    def backward(self, loss: torch.Tensor) -> None:
        self.engine.backward(loss)
        self.engine.step()  # the engine applies the update at the accumulation boundary

    def optimizer_step(self) -> float:
        gnorm = self.engine.get_global_grad_norm()
        return float("nan") if gnorm is None else float(gnorm)

    def save(self, directory: Path, state: Mapping[str, Any]) -> None:
        self.engine.save_checkpoint(str(directory), tag="ds", exclude_frozen_parameters=True)
        torch.save(dict(state), directory / f"trainer_rank{self.rank}.pt")

    def load(self, directory: Path) -> dict[str, Any]:
        f = directory / f"trainer_rank{self.rank}.pt"
        state = torch.load(f if f.exists() else directory / "trainer_rank0.pt", map_location="cpu",
                           weights_only=False)
        self.engine.load_checkpoint(str(directory), tag="ds", load_module_strict=False, load_optimizer_states=True,
                                    load_lr_scheduler_states=True)
        return state

    def barrier(self) -> None:
        self._vdist.barrier()

    def any_rank(self, flag: bool, src: int | None = None) -> bool:
        if self.world_size == 1:
            return flag
        dev = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
        t = torch.tensor([1.0 if flag else 0.0], device=dev)
        if src is None:
            torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
        else:
            torch.distributed.broadcast(t, src=src)
        return bool(t.item() > 0)

    def save_policy(self, policy: VLAPolicy, directory: Path) -> None:
        if not self.partitions_params:
            super().save_policy(policy, directory)
            return
        import deepspeed

        with deepspeed.zero.GatheredParameters(list(policy.parameters()), modifier_rank=None):
            super().save_policy(policy, directory)


def make_backend(policy: VLAPolicy, cfg: OptimConfig, deepspeed_config: str | Path | None = None) -> TrainBackend:
    """A :class:`DeepSpeedBackend` when ``deepspeed_config`` is given, else a :class:`PlainBackend`."""
    if deepspeed_config is None:
        return PlainBackend(policy, cfg)
    return DeepSpeedBackend(policy, cfg, deepspeed_config)
