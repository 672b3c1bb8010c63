"""The training loop: AdamW + warmup/cosine schedule + gradient clipping + EMA of weights.

Single-process, or through a DeepSpeed engine (ZeRO 0-2; see vla_ebt/distributed.py) with
periodic atomic checkpoints and ``resume``.

Rank 0 logs every ``log_every`` steps (and the last step) to ``run_dir/metrics.jsonl`` (one JSON
object per logged step: step, loss, lr, grad_norm, samples_per_s + the head's metrics), to
TensorBoard scalars in ``run_dir/tb/`` (tags in :data:`TB_TAGS`; other head metrics under
``train/<name>``) and to a tqdm bar. Periodic closed-loop evaluation (``OptimConfig.eval_every`` +
the ``on_eval`` callback) sees the EMA weights and adds ``{"step", "eval/success", ...}`` records
to both (such records have no "loss" key). ``OptimConfig.max_seconds`` stops training at a
wall-clock budget; time spent in ``on_eval`` counts neither toward it nor toward samples/s.
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
from typing import Any, Callable, Iterator, Mapping, Union

import numpy as np
import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm.auto import tqdm

from .policy import VLAPolicy

#: metrics.jsonl key -> TensorBoard tag. The EBT head's ``energy_start`` / ``energy_end`` are the mean
#: energies at the first / last point its training unroll evaluated (before / after minimization),
#: ``unroll_steps`` the number of minimization steps unrolled in that step.
TB_TAGS = {
    "loss": "train/loss",
    "lr": "train/lr",
    "grad_norm": "train/grad_norm",
    "samples_per_s": "train/samples_per_s",
    "energy_start": "ebt/energy_before",
    "energy_end": "ebt/energy_after",
    "unroll_steps": "ebt/steps",
}

#: ``on_eval(step, policy) -> metrics``: step = optimizer steps done; policy = the EMA weights (the
#: live policy when EMA is off), in eval mode. Keys are logged as ``eval/<key>`` (a "success" key is
#: what TensorBoard's ``eval/success`` shows); values must be numbers.
EvalCallback = Callable[[int, VLAPolicy], Mapping[str, float]]
#: ``batches``: an iterator of training batches, or ``make(start_batch) -> iterator`` that starts
#: after ``start_batch`` consumed batches (lets a resumable stream skip without decoding).
Batches = Union[Iterator[Mapping[str, Any]], Callable[[int], Iterator[Mapping[str, Any]]]]


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
    # Wall-clock training budget in seconds (0: off). Training stops after the first step that reaches
    # it (equal-wall-clock comparisons); the schedule still spans ``steps``, so set ``steps`` to an upper
    # bound. Excludes time in ``on_eval``.
    max_seconds: float = 0.0
    eval_every: int = 0  # call on_eval (closed-loop eval on the EMA weights) every N optimizer steps; 0: off
    tensorboard: bool = True  # scalars to run_dir/tb (rank 0 only)


@dataclass
class TrainResult:
    """What a run produced.

    losses:        per-step losses of every step done (resumed runs include the restored ones).
    seconds:       training wall time of this process's loop, without time spent in ``on_eval``.
    steps:         optimizer steps done (< cfg.steps when ``max_seconds`` stopped the run).
    eval_policy:   the policy to evaluate (EMA weights if on), in eval mode.
    samples_per_s: samples (all ranks) per training second in this process's loop.
    stop_reason:   "steps" or "max_seconds".
    evals:         the ``on_eval`` records ({"step", "eval/<key>": value}).
    """

    losses: list[float]
    seconds: float
    steps: int
    eval_policy: VLAPolicy
    last_info: dict[str, float] = field(default_factory=dict)
    samples_per_s: float = 0.0
    start_step: int = 0
    stop_reason: str = "steps"
    eval_seconds: float = 0.0
    evals: list[dict[str, float]] = field(default_factory=list)


class NonFiniteLossError(FloatingPointError):
    """A training step produced a non-finite loss; ``step`` is its 0-based index. Raised before the
    step's update, so every checkpoint written earlier is from finite steps."""

    def __init__(self, step: int, loss: float, info: Mapping[str, float]) -> None:
        super().__init__(f"training step {step}: loss is {loss} (info {dict(info)})")
        self.step = step
        self.loss = loss


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


