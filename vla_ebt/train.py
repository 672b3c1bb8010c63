"""The training loop: AdamW + warmup/cosine schedule + gradient clipping + EMA of weights.

Single-process or through a DeepSpeed engine (ZeRO 0-3), behind one backend object
(:mod:`vla_ebt.train_backend`), with periodic atomic checkpoints and ``resume`` (:mod:`vla_ebt.train_io`);
every checkpoint holds a loadable ``policy/`` folder (EMA weights if on).

Rank 0 logs every ``log_every`` steps (and the last step) to ``run_dir/metrics.jsonl`` (one JSON
object per logged step: step, loss, lr, grad_norm, samples_per_s, train_seconds (training wall time
up to and including that step, carried across resumes by the checkpoints) + the head's metrics), to
TensorBoard scalars in ``run_dir/tb/`` (tags in :data:`TB_TAGS`; other head metrics under
``train/<name>``) and to a tqdm bar. Periodic closed-loop evaluation (``OptimConfig.eval_every`` +
the ``on_eval`` callback) sees the EMA weights and adds ``{"step", "eval/success", ...}`` records
to both (such records have no "loss" key). ``OptimConfig.max_seconds`` stops training at a
wall-clock budget; time spent in ``on_eval`` counts neither toward it nor toward samples/s.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Union

import torch
from tqdm.auto import tqdm

from .policy import VLAPolicy
from .train_backend import EMA, TrainBackend, bf16_as_autocast, lr_lambda, make_backend
from .train_io import (MetricsSink, list_checkpoints, resolve_resume, rng_state, set_rng_state,
                       write_checkpoint)

__all__ = ["TB_TAGS", "Batches", "EvalCallback", "NonFiniteLossError", "OptimConfig", "TrainResult",
           "bf16_as_autocast", "list_checkpoints", "lr_lambda", "resolve_resume", "train_policy"]

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
    # EMA warm-up: the decay of update n is min(ema_decay, (1 + n) / (10 + n)) (train_backend.ema_decay_at),
    # so a run shorter than the average's span does not evaluate mostly its initialization (the cap is below
    # 0.99 for the first 890 updates, so there it, not ema_decay, sets the average). Off by default: the
    # published comparison grids were trained without it.
    ema_warmup: bool = False
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
    eval_policy:   the policy to evaluate (EMA weights if on), in eval mode. Under ZeRO-3 a standalone
                   copy gathered on rank 0, and None on the other ranks.
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
    if cfg.ckpt_every > 0 and run_dir is None:
        raise ValueError("ckpt_every > 0 needs a run_dir")
    if cfg.max_seconds < 0 or cfg.eval_every < 0:
        raise ValueError(f"optim.max_seconds and optim.eval_every must be >= 0, got {cfg.max_seconds}, {cfg.eval_every}")
    backend = make_backend(policy, cfg, deepspeed_config)
    ema = backend.make_ema(policy, cfg.ema_decay, cfg.ema_warmup)
    # backend.eval_policy(policy, ema): the weights evaluated, exported and in every checkpoint's policy/
    ckpt_dir = Path(run_dir) / "checkpoints" if run_dir is not None else None

    start, losses, rng, seconds_before = 0, [], None, 0.0
    ckpt = resolve_resume(resume, run_dir) if resume is not None else None
    if ckpt is not None:
        start, losses, rng, seconds_before = _restore(backend, ema, ckpt)
        print(f"[train] resumed from {ckpt} at step {start}")
    stream = _skip_consumed(batches, start * backend.grad_accum)
    if rng is not None:
        set_rng_state(rng)

    sink = MetricsSink(run_dir, backend.is_main, start, cfg.tensorboard)
    samples_per_step = cfg.batch_size * backend.grad_accum * backend.world_size
    info: dict[str, float] = {}
    evals: list[dict[str, float]] = []
    eval_seconds, stop_reason, done = 0.0, "steps", start
    backend.model.train()
    t0 = time.perf_counter()
    bar = tqdm(range(start, cfg.steps), desc="train", disable=not (progress and backend.is_main), dynamic_ncols=True,
               initial=start, total=cfg.steps)
    try:
        for step in bar:
            lr_used = backend.lr()  # the learning rate this step's update uses
            step_loss, info = _accumulate_gradients(backend, stream, step)
            gnorm = backend.optimizer_step()
            if ema is not None:
                ema.update_parameters(policy)
            losses.append(step_loss)
            done = step + 1
            train_s = time.perf_counter() - t0 - eval_seconds
            out_of_time = cfg.max_seconds > 0 and backend.any_rank(train_s >= cfg.max_seconds, src=0)

            if backend.is_main and (step % cfg.log_every == 0 or done == cfg.steps or out_of_time):
                rec = {"step": step, "loss": step_loss, "grad_norm": gnorm if math.isfinite(gnorm) else None,
                       "lr": lr_used, "samples_per_s": (done - start) * samples_per_step / max(train_s, 1e-9),
                       "train_seconds": seconds_before + train_s, **info}
                bar.set_postfix(loss=f"{step_loss:.4f}", sps=f"{rec['samples_per_s']:.1f}")
                sink.write(rec, {k: TB_TAGS.get(k, f"train/{k}") for k in rec if k != "step"})
            if cfg.ckpt_every > 0 and done % cfg.ckpt_every == 0:
                write_checkpoint(backend, ckpt_dir, done, _trainer_state(done, losses, ema, seconds_before + train_s),
                                 backend.eval_policy(policy, ema), cfg.ckpt_keep)
            if on_eval is not None and cfg.eval_every > 0 and done % cfg.eval_every == 0:
                te = time.perf_counter()
                target = backend.eval_policy(policy, ema)  # every rank (ZeRO-3 gathers)
                if backend.is_main:
                    rec = _run_eval(on_eval, done, target, backend.model)
                    evals.append(rec)
                    sink.write(rec)
                    bar.write(f"[eval] step {done}: " + ", ".join(f"{k}={v:.3f}" for k, v in rec.items() if k != "step"))
                backend.barrier()
                eval_seconds += time.perf_counter() - te
            if out_of_time:
                stop_reason = "max_seconds"
                if backend.is_main:
                    bar.write(f"[train] wall-clock budget of {cfg.max_seconds:g} s reached after {done} steps")
                break
    finally:
        bar.close()
        sink.close()
    seconds = time.perf_counter() - t0 - eval_seconds
    eval_policy = backend.eval_policy(policy, ema)
    if eval_policy is not None:
        eval_policy.eval()
    return TrainResult(losses=losses, seconds=seconds, steps=done, eval_policy=eval_policy, last_info=info,
                       samples_per_s=(done - start) * samples_per_step / max(seconds, 1e-9), start_step=start,
                       stop_reason=stop_reason, eval_seconds=eval_seconds, evals=evals)


def _skip_consumed(batches: Batches, consumed: int) -> Iterator[Mapping[str, Any]]:
    """The batch stream after ``consumed`` batches (a callable is asked; an iterator is replayed)."""
    if callable(batches):
        return batches(consumed)
    for _ in range(consumed):
        next(batches)
    return batches


def _accumulate_gradients(backend: TrainBackend, stream: Iterator[Mapping[str, Any]],
                          step: int) -> tuple[float, dict[str, float]]:
    """Forward + backward over ``backend.grad_accum`` micro-batches; returns (mean loss, last info).
    Raises :class:`NonFiniteLossError` on every rank if any rank's loss is not finite."""
    step_loss, info = 0.0, {}
    for _ in range(backend.grad_accum):
        loss, info = backend.model(next(stream))
        if backend.any_rank(not bool(torch.isfinite(loss))):
            raise NonFiniteLossError(step, float(loss.item()), info)
        backend.backward(loss)
        step_loss += loss.item() / backend.grad_accum
    return step_loss, info


