"""Training backends: everything that differs between the single-process loop and a DeepSpeed engine.

A backend owns the optimizer and learning-rate schedule (and the DeepSpeed engine). Per micro-batch
the loop calls ``model(batch) -> (loss, info)`` and ``backward(loss)``; per optimizer step
``optimizer_step() -> grad norm``. Checkpoints: ``save(dir, state)`` writes this rank's trainer state
plus the optimizer/model state, ``load(dir) -> state`` restores them. ``make_ema`` builds the EMA of
the weights, ``eval_policy(policy, ema)`` gives the weights to evaluate / export (EMA if on) as a
standalone :class:`VLAPolicy` and ``save_policy`` writes one as a ``save_pretrained`` folder (rank 0).
``barrier`` / ``any_rank`` are the collectives; both are no-ops for a single process.

ZeRO-3 (:class:`DeepSpeedBackend` with stage 3) partitions only the backbone's submodules across ranks.
The head, the bridge, the rest of the context encoder and the backbone's own top-level parameters stay
whole on every rank and outside ZeRO-3's fetch/release hooks (:func:`zero3_split`): the EBT loss
differentiates through the energy gradient (``create_graph=True``) and its double backward reads the
head's weights long after the module calls that ZeRO-3 would gather them for; the backbone is only
differentiated first-order through the context tokens. The EMA is then kept as per-rank shards
(:class:`ShardedEMA`) and ``eval_policy`` gathers the weights into a fresh policy on rank 0.
"""

from __future__ import annotations

import json
import math
import random
from abc import ABC, abstractmethod
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Union

import numpy as np
import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel

from .normalize import Normalizer
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


def ema_decay_at(decay: float, n_averaged: int, warmup: bool) -> float:
    """The decay of the EMA update that follows ``n_averaged`` earlier ones: ``decay``, or with ``warmup``
    ``min(decay, (1 + n) / (10 + n))``, so that in a run shorter than ~1 / (1 - decay) steps the average
    does not keep most of the initialization (0.18 at the second update, 0.9 at the 81st)."""
    return min(decay, (1 + n_averaged) / (10 + n_averaged)) if warmup else decay


def ema_multi_avg_fn(decay: float, warmup: bool = False) -> Callable[[list, list, Any], None]:
    """``multi_avg_fn(ema_tensors, current_tensors, n_averaged)`` for ``AveragedModel``: each EMA tensor
    moves ``1 - ema_decay_at(decay, n_averaged, warmup)`` of the way to the current one, in place.
    Raises ValueError for ``decay`` outside [0, 1]."""
    if not 0.0 <= decay <= 1.0:
        raise ValueError(f"optim.ema_decay must be in [0, 1], got {decay}")

    @torch.no_grad()
    def update(ema: list[torch.Tensor], current: list[torch.Tensor], n_averaged: Any) -> None:
        # int(n_averaged) reads a device tensor (a sync on GPU): only the warm-up needs it
        weight = 1.0 - (ema_decay_at(decay, int(n_averaged), True) if warmup else decay)
        if torch.is_floating_point(ema[0]) or torch.is_complex(ema[0]):
            torch._foreach_lerp_(ema, current, weight)
        else:  # integer buffers: rounded toward the average by the tensor's own arithmetic
            for e, c in zip(ema, current, strict=True):
                e.copy_(e * (1.0 - weight) + c * weight)

    return update