def bf16_as_autocast(ds_cfg: dict[str, Any]) -> dict[str, Any]:
    """Turn a DeepSpeed config's ``bf16`` mode into ``torch_autocast`` bf16 (returns a new dict).

    DeepSpeed's bf16 mode casts the whole module, weights and buffers, to bf16, but the policy feeds
    float32 tensors into it (backbones return float32 by contract; normalized states; the energy
    gradient w.r.t. float32 actions), so the first bf16 Linear fails ("mat1 and mat2 must have the same
    dtype", measured on the paligemma policy). torch_autocast keeps float32 master weights and runs
    matmuls/convs in bf16 with reduced-precision gradient communication for those layers.
    """
    out = json.loads(json.dumps(ds_cfg))
    if out.get("bf16", {}).get("enabled"):
        out["bf16"]["enabled"] = False
        out["torch_autocast"] = {"enabled": True, "dtype": "bfloat16"}
    return out


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


class _MetricsSink:
    """metrics.jsonl + TensorBoard scalars for rank 0 (a no-op sink elsewhere or without run_dir)."""

    def __init__(self, run_dir: str | Path | None, enabled: bool, start: int, tensorboard: bool) -> None:
        self.log = None
        self.tb = None
        if run_dir is None or not enabled:
            return
        Path(run_dir).mkdir(parents=True, exist_ok=True)
        mpath = Path(run_dir) / "metrics.jsonl"
        if start > 0 and mpath.exists():  # drop records past the checkpoint (they are recomputed)
            kept = [ln for ln in mpath.read_text().splitlines() if ln.strip() and json.loads(ln).get("step", 0) < start]
            mpath.write_text("".join(ln + "\n" for ln in kept))
        elif start == 0:
            mpath.write_text("")  # a fresh run starts a fresh curve
        self.log = open(mpath, "a")
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            tb_dir = Path(run_dir) / "tb"
            if start == 0:  # a fresh run starts fresh curves (event files of an earlier run would merge in)
                for old in tb_dir.glob("events.out.tfevents.*"):
                    old.unlink()
            # purge_step: a resumed run hides the events a killed run wrote past the checkpoint
            self.tb = SummaryWriter(str(tb_dir), purge_step=start if start > 0 else None)

    def write(self, rec: Mapping[str, Any], tags: Mapping[str, str] | None = None) -> None:
        """One record: ``step`` + scalar values; keys map to tags via ``tags`` (else used as is)."""
        if self.log is not None:
            self.log.write(json.dumps(rec) + "\n")
            self.log.flush()
        if self.tb is not None:
            step = int(rec["step"])
            for k, v in rec.items():
                if k == "step" or not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v):
                    continue
                tag = (tags or {}).get(k, k)
                self.tb.add_scalar(tag, float(v), global_step=step)
            self.tb.flush()

    def close(self) -> None:
        if self.log is not None:
            self.log.close()
        if self.tb is not None:
            self.tb.close()


def _train_tags(rec: Mapping[str, Any]) -> dict[str, str]:
    return {k: TB_TAGS.get(k, f"train/{k}") for k in rec if k != "step"}