def _trainer_state(done: int, losses: list[float], ema: EMA | None, train_seconds: float) -> dict[str, Any]:
    """What a checkpoint holds besides the backend's model/optimizer state."""
    state: dict[str, Any] = {"step": done, "losses": losses, "rng": rng_state(), "train_seconds": train_seconds}
    if ema is not None:
        state.update(ema.checkpoint_state())
    return state


def _restore(backend: TrainBackend, ema: EMA | None, path: Path) -> tuple[int, list[float], dict, float]:
    """Load checkpoint ``path``; returns (steps done, losses so far, RNG states, training seconds so far)."""
    state = backend.load(path)
    if ema is not None:
        ema.load_checkpoint_state(state)
    return int(state["step"]), list(state["losses"]), state["rng"], float(state.get("train_seconds", 0.0))


def _run_eval(on_eval: EvalCallback, done: int, target: VLAPolicy, model: torch.nn.Module) -> dict[str, float]:
    """``on_eval`` on ``target`` in eval mode, RNG states saved and restored around it; ``model`` (the
    training module) is back in train mode afterwards. Returns the ``{"step", "eval/<key>"}`` record."""
    was_training = target.training
    saved = rng_state()
    target.eval()
    try:
        out = dict(on_eval(done, target))
    finally:
        set_rng_state(saved)
        target.train(was_training)
        model.train()
    rec: dict[str, float] = {"step": done}
    for k, v in out.items():
        rec[k if k.startswith("eval/") else f"eval/{k}"] = float(v)
    return rec