class ModuleEMA:
    """EMA of every parameter and buffer in a full copy of the policy (``torch`` AveragedModel), with the
    update of :func:`ema_multi_avg_fn` (``warmup``: :func:`ema_decay_at`).

    ``module`` is the averaged copy (what is evaluated and exported); a checkpoint stores the averaged
    trainable parameters and buffers (``"ema"``) and ``"ema_n_averaged"``.
    """

    def __init__(self, policy: VLAPolicy, decay: float, warmup: bool = False) -> None:
        self.averaged = AveragedModel(policy, multi_avg_fn=ema_multi_avg_fn(decay, warmup), use_buffers=True)
        self.keys = trainable_keys(policy)

    @property
    def module(self) -> VLAPolicy:
        return self.averaged.module

    def update_parameters(self, policy: VLAPolicy) -> None:
        self.averaged.update_parameters(policy)

    def checkpoint_state(self) -> dict[str, Any]:
        ema = {k: v for k, v in self.module.state_dict().items() if k in self.keys}
        return {"ema": ema, "ema_n_averaged": self.averaged.n_averaged.clone()}

    def load_checkpoint_state(self, state: Mapping[str, Any]) -> None:
        if "ema" in state:
            self.module.load_state_dict(state["ema"], strict=False)
            self.averaged.n_averaged.copy_(state["ema_n_averaged"])


class ShardedEMA:
    """EMA under ZeRO-3: each rank averages only its own partition (``ds_tensor``) of every trainable
    parameter (whole or partitioned alike), and its full float buffers; no communication per step, 1/N
    of the trainable parameters' memory. The update rule is AveragedModel's (copy at the first update,
    then ``lerp(current, 1 - decay)``), element by element, so the gathered shards equal
    :class:`ModuleEMA` of the same weights. :meth:`DeepSpeedBackend.eval_policy` gathers them.

    A checkpoint stores this rank's shards (``"ema_shards"``; resuming needs the same world size, as
    ZeRO checkpoints do), the buffers (``"ema_buffers"``) and ``"ema_n_averaged"``.
    """

    def __init__(self, policy: VLAPolicy, decay: float, warmup: bool = False) -> None:
        self.avg_fn = ema_multi_avg_fn(decay, warmup)
        self.params = {n: p for n, p in policy.named_parameters() if p.requires_grad}
        for n, p in self.params.items():
            if getattr(p.ds_tensor, "final_location", None) is not None:
                raise NotImplementedError(f"EMA under ZeRO-3 reads each rank's partition in memory; parameter {n} "
                                          "is offloaded to NVMe: set optim.ema_decay 0 or offload to cpu")
        self.shards = {n: p.ds_tensor.detach().clone() for n, p in self.params.items()}
        self.buffer_refs = dict(policy.named_buffers())
        self.buffers = {n: b.detach().clone() for n, b in self.buffer_refs.items()}
        self.n_averaged = torch.tensor(0, dtype=torch.long)

    def _pairs(self) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        ema = [*self.shards.values(), *self.buffers.values()]
        cur = [*(p.ds_tensor.detach() for p in self.params.values()), *(b.detach() for b in self.buffer_refs.values())]
        return ema, cur

    @torch.no_grad()
    def update_parameters(self, policy: VLAPolicy) -> None:
        ema, cur = self._pairs()
        if int(self.n_averaged) == 0:
            for e, c in zip(ema, cur):
                e.copy_(c)
        else:
            groups: dict[tuple[torch.device, torch.dtype], tuple[list, list]] = {}
            for e, c in zip(ema, cur):
                es, cs = groups.setdefault((e.device, e.dtype), ([], []))
                es.append(e)
                cs.append(c.to(e.device))
            for es, cs in groups.values():
                self.avg_fn(es, cs, self.n_averaged)
        self.n_averaged += 1

    def checkpoint_state(self) -> dict[str, Any]:
        return {"ema_shards": {n: t.detach().cpu() for n, t in self.shards.items()},
                "ema_buffers": {n: t.detach().cpu() for n, t in self.buffers.items()},
                "ema_n_averaged": self.n_averaged.clone()}

    @torch.no_grad()
    def load_checkpoint_state(self, state: Mapping[str, Any]) -> None:
        if "ema_shards" not in state:
            return
        for n, t in state["ema_shards"].items():
            if n not in self.shards or self.shards[n].shape != t.shape:
                raise RuntimeError(f"EMA shard {n} of the checkpoint does not fit this run (a different world size "
                                   "or model?): resume ZeRO-3 EMA with the world size it was saved with")
            self.shards[n].copy_(t)
        for n, t in state["ema_buffers"].items():
            self.buffers[n].copy_(t)
        self.n_averaged.copy_(state["ema_n_averaged"])


