"""Closed-loop evaluation of a policy on a simulated suite.

``evaluate(policy, suite, EvalConfig(tasks=..., episodes_per_task=..., seed=...))`` runs every
(task, episode) through one loop: ``policy.reset()``, then per control step
``policy.select_action(obs_batch)`` on a B = 1 observation in the schema of :mod:`vla_ebt.schema`
(images float32 (1, V, 3, S, S) in [0, 1], instruction [str], state float32 (1, To, state_dim),
embodiment long (1,)). The policy must satisfy :class:`eval.sim.contracts.RolloutPolicy`.
``EvalConfig.strategy`` other than "sync" runs the asynchronous chunk execution instead: the chunk
broker of :mod:`vla_ebt_client` around ``policy.predict_chunk`` with inference delays simulated in
env steps (docs/realtime.md, "Asynchronous execution").

An env or policy exception ends that episode as a failure (``EpisodeResult.error``); evaluation
goes on. Results are reproducible and independent of the episode order and of ``num_workers``
(env worker processes; :mod:`eval.sim.workers`). Details: docs/evaluation.md.
"""

from __future__ import annotations

import importlib
import math
import time
import warnings
from collections import deque
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from vla_ebt_client import (
    ActionChunkBroker,
    MeasuredDelay,
    ObservationHistory,
    SimulatedDelay,
    action_smoothness,
    strategy_support,
)

from vla_ebt.data.episodes import episode_seed

from .adapters import CallablePolicy, ChunkInfo, ExpertPolicy, RandomPolicy
from .chunk_source import PolicyChunkSource, chunk_policy_problem
from .contracts import InterleavablePolicy, RolloutPolicy, WorkerSideExpert, check_rollout_policy
from .eval_config import EvalConfig
from .report import EpisodeResult, EpisodeSpec, EvalReport, TaskResult, load_report, wilson_interval  # noqa: F401
from .videos import write_video as _write_video
from .suites import Suite, make_suite, suite_make_kwargs
from .workers import (
    EnvOpError,
    EnvSession,
    EnvWorkerPool,
    RemoteEnvHandle,
    RemoteError,
    SuiteInfo,
    WorkerConfig,
    WorkerFailure,
    describe_exception,
    format_error,
)

__all__ = [
    "evaluate",
    "evaluate_callable",
    "EvalConfig",
    "RolloutPolicy",
    "EvalReport",
    "TaskResult",
    "EpisodeResult",
    "EpisodeSpec",
    "ChunkInfo",
    "ExpertPolicy",
    "RandomPolicy",
    "CallablePolicy",
    "wilson_interval",
    "load_report",
]

# --------------------------------------------------------------------------------------------
# the loop
# --------------------------------------------------------------------------------------------


def _policy_obs_steps(policy: Any) -> int:
    cfg = getattr(policy, "cfg", None)
    return int(getattr(cfg, "obs_steps", 1) or 1)


def _torch_observation(obs: dict[str, Any]) -> dict[str, Any]:
    """An :class:`~vla_ebt_client.ObservationHistory` observation (numpy) -> the schema batch
    ``select_action`` takes: images float32 in [0, 1] (from 0..255), state float32, embodiment long."""
    return {
        "images": torch.from_numpy(obs["images"]).float().div_(255.0),
        "instruction": obs["instruction"],
        "state": torch.from_numpy(obs["state"]),
        "embodiment": torch.from_numpy(obs["embodiment"]),
    }


def _scalar0(x: Any) -> float | None:
    if x is None:
        return None
    if isinstance(x, torch.Tensor):
        x = x.detach().reshape(-1)
        return float(x[0]) if x.numel() else None
    if isinstance(x, (list, tuple, np.ndarray)):
        x = np.asarray(x).reshape(-1)
        return float(x[0]) if x.size else None
    return float(x)


def _fmt_error(phase: str, e: BaseException) -> str:
    """``"phase: Type: message (at file.py:LINE)"``; an exception raised inside an env worker is
    described as it was there, so serial and parallel runs report the same string."""
    if isinstance(e, RemoteError):
        return format_error(phase, e.description)
    return format_error(phase, describe_exception(e))


