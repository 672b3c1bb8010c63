"""Closed-loop evaluation of a policy on a simulated suite.

``evaluate(policy, suite, tasks, episodes_per_task, seed)`` runs every (task, episode) through
one loop: ``policy.reset()``, then per control step ``policy.select_action(obs_batch)`` on a
B = 1 observation in the schema of :mod:`vla_ebt.schema`::

    images       float32 (1, V, 3, S, S) in [0, 1]   (V = cameras, or cameras * To with image_history)
    instruction  [str]
    state        float32 (1, To, state_dim)           (history repeats the first step at the start)
    embodiment   long (1,)

Any object with ``reset()``, ``select_action(obs) -> (1, >= D)`` and a ``last_output`` attribute
(``None`` or an object with ``latency_ms`` and optionally ``energy`` / ``steps``) works:
:class:`vla_ebt.policy.VLAPolicy`, or the adapters :class:`ExpertPolicy`, :class:`RandomPolicy`
and :class:`CallablePolicy` (baselines through the exact same loop). A policy may define
``begin_episode(env=..., task=..., seed=..., suite=...)``; it is called after ``reset()``.

A new chunk is counted whenever ``policy.last_output`` changes identity after a
``select_action`` call; its latency / energy / steps are recorded per episode.

An exception in the env or the policy ends that episode as a failure with the reason in
``EpisodeResult.error``; evaluation continues. Episode seeds come from
:func:`vla_ebt.data.episodes.episode_seed` (independent of the task order), and torch's global RNG is
seeded with the episode seed at each episode start (inside a ``fork_rng``, so the caller's stream
is untouched): results are reproducible and independent of the episode order and of parallelism.

Parallel evaluation (``num_workers = N > 0``): N env worker processes
(:mod:`eval.sim.workers`) each build the suite and serve one env at a time; the policy stays in
this process. Up to N episodes are in flight; whenever a worker answers (an observation), the
policy's ``select_action`` runs for that episode and the step is sent back at once, so env
stepping / rendering in the workers overlaps with each other and with policy inference. A policy
with ``rollout_state()`` / ``load_rollout_state(state)`` (VLAPolicy and the adapters here) has its
per-episode execution state swapped around every call; a policy without them is assumed to keep
hidden per-episode state and runs one episode at a time (envs still in workers). The scripted
expert reads privileged env state, so :class:`ExpertPolicy` runs *inside* the worker (the
worker returns the expert's action with every observation). Serial and parallel evaluation run
the same episode code (:class:`_Episode` on the policy side, :class:`eval.sim.workers.EnvSession`
on the env side) and give identical per-episode results for a deterministic policy.

A worker that crashes (the process dies) or hangs (no reply within ``step_timeout_s`` for a
step, ``reset_timeout_s`` for make_env + reset) fails its episode with the reason in
``EpisodeResult.error`` (e.g. ``"env worker crashed (exit code -11) during env.step"``), is
killed and replaced, and evaluation goes on; ``EvalReport.worker_restarts`` counts replacements.
"""

from __future__ import annotations

import importlib
import inspect
import time
import warnings
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from vla_ebt_client import ObservationHistory

from vla_ebt.data.episodes import episode_seed

from .report import EpisodeResult, EpisodeSpec, EvalReport, TaskResult, load_report, wilson_interval  # noqa: F401
from .videos import write_video as _write_video
from .suites import Suite, make_suite
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

@dataclass
class ChunkInfo:
    """Minimal ``last_output`` of the adapters (one single-step "chunk" per control step)."""

    latency_ms: float
    energy: torch.Tensor | None = None
    steps: torch.Tensor | None = None


class _AdapterBase:
    """Each select_action is one planned chunk of length 1 with a measured latency.

    ``rollout_state`` / ``load_rollout_state`` capture / restore the per-episode state (``last_output``
    plus the attributes named in ``_episode_attrs``) so episodes can be interleaved."""

    _episode_attrs: tuple[str, ...] = ()

    def __init__(self) -> None:
        self.last_output: ChunkInfo | None = None

    def reset(self) -> None:
        self.last_output = None

    def rollout_state(self) -> dict[str, Any]:
        return {"last_output": self.last_output, **{k: getattr(self, k) for k in self._episode_attrs}}

    def load_rollout_state(self, state: dict[str, Any]) -> None:
        self.last_output = state["last_output"]
        for k in self._episode_attrs:
            setattr(self, k, state[k])

    def begin_episode(self, env: Any, task: str, seed: int, suite: Suite) -> None:  # noqa: ARG002
        pass

    def _act(self, obs: dict[str, Any]) -> np.ndarray:
        raise NotImplementedError

    def select_action(self, obs: dict[str, Any]) -> torch.Tensor:
        t0 = time.perf_counter()
        a = np.asarray(self._act(obs), np.float32)
        if a.ndim == 1:
            a = a[None]
        self.last_output = ChunkInfo(latency_ms=(time.perf_counter() - t0) * 1e3)
        return torch.from_numpy(a)