EMA = Union[ModuleEMA, ShardedEMA]


def zero3_split(policy: VLAPolicy) -> tuple[list[nn.Module], list[nn.Parameter]]:
    """What ZeRO-3 must not partition: (modules to keep outside its hooks, parameters to keep whole).

    ZeRO-3 partitions the backbone's submodules (the pretrained towers and its new projections), whose
    inputs and outputs are tensors or dicts of them, so its hooks gather a module's weights for its
    forward and again for its backward. Everything else stays whole on every rank and unhooked: the
    head (its loss may differentiate through its own gradient, see the module docstring), the bridge
    and the rest of the context encoder, and the backbone's own top-level parameters (the backbone's
    output is a PrefixOutput dataclass, which ZeRO-3's backward hooks cannot see into, so they would
    never gather those parameters again for the backward). A parameter shared between the two sides
    cannot be both: that raises ValueError naming it.
    """
    backbone = policy.encoder.backbone
    inside = [m for child in backbone.children() for m in child.modules()]
    inside_ids = {id(m) for m in inside}
    partitioned = {id(p) for m in inside for p in m.parameters(recurse=False)}
    outside = [m for m in policy.modules() if id(m) not in inside_ids]
    names = {id(p): n for n, p in policy.named_parameters(remove_duplicate=False)}
    whole, seen = [], set()
    for m in outside:
        for p in m.parameters(recurse=False):
            if id(p) in partitioned:
                raise ValueError(f"ZeRO-3: parameter {names.get(id(p), '?')} is shared between the backbone's "
                                 "submodules (partitioned) and the head / bridge / backbone top level (kept whole); "
                                 "untie it or use ZeRO 0-2")
            if id(p) not in seen:
                seen.add(id(p))
                whole.append(p)
    return outside, whole


def _release_from_zero3(engine: Any, modules: list[nn.Module], params: list[nn.Parameter]) -> None:
    """Take ``modules`` out of a ZeRO-3 engine's fetch/release hooks and keep ``params`` whole.

    The engine registered four hooks on every module (forward pre/post: gather/release its weights;
    two more that gather them again for its backward); those of ``modules`` are removed. ``params``
    are marked persistent (``ds_persist``) and added to the optimizer's persistent list, which it
    partitions at the start of each step and all-gathers again after it (and around checkpoints), then
    gathered once now.
    """
    offload = engine.optimizer.parameter_offload
    hook_ids = {hid for m in modules for hid in (*m._forward_pre_hooks, *m._forward_hooks)}
    for handles in (offload.forward_hooks, offload.backward_hooks):
        keep = []
        for h in handles:
            if h.id in hook_ids:
                h.remove()
            else:
                keep.append(h)
        handles[:] = keep
    persistent = offload.persistent_parameters  # the same list object as engine.optimizer.persistent_parameters
    known = {id(p) for p in persistent}
    for p in params:
        p.ds_persist = True
        if id(p) not in known:
            persistent.append(p)
    _gather_whole(params)


def _gather_whole(params: list[nn.Parameter]) -> None:
    """All-gather the whole-kept parameters that ZeRO-3 left partitioned (collective; a no-op when none is)."""
    from deepspeed.runtime.zero.partition_parameters import ZeroParamStatus

    if params:
        params[0].all_gather(param_list=params)  # gathers only the NOT_AVAILABLE ones
        bad = [p.ds_id for p in params if p.ds_status != ZeroParamStatus.AVAILABLE]
        if bad:
            raise RuntimeError(f"ZeRO-3: parameters {bad[:5]} kept whole are not available after all-gather")