def _env_error(e: BaseException) -> str:
    """The episode error string for an env-side failure (local, remote, or the worker itself)."""
    if isinstance(e, EnvOpError):
        return _fmt_error(e.phase, e.cause)
    if isinstance(e, RemoteError):
        return _fmt_error(e.phase, e)
    if isinstance(e, WorkerFailure):
        return str(e)
    return _fmt_error("env", e)


class _TorchRng:
    """Torch's global RNG state of one episode (CPU, plus the policy's CUDA device if any)."""

    def __init__(self, device: torch.device | None) -> None:
        self.cuda = device if device is not None and device.type == "cuda" else None

    def capture(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        return torch.get_rng_state(), (torch.cuda.get_rng_state(self.cuda) if self.cuda is not None else None)

    def restore(self, state: tuple[torch.Tensor, torch.Tensor | None]) -> None:
        torch.set_rng_state(state[0])
        if self.cuda is not None and state[1] is not None:
            torch.cuda.set_rng_state(state[1], self.cuda)


class _Episode:
    """The policy side of one episode, fed with env replies (serial and parallel runners alike).

    ``advance(reply)`` takes the reply of ``open`` (make_env + reset) or of a ``step`` (see
    :class:`eval.sim.workers.EnvSession`) and returns the next action, float32 (action_dim,), or
    None once the episode is over (``done``; ``res`` then holds the result). Policy errors are
    recorded with the phase they happened in; env errors arrive through ``fail_env``.
    """

    def __init__(
        self,
        policy: Any,
        suite: Any,
        spec: EpisodeSpec,
        *,
        embodiment: int,
        obs_steps: int,
        image_history: bool,
        instruction: str | None,
        record_frames: bool,
        seed_torch: bool = False,
        execution: EvalConfig | None = None,
    ) -> None:
        self.policy, self.suite, self.spec = policy, suite, spec
        self.execution = execution if execution is not None else EvalConfig()
        self.broker: ActionChunkBroker | None = None  # the async strategies' per-episode broker
        self._actions: list[np.ndarray] = []  # executed actions (action_dim,)
        self._switch_steps: list[int] = []  # steps whose action came from a newly arrived chunk
        self._logged = 0  # broker chunk-log entries recorded
        self.max_steps = int(suite.max_episode_steps)
        self.action_dim = int(suite.action_dim)
        self.embodiment, self.obs_steps, self.image_history = embodiment, obs_steps, image_history
        self.instruction, self.record_frames, self.seed_torch = instruction, record_frames, seed_torch
        self.res = EpisodeResult(task=spec.task, index=spec.index, seed=spec.seed, instruction="", success=False,
                                 length=0, base_seed=spec.base_seed)
        self.frames: list[np.ndarray] = []
        self.done = False
        self.policy_state: dict[str, Any] | None = None  # swapped in/out by the parallel runner
        self.rng_state: Any = None
        self.env_handle: Any = None
        self.started = False
        self._history: ObservationHistory | None = None
        self._prev_out: Any = None
        self._t0 = time.perf_counter()

    def open_args(self, split: str, expert: dict[str, Any] | None = None) -> dict[str, Any]:
        """Arguments of EnvSession.open / the worker's "open" command."""
        return {"task": self.spec.task, "seed": int(self.spec.seed), "split": split, "instruction": self.instruction,
                "render": self.record_frames, "expert": expert}

    def advance(self, reply: dict[str, Any], env: Any = None) -> np.ndarray | None:
        phase = "policy.reset"
        try:
            if not self.started:
                self.started = True
                self.res.instruction = str(reply["obs"]["instruction"])
                if self.seed_torch:
                    torch.manual_seed(int(self.spec.seed))
                self.policy.reset()
                hook = getattr(self.policy, "begin_episode", None)
                if hook is not None:
                    hook(env=env, task=self.spec.task, seed=self.spec.seed, suite=self.suite)
                self._history = ObservationHistory(self.obs_steps, self.image_history, self.embodiment, self.instruction)
                self._prev_out = getattr(self.policy, "last_output", None)
                if self.execution.strategy != "sync":
                    self.broker = make_broker(self.policy, self.execution)
            else:
                phase = "env.step"
                self.res.length += 1
            if reply.get("frame") is not None:
                self.frames.append(np.asarray(reply["frame"]))
            if reply.get("terminated") or reply.get("truncated") or self.res.length >= self.max_steps:
                return self._finish(reply.get("info") or {})
            phase = "policy.select_action"
            return self._act(reply["obs"])
        except Exception as e:  # noqa: BLE001 - a failing episode must not end the evaluation
            self.fail(_fmt_error(phase, e))
            return None

    def _record_chunk(self, latency_ms: float, energy: Any, steps: Any) -> None:
        self.res.chunk_latency_ms.append(float(latency_ms))
        e = _scalar0(energy)
        if e is not None:
            self.res.energy.append(e)
        s = _scalar0(steps)
        if s is not None:
            self.res.steps.append(s)

    def _sync_stall(self, out: Any) -> int:
        """Control periods a sync loop waits for a chunk: the simulated delay, or the measured
        latency at the control rate."""
        ex = self.execution
        if ex.delay_mode == "steps":
            return int(ex.delay_steps)
        lat = float(getattr(out, "latency_ms", float("nan")))
        return max(0, math.ceil(lat * 1e-3 * ex.control_hz - 1e-9)) if math.isfinite(lat) else 0

    def _act(self, obs: dict[str, Any]) -> np.ndarray:
        policy = self.policy
        step = len(self._actions)
        if self.broker is not None:
            act = self.broker.act(_torch_observation(self._history(obs)))
            for entry in self.broker.chunk_log[self._logged:]:
                self._record_chunk(entry["infer_ms"] if entry["infer_ms"] is not None else entry["latency_ms"],
                                   entry["energy"], entry["steps"])
            self._logged = len(self.broker.chunk_log)
            switched = self.broker.last_switch
        else:
            act = policy.select_action(_torch_observation(self._history(obs)))
            out = getattr(policy, "last_output", None)
            switched = False
            if out is not None and out is not self._prev_out:
                self._record_chunk(getattr(out, "latency_ms", float("nan")), getattr(out, "energy", None),
                                   getattr(out, "steps", None))
                if step > 0:  # the loop waited for this chunk; the first one starts the episode
                    switched = True
                    self.res.stalls += self._sync_stall(out)
            self._prev_out = out
        if isinstance(act, torch.Tensor):
            act = act.detach().cpu().float().numpy()
        act = np.asarray(act, np.float32).reshape(-1)
        if act.shape[0] < self.action_dim:
            raise ValueError(f"action has {act.shape[0]} dims, the suite needs {self.action_dim}")
        act = act[: self.action_dim]  # dims past the embodiment's own are padding
        if not np.isfinite(act).all():
            raise ValueError(f"non-finite action {act.tolist()}")
        self._actions.append(act)
        if switched:
            self._switch_steps.append(step)
        return act

    def _execution_metrics(self) -> None:
        """Switches, stalls, starved steps and smoothness of the executed actions into ``res``."""
        r = self.res
        if self.broker is not None:
            c = self.broker.counters
            r.stalls, r.starved, r.gate_rejections = int(c["stalls"]), int(c["starved"]), int(c["gate_rejections"])
        if self._actions:
            sm = action_smoothness(np.stack(self._actions), self._switch_steps)
            r.switches = int(sm["switches"])
            r.max_switch_jump, r.mean_switch_jump = sm["max_switch_jump"], sm["mean_switch_jump"]
            r.mean_sq_second_diff = sm["mean_sq_second_diff"]

    def _finish(self, info: dict[str, Any]) -> None:
        self.res.success = bool(info.get("is_success", False))
        self.done = True
        self._execution_metrics()
        self.res.wall_s = time.perf_counter() - self._t0
        return None

    def fail(self, error: str) -> None:
        self.res.success = False
        self.res.error = error
        self.done = True
        self._execution_metrics()
        self.res.wall_s = time.perf_counter() - self._t0

    def fail_env(self, e: BaseException) -> None:
        self.fail(_env_error(e))


def execution_problem(policy: Any, cfg: EvalConfig) -> str | None:
    """Why ``policy`` cannot run ``cfg.strategy`` (None when it can)."""
    if cfg.strategy == "sync":
        return None
    problem = chunk_policy_problem(policy)
    if problem:
        return f"strategy {cfg.strategy!r} needs a chunk policy (predict_chunk, cfg, head): {problem}"
    why = strategy_support(PolicyChunkSource(policy))[cfg.strategy]
    return None if why is None else f"strategy {cfg.strategy!r}: {why}"


def make_broker(policy: Any, cfg: EvalConfig) -> ActionChunkBroker:
    """The per-episode chunk broker of an async strategy: ``policy`` as a local chunk source,
    inference delays simulated in control steps (``delay_mode`` "steps") or taken from the
    measured latency at ``control_hz`` ("wall_clock"); execution defaults from ``policy.cfg``."""
    ex = policy.cfg.execution
    timing = SimulatedDelay(int(cfg.delay_steps)) if cfg.delay_mode == "steps" else MeasuredDelay(cfg.control_hz)
    return ActionChunkBroker(PolicyChunkSource(policy), n_action_steps=ex.n_action_steps,
                             ensemble_decay=ex.ensemble_decay, horizon=policy.cfg.horizon, strategy=cfg.strategy,
                             timing=timing, request_remaining=cfg.request_remaining, on_starve=cfg.on_starve,
                             control_hz=cfg.control_hz)


def _drive_local(ep: _Episode, session: EnvSession, split: str) -> None:
    """Run ``ep`` to the end against an in-process env session."""
    try:
        try:
            reply = session.open(**ep.open_args(split))
        except EnvOpError as e:
            ep.fail_env(e)
            return
        act = ep.advance(reply, env=session.env)
        while act is not None:
            try:
                reply = session.step(act, render=ep.record_frames)
            except EnvOpError as e:
                ep.fail_env(e)
                return
            act = ep.advance(reply)
    finally:
        session.close()


def run_episode(
    policy: Any,
    suite: Suite,
    spec: EpisodeSpec,
    *,
    split: str = "train",
    embodiment: int = 0,
    obs_steps: int = 1,
    image_history: bool = False,
    instruction: str | None = None,
    record_frames: bool = False,
    seed_torch: bool = False,
    execution: EvalConfig | None = None,
) -> tuple[EpisodeResult, list[np.ndarray]]:
    """One closed-loop episode in this process; never raises for env/policy errors (recorded in
    ``error``). frames: ``env.render()`` after reset and after every step when ``record_frames``.
    seed_torch: seed torch's global RNG with the episode seed at the start (evaluate does).
    execution: an EvalConfig whose chunk-execution fields apply (None: sync, no delay)."""
    ep = _Episode(policy, suite, spec, embodiment=embodiment, obs_steps=obs_steps, image_history=image_history,
                  instruction=instruction, record_frames=record_frames, seed_torch=seed_torch, execution=execution)
    _drive_local(ep, EnvSession(suite), split)
    return ep.res, ep.frames


def _has_rollout_state(policy: Any) -> bool:
    return (isinstance(policy, InterleavablePolicy) and callable(policy.rollout_state)
            and callable(policy.load_rollout_state))


def _drive_parallel(
    jobs: Sequence[EpisodeSpec],
    make_episode: Callable[[EpisodeSpec], _Episode],
    on_done: Callable[[_Episode], None],
    pool: EnvWorkerPool,
    policy: Any,
    split: str,
    *,
    step_timeout_s: float,
    reset_timeout_s: float,
) -> list[EpisodeResult]:
    """Keep up to len(pool) episodes in flight (one per worker); event driven: each worker's
    reply is answered with the policy's next action as soon as it arrives."""
    swap = _has_rollout_state(policy)
    max_in_flight = len(pool) if swap else 1
    if not swap and len(pool) > 1:
        warnings.warn(f"evaluate: {type(policy).__name__} has no rollout_state()/load_rollout_state(); its episodes "
                      f"run one at a time (envs still in the {len(pool)} workers)", stacklevel=3)
    rng = _TorchRng(_policy_device(policy))
    expert = policy.worker_expert_args() if isinstance(policy, WorkerSideExpert) else None
    queue = deque(enumerate(jobs))
    running: dict[int, tuple[int, _Episode]] = {}
    results: list[EpisodeResult | None] = [None] * len(jobs)

    def finish(k: int, ep: _Episode) -> None:
        on_done(ep)
        results[k] = ep.res

    while queue or running:
        for w in pool.idle_workers():
            if not queue or len(running) >= max_in_flight:
                break
            k, spec = queue.popleft()
            ep = make_episode(spec)
            ep.env_handle = RemoteEnvHandle(w)
            pool.submit(w, "open", ep.open_args(split, expert), timeout_s=reset_timeout_s)
            running[w] = (k, ep)
        for ev in pool.poll():
            if ev.kind == "ready" or ev.worker not in running:
                continue
            k, ep = running[ev.worker]
            act = None
            if ev.error is not None:
                ep.fail_env(ev.error)
            else:
                ep.env_handle.update(ev.result)
                first = not ep.started
                if swap and not first:
                    policy.load_rollout_state(ep.policy_state)
                if ep.seed_torch and ep.rng_state is not None:
                    rng.restore(ep.rng_state)
                act = ep.advance(ev.result, env=ep.env_handle if first else None)
                if swap:
                    ep.policy_state = policy.rollout_state()
                if ep.seed_torch:
                    ep.rng_state = rng.capture()
            if act is None:
                del running[ev.worker]
                finish(k, ep)  # the worker closes the env when it opens the next one
            else:
                pool.submit(ev.worker, "step", {"action": act, "render": ep.record_frames}, timeout_s=step_timeout_s)
    return results  # type: ignore[return-value]


def _policy_device(policy: Any) -> torch.device | None:
    try:
        dev = getattr(policy, "device", None)
        return dev if isinstance(dev, torch.device) else None
    except Exception:  # noqa: BLE001
        return None


# --------------------------------------------------------------------------------------------
# evaluate
# --------------------------------------------------------------------------------------------


def evaluate(policy: RolloutPolicy, suite: Suite | str, config: EvalConfig | None = None) -> EvalReport:
    """Closed-loop evaluation of ``policy`` on ``suite`` (a Suite or a registered name) as set by
    ``config`` (default ``EvalConfig()``); see the module docstring and :class:`EvalConfig`.
    A policy that is not a :class:`~eval.sim.contracts.RolloutPolicy` raises TypeError naming what it
    lacks; unknown tasks / splits and a worker suite that differs from ``suite`` raise ValueError."""
    cfg = EvalConfig() if config is None else config
    if not isinstance(cfg, EvalConfig):
        raise TypeError(f"evaluate: config must be an EvalConfig, got {type(cfg).__name__} (the keyword "
                        f"arguments of older versions are EvalConfig fields now)")
    check_rollout_policy(policy)
    problem = execution_problem(policy, cfg)
    if problem:
        raise ValueError(f"evaluate: {problem}")
    tasks, split = cfg.tasks, cfg.split
    base_seeds = cfg.base_seeds()
    num_workers = int(cfg.num_workers or 0)
    foreign = cfg.worker_python is not None and num_workers > 0  # the suite may not be importable here
    if not foreign:
        for mod in cfg.import_modules:
            importlib.import_module(mod)
    if isinstance(suite, str):
        suite_name, make_kw = suite, dict(cfg.suite_kwargs or {})
        suite_obj: Any = None if foreign else make_suite(suite, **make_kw)
    else:
        suite_obj = suite
        suite_name = getattr(suite, "name", "") or type(suite).__name__
        make_kw = dict(cfg.suite_kwargs) if cfg.suite_kwargs is not None else suite_make_kwargs(suite)
    if suite_obj is not None:
        for t in suite_obj.task_names() if tasks is None else tasks:
            suite_obj.check_task(t)
        suite_obj.check_split(split)

    pool: EnvWorkerPool | None = None
    if num_workers > 0:
        n_jobs = (len(tasks) if tasks is not None else len(suite_obj.task_names()) if suite_obj is not None
                  else num_workers) * cfg.episodes_per_task * len(base_seeds)
        wcfg = WorkerConfig(suite=suite_name, suite_kwargs=make_kw, import_modules=tuple(cfg.import_modules),
                            python=cfg.worker_python)
        pool = EnvWorkerPool(wcfg, max(1, min(num_workers, n_jobs)))
    try:
        if pool is not None and suite_obj is not None:
            diff = pool.info.compatible_with(SuiteInfo.from_suite(suite_obj))
            if diff:
                raise ValueError(
                    f"evaluate: the env workers' suite {suite_name!r} built with {make_kw} differs from the given "
                    f"suite in {diff}; pass suite_kwargs= with the arguments the suite was made with"
                )
        meta = suite_obj if suite_obj is not None else pool.info  # type: ignore[union-attr]
        task_list = list(meta.task_names() if tasks is None else tasks)
        for t in task_list:
            meta.check_task(t)
        meta.check_split(split)
        report = _evaluate_jobs(policy, meta, task_list, base_seeds, pool, cfg)
    finally:
        if pool is not None:
            pool.close()
    return report


def _evaluate_jobs(
    policy: Any,
    suite: Any,
    tasks: list[str],
    seeds: list[int],
    pool: EnvWorkerPool | None,
    cfg: EvalConfig,
) -> EvalReport:
    to = _policy_obs_steps(policy) if cfg.obs_steps is None else int(cfg.obs_steps)
    jobs = [EpisodeSpec(t, i, episode_seed(s, t, i), base_seed=s) for s in seeds for t in tasks
            for i in range(cfg.episodes_per_task)]
    vdir = Path(cfg.video_dir) if cfg.video_dir is not None else None
    log = cfg.log

    def want_video(spec: EpisodeSpec) -> bool:
        return vdir is not None and spec.index < cfg.max_videos_per_task and spec.base_seed == seeds[0]

    def make_episode(spec: EpisodeSpec) -> _Episode:
        return _Episode(policy, suite, spec, embodiment=cfg.embodiment, obs_steps=to,
                        image_history=cfg.image_history, instruction=cfg.instruction,
                        record_frames=want_video(spec), seed_torch=True, execution=cfg)

    def on_done(ep: _Episode) -> None:
        res, spec = ep.res, ep.spec
        if want_video(spec) and ep.frames:
            tag = "success" if res.success else "fail"
            try:
                res.video = _write_video(ep.frames, vdir / f"{spec.task}_ep{spec.index:03d}_{tag}.{cfg.video_format}")
            except Exception as e:  # noqa: BLE001 - a video must not end the evaluation
                warnings.warn(f"evaluate: could not write video: {e}", stacklevel=2)
        ep.frames = []
        if log is not None:
            status = "ok" if res.success else ("ERROR " + res.error if res.error else "fail")
            seed_txt = f" (seed {spec.base_seed})" if len(seeds) > 1 else ""
            log(f"{spec.task} #{spec.index}{seed_txt}: {status} in {res.length} steps")

    was_training = isinstance(policy, torch.nn.Module) and policy.training
    if isinstance(policy, torch.nn.Module):
        policy.eval()
    dev = _policy_device(policy)
    t0 = time.perf_counter()
    try:
        cuda = [dev.index if dev.index is not None else torch.cuda.current_device()] if dev is not None and dev.type == "cuda" else []
        with torch.random.fork_rng(devices=cuda):
            if pool is None:
                def run_one(spec: EpisodeSpec) -> EpisodeResult:
                    ep = make_episode(spec)
                    _drive_local(ep, EnvSession(suite), cfg.split)
                    on_done(ep)
                    return ep.res

                results = [run_one(j) for j in jobs]
            else:
                results = _drive_parallel(jobs, make_episode, on_done, pool, policy, cfg.split,
                                          step_timeout_s=cfg.step_timeout_s, reset_timeout_s=cfg.reset_timeout_s)
    finally:
        if was_training:
            policy.train()
    per_task = {t: TaskResult.from_episodes(t, [r for r in results if r.task == t]) for t in tasks}
    name = getattr(policy, "name", None) if isinstance(getattr(policy, "name", None), str) else type(policy).__name__
    return EvalReport(
        suite=getattr(suite, "name", type(suite).__name__),
        policy=name,
        seed=seeds[0],
        split=cfg.split,
        tasks=per_task,
        episodes=results,
        wall_s=time.perf_counter() - t0,
        seeds=list(seeds),
        num_workers=len(pool) if pool is not None else 0,
        worker_restarts=pool.restarts if pool is not None else 0,
        execution=cfg.execution(),
    )


def evaluate_callable(fn: Callable[[dict[str, Any]], Any], suite: Suite | str,
                      config: EvalConfig | None = None) -> EvalReport:
    """``evaluate(CallablePolicy(fn), suite, config)``: fn maps a B = 1 observation batch to an action."""
    return evaluate(CallablePolicy(fn), suite, config)