class ExpertPolicy(_AdapterBase):
    """The suite's scripted expert (privileged: reads the env) behind the policy interface.

    With env workers the env lives in another process: the evaluator asks the worker to run
    ``suite.expert(task, noise, seed)`` there (``worker_expert_args``) and ``begin_episode``
    receives a :class:`~eval.sim.workers.RemoteEnvHandle` whose ``expert_fn`` returns the action
    the worker computed for the same observation."""

    _episode_attrs = ("_fn", "_env")

    def __init__(self, suite: Suite, noise: float = 0.0) -> None:
        super().__init__()
        self.suite, self.noise = suite, float(noise)
        self._fn: Callable | None = None
        self._env: Any = None

    def worker_expert_args(self) -> dict[str, Any]:
        """What an env worker needs to run this expert next to the env."""
        return {"noise": self.noise}

    def begin_episode(self, env: Any, task: str, seed: int, suite: Suite) -> None:
        self._env = env
        if isinstance(env, RemoteEnvHandle):
            self._fn = env.expert_fn
        else:
            self._fn = self.suite.expert(task, noise=self.noise, seed=seed)

    def _act(self, obs: dict[str, Any]) -> np.ndarray:
        if self._fn is None:
            raise RuntimeError("ExpertPolicy: begin_episode() was not called (it needs the env)")
        raw = {"state": obs["state"][0, -1].cpu().numpy(), "instruction": obs["instruction"][0]}
        return self._fn(raw, self._env)


class RandomPolicy(_AdapterBase):
    """Uniform random actions in the suite's action box, seeded per episode."""

    _episode_attrs = ("_rng",)

    def __init__(self, suite: Suite, seed: int = 0) -> None:
        super().__init__()
        self.low, self.high = suite.action_bounds()
        self.seed = int(seed)
        self._rng = np.random.default_rng(self.seed)

    def begin_episode(self, env: Any, task: str, seed: int, suite: Suite) -> None:
        self._rng = np.random.default_rng([self.seed, seed])

    def _act(self, obs: dict[str, Any]) -> np.ndarray:
        return self._rng.uniform(self.low, self.high).astype(np.float32)


class CallablePolicy(_AdapterBase):
    """Wrap ``fn(obs_batch) -> (1, D) or (D,)`` array-like as a policy.

    With env workers, calls for different episodes interleave: ``fn`` must not keep per-episode
    state (wrap such a policy in a class without ``rollout_state`` to run one episode at a time)."""

    def __init__(self, fn: Callable[[dict[str, Any]], Any], name: str | None = None) -> None:
        super().__init__()
        self.fn = fn
        self.name = name or getattr(fn, "__name__", "callable")

    def _act(self, obs: dict[str, Any]) -> np.ndarray:
        a = self.fn(obs)
        if isinstance(a, torch.Tensor):
            a = a.detach().cpu().float().numpy()
        return np.asarray(a, np.float32)


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
    ) -> None:
        self.policy, self.suite, self.spec = policy, suite, spec
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

    def _act(self, obs: dict[str, Any]) -> np.ndarray:
        policy = self.policy
        act = policy.select_action(_torch_observation(self._history(obs)))
        out = getattr(policy, "last_output", None)
        if out is not None and out is not self._prev_out:
            self.res.chunk_latency_ms.append(float(getattr(out, "latency_ms", float("nan"))))
            e = _scalar0(getattr(out, "energy", None))
            if e is not None:
                self.res.energy.append(e)
            s = _scalar0(getattr(out, "steps", None))
            if s is not None:
                self.res.steps.append(s)
        self._prev_out = out
        if isinstance(act, torch.Tensor):
            act = act.detach().cpu().float().numpy()
        act = np.asarray(act, np.float32).reshape(-1)
        if act.shape[0] < self.action_dim:
            raise ValueError(f"action has {act.shape[0]} dims, the suite needs {self.action_dim}")
        act = act[: self.action_dim]  # dims past the embodiment's own are padding
        if not np.isfinite(act).all():
            raise ValueError(f"non-finite action {act.tolist()}")
        return act

    def _finish(self, info: dict[str, Any]) -> None:
        self.res.success = bool(info.get("is_success", False))
        self.done = True
        self.res.wall_s = time.perf_counter() - self._t0
        return None

    def fail(self, error: str) -> None:
        self.res.success = False
        self.res.error = error
        self.done = True
        self.res.wall_s = time.perf_counter() - self._t0

    def fail_env(self, e: BaseException) -> None:
        self.fail(_env_error(e))


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
) -> tuple[EpisodeResult, list[np.ndarray]]:
    """One closed-loop episode in this process; never raises for env/policy errors (recorded in
    ``error``). frames: ``env.render()`` after reset and after every step when ``record_frames``.
    seed_torch: seed torch's global RNG with the episode seed at the start (evaluate does)."""
    ep = _Episode(policy, suite, spec, embodiment=embodiment, obs_steps=obs_steps, image_history=image_history,
                  instruction=instruction, record_frames=record_frames, seed_torch=seed_torch)
    _drive_local(ep, EnvSession(suite), split)
    return ep.res, ep.frames