def train_policy(
    policy: VLAPolicy,
    batches: Batches,
    cfg: OptimConfig,
    run_dir: str | Path | None = None,
    progress: bool = True,
    resume: str | Path | None = None,
    deepspeed_config: str | Path | None = None,
    on_eval: EvalCallback | None = None,
) -> TrainResult:
    """Run ``cfg.steps`` optimizer steps on batches from ``batches`` (training schema; see :data:`Batches`).

    ``resume``: a checkpoint directory or ``"latest"`` (run_dir/checkpoints; starts fresh if none).
    Resuming restores model, optimizer, scheduler, EMA, RNG states and the losses so far, and skips the
    batches already consumed (an iterator must replay the same sequence, e.g. a re-seeded loader; a
    callable is asked for the stream from that position).
    ``deepspeed_config``: train through a DeepSpeed engine (the process group must be initialized,
    see ``vla_ebt.distributed.init_distributed``); otherwise a plain single-process loop.
    ``on_eval``: called on rank 0 every ``cfg.eval_every`` steps with the EMA weights (see
    :data:`EvalCallback`); the RNG states are restored afterwards, so evaluating does not change the
    training run (same batches, same noise, same losses).

    Raises :class:`NonFiniteLossError` (a FloatingPointError) on a non-finite loss, on every rank,
    before that step's update (nothing is written past the last good step).
    """
    from . import distributed as vdist

    use_ds = deepspeed_config is not None
    main = vdist.is_main() if use_ds else True
    world = vdist.world_size() if use_ds else 1
    ckpt_dir = Path(run_dir) / "checkpoints" if run_dir is not None else None
    if cfg.ckpt_every > 0 and ckpt_dir is None:
        raise ValueError("ckpt_every > 0 needs a run_dir")
    if cfg.max_seconds < 0 or cfg.eval_every < 0:
        raise ValueError(f"optim.max_seconds and optim.eval_every must be >= 0, got {cfg.max_seconds}, {cfg.eval_every}")

    params = [p for p in policy.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    engine = None
    grad_accum = 1
    if use_ds:
        import deepspeed

        ds_cfg = bf16_as_autocast(vdist.load_ds_config(deepspeed_config, cfg.batch_size, cfg.grad_clip))
        if main and ds_cfg.get("torch_autocast", {}).get("enabled"):
            print("[deepspeed] bf16: torch autocast (float32 master weights, bf16 matmuls)")
        grad_accum = int(ds_cfg["gradient_accumulation_steps"])
        zero_stage = int(ds_cfg.get("zero_optimization", {}).get("stage", 0))
        if zero_stage == 3 and policy.head.capabilities.second_order_loss:
            # Measured (EBT): forward runs, backward fails ("mat2 must be a matrix"): the create_graph=True
            # energy gradient keeps references to weights that ZeRO-3 re-partitions after forward.
            raise NotImplementedError(f"ZeRO-3 does not support the second-order {policy.cfg.head.upper()} loss; use ZeRO 0-2")
        for p in policy.parameters():  # DeepSpeed broadcasts/flattens raw storage: needs contiguous tensors
            if p.dim() > 0 and (not p.data.is_contiguous() or p.data.stride(-1) != 1):
                p.data = p.data.clone(memory_format=torch.contiguous_format)
        engine, opt, _, sched = deepspeed.initialize(
            model=_LossModule(policy), optimizer=opt, config=ds_cfg,
            lr_scheduler=lambda o: torch.optim.lr_scheduler.LambdaLR(o, lr_lambda(cfg)))
        if zero_stage == 3 and cfg.ema_decay > 0:
            print("[deepspeed] ZeRO-3 partitions parameters: EMA disabled")
            cfg = dataclasses.replace(cfg, ema_decay=0.0)
        if zero_stage == 3 and on_eval is not None and cfg.eval_every > 0:
            print("[deepspeed] ZeRO-3 partitions parameters: periodic evaluation disabled")
            cfg = dataclasses.replace(cfg, eval_every=0)
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
    if callable(batches):
        batches = batches(start * grad_accum)
    else:
        for _ in range(start * grad_accum):  # data position: replay and drop the consumed batches
            next(batches)
    if rng is not None:
        _set_rng_state(rng)

    def any_rank(flag: bool, src: int | None = None) -> bool:
        """Same decision on every rank: OR over ranks, or rank ``src``'s value."""
        if not use_ds or world == 1:
            return flag
        dev = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
        t = torch.tensor([1.0 if flag else 0.0], device=dev)
        if src is None:
            torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
        else:
            torch.distributed.broadcast(t, src=src)
        return bool(t.item() > 0)

    def run_eval(done: int) -> dict[str, float]:
        """on_eval on the EMA weights, RNG states saved and restored around it."""
        target = ema.module if ema is not None else policy
        was_training = target.training
        saved = _rng_state()
        target.eval()
        try:
            out = dict(on_eval(done, target))
        finally:
            _set_rng_state(saved)
            target.train(was_training)
            model.train()
        rec = {"step": done}
        for k, v in out.items():
            rec[k if k.startswith("eval/") else f"eval/{k}"] = float(v)
        return rec

    sink = _MetricsSink(run_dir, main, start, cfg.tensorboard)
    model = engine if use_ds else policy
    model.train()
    info: dict[str, float] = {}
    evals: list[dict[str, float]] = []
    eval_seconds = 0.0
    stop_reason = "steps"
    done = start
    t0 = time.perf_counter()
    bar = tqdm(range(start, cfg.steps), desc="train", disable=not (progress and main), dynamic_ncols=True,
               initial=start, total=cfg.steps)
    try:
        for step in bar:
            step_loss = 0.0
            lr_used = sched.get_last_lr()[0]  # the learning rate this step's update uses
            for _ in range(grad_accum):
                batch = next(batches)
                loss, info = engine(batch) if use_ds else policy.compute_loss(batch)
                if any_rank(not bool(torch.isfinite(loss))):
                    raise NonFiniteLossError(step, float(loss.item()), info)
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
            done = step + 1
            train_s = time.perf_counter() - t0 - eval_seconds
            out_of_time = cfg.max_seconds > 0 and any_rank(train_s >= cfg.max_seconds, src=0)
            last = done == cfg.steps or out_of_time
            if main and (step % cfg.log_every == 0 or last):
                g = float(gnorm)
                rec = {"step": step, "loss": step_loss, "grad_norm": g if math.isfinite(g) else None,
                       "lr": lr_used,
                       "samples_per_s": (done - start) * cfg.batch_size * grad_accum * world / max(train_s, 1e-9),
                       **info}
                bar.set_postfix(loss=f"{step_loss:.4f}", sps=f"{rec['samples_per_s']:.1f}")
                sink.write(rec, _train_tags(rec))
            if cfg.ckpt_every > 0 and done % cfg.ckpt_every == 0:
                save_checkpoint(done, losses)
            if on_eval is not None and cfg.eval_every > 0 and done % cfg.eval_every == 0:
                te = time.perf_counter()
                if main:
                    rec = run_eval(done)
                    evals.append(rec)
                    sink.write(rec)
                    bar.write(f"[eval] step {done}: " + ", ".join(f"{k}={v:.3f}" for k, v in rec.items() if k != "step"))
                vdist.barrier() if use_ds else None
                eval_seconds += time.perf_counter() - te
            if out_of_time:
                stop_reason = "max_seconds"
                if main:
                    bar.write(f"[train] wall-clock budget of {cfg.max_seconds:g} s reached after {done} steps")
                break
    finally:
        bar.close()
        sink.close()
    seconds = time.perf_counter() - t0 - eval_seconds
    eval_policy = ema.module if ema is not None else policy
    eval_policy.eval()
    sps = (done - start) * cfg.batch_size * grad_accum * world / max(seconds, 1e-9)
    return TrainResult(losses=losses, seconds=seconds, steps=done, eval_policy=eval_policy, last_info=info,
                       samples_per_s=sps, start_step=start, stop_reason=stop_reason, eval_seconds=eval_seconds,
                       evals=evals)