def _gather_shard(p: nn.Parameter, shard: torch.Tensor) -> torch.Tensor:
    """The full tensor of ZeRO-3 parameter ``p`` whose rank-local partition is ``shard`` (collective over
    ``p``'s partition group; every rank gets it)."""
    group = p.ds_process_group
    world = torch.distributed.get_world_size(group=group)
    parts = [torch.empty_like(shard) for _ in range(world)]
    torch.distributed.all_gather(parts, shard.contiguous(), group=group)
    return torch.cat(parts)[: p.ds_numel].view(p.ds_shape)


def _rng_states() -> tuple:
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    return torch.get_rng_state(), cuda, random.getstate(), np.random.get_state()


def _set_rng_states(states: tuple) -> None:
    cpu, cuda, py, npy = states
    torch.set_rng_state(cpu)
    if cuda is not None:
        torch.cuda.set_rng_state_all(cuda)
    random.setstate(py)
    np.random.set_state(npy)


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

    def make_ema(self, policy: VLAPolicy, decay: float, warmup: bool = False) -> EMA | None:
        """The EMA of ``policy``'s weights (None when ``decay`` is 0): a :class:`ModuleEMA` copy
        (``warmup``: :func:`ema_decay_at`)."""
        return ModuleEMA(policy, decay, warmup) if decay > 0 else None

    def eval_policy(self, policy: VLAPolicy, ema: EMA | None) -> VLAPolicy | None:
        """The weights to evaluate and export (the EMA's if on) as a standalone policy; every rank must call
        it. Here: ``ema.module`` or ``policy`` itself, on every rank (no copy)."""
        return ema.module if ema is not None else policy

    def save_policy(self, policy: VLAPolicy | None, directory: Path) -> None:
        """``policy.save_pretrained(directory)`` on rank 0 (``policy``: what :meth:`eval_policy` returned);
        every rank must call it."""
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
    """A DeepSpeed engine, ZeRO 0-3. The process group must be initialized
    (``vla_ebt.distributed.init_distributed``). bf16 configs run as torch autocast (:func:`bf16_as_autocast`).

    ZeRO-3 partitions the backbone's submodules only; the head, bridge and the rest stay whole on every
    rank (:func:`zero3_split`), which is what the EBT head's second-order loss needs. The EMA is then a
    :class:`ShardedEMA`, and :meth:`eval_policy` gathers the weights into a fresh policy on rank 0."""

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
        self.policy = policy
        whole_modules: list[nn.Module] = []
        self.whole_params: list[nn.Parameter] = []
        if self.partitions_params:
            whole_modules, self.whole_params = zero3_split(policy)
        opt = _adamw([p for p in policy.parameters() if p.requires_grad], cfg)
        for p in policy.parameters():  # DeepSpeed broadcasts/flattens raw storage: needs contiguous tensors
            if p.dim() > 0 and (not p.data.is_contiguous() or p.data.stride(-1) != 1):
                p.data = p.data.clone(memory_format=torch.contiguous_format)
        self.engine, _, _, self.sched = deepspeed.initialize(
            model=_LossModule(policy), optimizer=opt, config=ds_cfg,
            lr_scheduler=lambda o: torch.optim.lr_scheduler.LambdaLR(o, lr_lambda(cfg)))
        self.model = self.engine
        if self.partitions_params:
            _release_from_zero3(self.engine, whole_modules, self.whole_params)
            if self.is_main:
                n_whole = sum(p.ds_numel for p in self.whole_params)
                n_all = sum(p.ds_numel for p in policy.parameters())
                print(f"[deepspeed] ZeRO-3: backbone submodules partitioned ({(n_all - n_whole) / 1e6:.2f}M params); "
                      f"head, bridge and backbone top level whole on every rank ({n_whole / 1e6:.2f}M)")

    def lr(self) -> float:
        return self.sched.get_last_lr()[0]

    def backward(self, loss: torch.Tensor) -> None:
        self.engine.backward(loss)
        self.engine.step()  # the engine applies the update at the accumulation boundary
        if self.partitions_params:
            # the step re-gathers the persistent list, except when it skips an update (overflow / inf norm)
            _gather_whole(self.whole_params)

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
        if self.partitions_params:
            _gather_whole(self.whole_params)
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

    def make_ema(self, policy: VLAPolicy, decay: float, warmup: bool = False) -> EMA | None:
        if not self.partitions_params or decay <= 0:
            return super().make_ema(policy, decay, warmup)
        return ShardedEMA(policy, decay, warmup)

    def eval_policy(self, policy: VLAPolicy, ema: EMA | None) -> VLAPolicy | None:
        """ZeRO-3: a fresh :class:`VLAPolicy` on rank 0 holding the gathered weights (the EMA's if on), on
        the training device; None on the other ranks. Frozen backbone base weights (finetune "lora" /
        "frozen") are not gathered: the fresh policy loads them from ``backbone.model`` as
        ``from_pretrained`` does. Restores the RNG states it used, so training is unaffected."""
        if not self.partitions_params:
            return super().eval_policy(policy, ema)
        gathered = self._gather_state(policy, ema)
        if gathered is None:
            return None
        state, skipped = gathered
        states = _rng_states()
        try:
            fresh = VLAPolicy(policy.cfg, Normalizer.from_dict(policy.normalizer.to_dict()))
        finally:
            _set_rng_states(states)
        missing, unexpected = fresh.load_state_dict(state, strict=False)
        if unexpected or set(missing) - skipped:
            raise RuntimeError(f"ZeRO-3: the gathered weights do not fit a fresh policy: missing "
                               f"{sorted(set(missing) - skipped)[:5]}, unexpected {sorted(unexpected)[:5]}")
        return fresh.to(policy.device)

    @torch.no_grad()
    def _gather_state(self, policy: VLAPolicy, ema: EMA | None) -> tuple[dict[str, torch.Tensor], set[str]] | None:
        """Rank 0: (the policy's state dict gathered from the ZeRO-3 partitions, EMA shards where ``ema``
        is on, as CPU tensors; the names of the parameters left out); None elsewhere. Collective: every
        rank runs the same all-gathers. Leaves out the frozen parameters of the backbone's pretrained
        modules unless finetune mode is "full" (a fresh policy loads them from ``backbone.model``)."""
        full = policy.cfg.finetune.mode == "full"
        prefixes = tuple(policy._base_weight_prefixes())
        shards = ema.shards if isinstance(ema, ShardedEMA) else {}
        out: dict[str, torch.Tensor] = {}
        skipped: set[str] = set()
        done: dict[int, torch.Tensor] = {}
        for name, p in policy.named_parameters(remove_duplicate=False):  # tied weights: gathered once
            if not (full or p.requires_grad or not name.startswith(prefixes)):
                skipped.add(name)
                continue
            if id(p) not in done:
                value = _gather_shard(p, shards.get(name, p.ds_tensor))
                done[id(p)] = value.detach().cpu().clone() if self.is_main else value[:0]
            out[name] = done[id(p)]
        if not self.is_main:
            return None
        ema_buffers = ema.buffers if isinstance(ema, ShardedEMA) else {}
        params = set(out) | skipped
        for name, value in policy.state_dict().items():  # the persistent buffers
            if name not in params:
                out[name] = ema_buffers.get(name, value).detach().cpu().clone()
        return out, skipped

    def save_policy(self, policy: VLAPolicy | None, directory: Path) -> None:
        """ZeRO-3: ``policy`` is what :meth:`eval_policy` returned (None on ranks > 0); given the
        partitioned training policy itself (on every rank), it is gathered first."""
        if self.partitions_params and policy is self.policy:
            policy = self.eval_policy(policy, None)
        super().save_policy(policy, directory)


def make_backend(policy: VLAPolicy, cfg: OptimConfig, deepspeed_config: str | Path | None = None) -> TrainBackend:
    """A :class:`DeepSpeedBackend` when ``deepspeed_config`` is given, else a :class:`PlainBackend`."""
    if deepspeed_config is None:
        return PlainBackend(policy, cfg)
    return DeepSpeedBackend(policy, cfg, deepspeed_config)