def _has_rollout_state(policy: Any) -> bool:
    return callable(getattr(policy, "rollout_state", None)) and callable(getattr(policy, "load_rollout_state", None))


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
    expert_fn = getattr(policy, "worker_expert_args", None)
    expert = expert_fn() if callable(expert_fn) else None
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
# videos
# --------------------------------------------------------------------------------------------


def _plain_value(v: Any) -> bool:
    if v is None or isinstance(v, (bool, int, float, str)):
        return True
    if isinstance(v, (list, tuple)):
        return all(_plain_value(x) for x in v)
    if isinstance(v, dict):
        return all(isinstance(k, str) and _plain_value(x) for k, x in v.items())
    return False


def _suite_make_kwargs(suite: Any) -> dict[str, Any]:
    """Best guess of the ``make_suite`` kwargs that rebuild ``suite`` in a worker: its
    ``make_kwargs`` attribute if present, else the constructor's parameters that the suite keeps
    as same-named plain attributes (the worker's suite is then checked against this one)."""
    kw = getattr(suite, "make_kwargs", None)
    if isinstance(kw, dict):
        return dict(kw)
    out: dict[str, Any] = {}
    try:
        params = inspect.signature(type(suite).__init__).parameters
    except (TypeError, ValueError):
        return out
    for name, p in params.items():
        if name == "self" or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        if hasattr(suite, name) and _plain_value(getattr(suite, name)):
            v = getattr(suite, name)
            out[name] = list(v) if isinstance(v, tuple) else v
    return out


def _run_jobs(jobs: Sequence[EpisodeSpec], run_one: Callable[[EpisodeSpec], EpisodeResult], num_workers: int) -> list[EpisodeResult]:
    """Run episode jobs serially in this process (``evaluate`` routes ``num_workers > 0`` to the
    env worker pool instead; kept for callers that pass their own ``run_one``)."""
    return [run_one(j) for j in jobs]


def evaluate(
    policy: Any,
    suite: Suite | str,
    tasks: Sequence[str] | None = None,
    episodes_per_task: int = 10,
    seed: int = 0,
    num_workers: int = 0,
    video_dir: str | Path | None = None,
    *,
    split: str = "train",
    embodiment: int = 0,
    obs_steps: int | None = None,
    image_history: bool = False,
    instruction: str | None = None,
    max_videos_per_task: int = 2,
    log: Callable[[str], None] | None = None,
    seeds: Sequence[int] | None = None,
    suite_kwargs: dict[str, Any] | None = None,
    import_modules: Sequence[str] = (),
    worker_python: str | None = None,
    step_timeout_s: float = 30.0,
    reset_timeout_s: float = 120.0,
    video_format: str = "gif",
) -> EvalReport:
    """Closed-loop evaluation (see the module docstring).

    suite:        a Suite or a registered name (built with ``suite_kwargs``). tasks None: all tasks.
    seeds:        base seeds; each runs ``episodes_per_task`` per task (None: ``[seed]``).
    num_workers:  0: episodes run serially in this process; N > 0: N env worker processes.
    split:        instruction paraphrases the envs draw from ("train" or "heldout").
    obs_steps:    state/frame history length To; None: ``policy.cfg.obs_steps`` if present, else 1.
    image_history: send the last To frames per camera (camera-major) instead of the current one.
    instruction:  override every episode's instruction (e.g. for language probes).
    video_dir:    write videos of the first ``max_videos_per_task`` episodes of each task (first
                  seed only) as ``{task}_ep{index:03d}_{success|fail}.{video_format}`` ("gif" or "mp4").

    Env workers: the workers build ``make_suite(name, **suite_kwargs)`` after importing
    ``import_modules``; for a Suite object without ``suite_kwargs`` the kwargs are inferred from
    its attributes and the workers' suite must match it (task names, dims, image size, horizon).
    ``worker_python``: the workers' interpreter (a suite living in another virtualenv; with a
    suite name, the suite is then never built in this process). ``step_timeout_s`` bounds each env
    step / render, ``reset_timeout_s`` each make_env + reset; a worker past it is killed.
    """
    base_seeds = [int(seed)] if seeds is None else [int(s) for s in seeds]
    if not base_seeds:
        raise ValueError("evaluate: seeds must not be empty")
    if video_format not in ("gif", "mp4"):
        raise ValueError(f"evaluate: video_format must be 'gif' or 'mp4', got {video_format!r}")
    num_workers = int(num_workers or 0)
    foreign = worker_python is not None and num_workers > 0  # the suite may not be importable here
    if not foreign:
        for mod in import_modules:
            importlib.import_module(mod)
    if isinstance(suite, str):
        suite_name, make_kw = suite, dict(suite_kwargs or {})
        suite_obj: Any = None if foreign else make_suite(suite, **make_kw)
    else:
        suite_obj = suite
        suite_name = getattr(suite, "name", "") or type(suite).__name__
        make_kw = dict(suite_kwargs) if suite_kwargs is not None else _suite_make_kwargs(suite)
    if suite_obj is not None:
        for t in suite_obj.task_names() if tasks is None else tasks:
            suite_obj.check_task(t)
        suite_obj.check_split(split)

    pool: EnvWorkerPool | None = None
    if num_workers > 0:
        n_jobs = (len(tasks) if tasks is not None else len(suite_obj.task_names()) if suite_obj is not None
                  else num_workers) * episodes_per_task * len(base_seeds)
        cfg = WorkerConfig(suite=suite_name, suite_kwargs=make_kw, import_modules=tuple(import_modules),
                           python=worker_python)
        pool = EnvWorkerPool(cfg, max(1, min(num_workers, n_jobs)))
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
        report = _evaluate_jobs(
            policy, meta, task_list, episodes_per_task, base_seeds, pool, video_dir,
            split=split, embodiment=embodiment, obs_steps=obs_steps, image_history=image_history,
            instruction=instruction, max_videos_per_task=max_videos_per_task, log=log,
            step_timeout_s=step_timeout_s, reset_timeout_s=reset_timeout_s, video_format=video_format,
        )
    finally:
        if pool is not None:
            pool.close()
    return report


def _evaluate_jobs(
    policy: Any,
    suite: Any,
    tasks: list[str],
    episodes_per_task: int,
    seeds: list[int],
    pool: EnvWorkerPool | None,
    video_dir: str | Path | None,
    *,
    split: str,
    embodiment: int,
    obs_steps: int | None,
    image_history: bool,
    instruction: str | None,
    max_videos_per_task: int,
    log: Callable[[str], None] | None,
    step_timeout_s: float,
    reset_timeout_s: float,
    video_format: str,
) -> EvalReport:
    to = _policy_obs_steps(policy) if obs_steps is None else int(obs_steps)
    jobs = [EpisodeSpec(t, i, episode_seed(s, t, i), base_seed=s) for s in seeds for t in tasks
            for i in range(episodes_per_task)]
    vdir = Path(video_dir) if video_dir is not None else None

    def want_video(spec: EpisodeSpec) -> bool:
        return vdir is not None and spec.index < max_videos_per_task and spec.base_seed == seeds[0]

    def make_episode(spec: EpisodeSpec) -> _Episode:
        return _Episode(policy, suite, spec, embodiment=embodiment, obs_steps=to, image_history=image_history,
                        instruction=instruction, record_frames=want_video(spec), seed_torch=True)

    def on_done(ep: _Episode) -> None:
        res, spec = ep.res, ep.spec
        if want_video(spec) and ep.frames:
            tag = "success" if res.success else "fail"
            try:
                res.video = _write_video(ep.frames, vdir / f"{spec.task}_ep{spec.index:03d}_{tag}.{video_format}")
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
                    _drive_local(ep, EnvSession(suite), split)
                    on_done(ep)
                    return ep.res

                results = _run_jobs(jobs, run_one, 0)
            else:
                results = _drive_parallel(jobs, make_episode, on_done, pool, policy, split,
                                          step_timeout_s=step_timeout_s, reset_timeout_s=reset_timeout_s)
    finally:
        if was_training:
            policy.train()
    per_task = {t: TaskResult.from_episodes(t, [r for r in results if r.task == t]) for t in tasks}
    name = getattr(policy, "name", None) if isinstance(getattr(policy, "name", None), str) else type(policy).__name__
    return EvalReport(
        suite=getattr(suite, "name", type(suite).__name__),
        policy=name,
        seed=seeds[0],
        split=split,
        tasks=per_task,
        episodes=results,
        wall_s=time.perf_counter() - t0,
        seeds=list(seeds),
        num_workers=len(pool) if pool is not None else 0,
        worker_restarts=pool.restarts if pool is not None else 0,
    )


def evaluate_callable(fn: Callable[[dict[str, Any]], Any], suite: Suite | str, *args: Any, **kwargs: Any) -> EvalReport:
    """``evaluate(CallablePolicy(fn), suite, ...)``: fn maps a B = 1 observation batch to an action."""
    return evaluate(CallablePolicy(fn), suite, *args, **kwargs)
