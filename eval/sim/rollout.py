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
:func:`eval.sim.demos.episode_seed` (independent of the task order), so results are reproducible
and the per-episode jobs are independent (the seam for parallel env workers: ``_run_jobs``).
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
import traceback
import warnings
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from vla_ebt.config_io import atomic_write_text

from .demos import episode_seed
from .suites import Suite, make_suite

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

Z95 = 1.959963984540054


def wilson_interval(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion (95 % by default); n = 0 -> (0, 1)."""
    if n <= 0:
        return 0.0, 1.0
    if not 0 <= successes <= n:
        raise ValueError(f"wilson_interval: successes must be in [0, {n}], got {successes}")
    p = successes / n
    z2 = z * z
    denom = 1.0 + z2 / n
    center = (p + z2 / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / denom
    lo = 0.0 if successes == 0 else max(0.0, center - half)
    hi = 1.0 if successes == n else min(1.0, center + half)
    return lo, hi


def _mean(xs: Sequence[float]) -> float:
    xs = [x for x in xs if x is not None and math.isfinite(x)]
    return float(sum(xs) / len(xs)) if xs else float("nan")


def _json_safe(x: Any) -> Any:
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_safe(v) for v in x]
    return x


def _nan(x: Any) -> float:
    return float("nan") if x is None else float(x)


# --------------------------------------------------------------------------------------------
# results
# --------------------------------------------------------------------------------------------


@dataclass
class EpisodeSpec:
    """One evaluation job."""

    task: str
    index: int
    seed: int


@dataclass
class EpisodeResult:
    task: str
    index: int
    seed: int
    instruction: str
    success: bool
    length: int
    chunk_latency_ms: list[float] = field(default_factory=list)
    energy: list[float] = field(default_factory=list)
    steps: list[float] = field(default_factory=list)
    error: str | None = None
    video: str | None = None
    wall_s: float = 0.0

    @property
    def num_chunks(self) -> int:
        return len(self.chunk_latency_ms)


@dataclass
class TaskResult:
    task: str
    episodes: int
    successes: int
    success_rate: float
    ci_low: float
    ci_high: float
    mean_length: float
    mean_chunk_latency_ms: float
    mean_energy: float
    mean_steps: float
    errors: int

    @classmethod
    def from_episodes(cls, task: str, eps: Sequence[EpisodeResult]) -> "TaskResult":
        n = len(eps)
        k = sum(bool(e.success) for e in eps)
        lo, hi = wilson_interval(k, n)
        return cls(
            task=task,
            episodes=n,
            successes=k,
            success_rate=k / n if n else float("nan"),
            ci_low=lo,
            ci_high=hi,
            mean_length=_mean([e.length for e in eps]),
            mean_chunk_latency_ms=_mean([x for e in eps for x in e.chunk_latency_ms]),
            mean_energy=_mean([x for e in eps for x in e.energy]),
            mean_steps=_mean([x for e in eps for x in e.steps]),
            errors=sum(e.error is not None for e in eps),
        )


@dataclass
class EvalReport:
    """Per-task and overall results. ``success_rate`` is the mean over tasks of the per-task
    rates; ``overall`` pools all episodes (its CI is the pooled Wilson interval)."""

    suite: str
    policy: str
    seed: int
    split: str
    tasks: dict[str, TaskResult]
    episodes: list[EpisodeResult]
    wall_s: float = 0.0

    @property
    def success_rate(self) -> float:
        return _mean([t.success_rate for t in self.tasks.values()])

    @property
    def overall(self) -> TaskResult:
        return TaskResult.from_episodes("overall", self.episodes)

    def to_dict(self) -> dict[str, Any]:
        return _json_safe(
            {
                "suite": self.suite,
                "policy": self.policy,
                "seed": self.seed,
                "split": self.split,
                "wall_s": self.wall_s,
                "success_rate": self.success_rate,
                "overall": dataclasses.asdict(self.overall),
                "tasks": {k: dataclasses.asdict(v) for k, v in self.tasks.items()},
                "episodes": [dataclasses.asdict(e) for e in self.episodes],
            }
        )

    def to_json(self, path: str | Path) -> Path:
        """Write the report as JSON atomically (temp file in the same folder + rename)."""
        path = Path(path)
        atomic_write_text(path, json.dumps(self.to_dict(), indent=2))
        return path

    def to_markdown(self, max_errors: int = 5) -> str:
        def f(x: float, fmt: str) -> str:
            return "–" if x is None or not math.isfinite(x) else format(x, fmt)

        lines = [
            f"**{self.suite}** · policy `{self.policy}` · seed {self.seed} · instructions `{self.split}` "
            f"· success {f(self.success_rate, '.3f')} (mean over tasks) · {self.wall_s:.1f} s",
            "",
            "| task | episodes | successes | success rate | 95% CI | mean length | chunk latency (ms) | energy | errors |",
            "|---|---:|---:|---:|---|---:|---:|---:|---:|",
        ]
        for t in [*self.tasks.values(), self.overall]:
            name = f"**{t.task}**" if t.task == "overall" else t.task
            lines.append(
                f"| {name} | {t.episodes} | {t.successes} | {f(t.success_rate, '.3f')} | "
                f"[{t.ci_low:.3f}, {t.ci_high:.3f}] | {f(t.mean_length, '.1f')} | "
                f"{f(t.mean_chunk_latency_ms, '.2f')} | {f(t.mean_energy, '.4g')} | {t.errors} |"
            )
        errs = [e for e in self.episodes if e.error]
        if errs:
            lines += ["", f"{len(errs)} episode(s) ended with an error:"]
            lines += [f"- {e.task} #{e.index} (seed {e.seed}): {e.error}" for e in errs[:max_errors]]
            if len(errs) > max_errors:
                lines.append(f"- ... {len(errs) - max_errors} more")
        return "\n".join(lines)

    def print_table(self, file: Any = None) -> None:
        print(self.to_markdown(), file=file)

    def __str__(self) -> str:
        return self.to_markdown()


def load_report(path: str | Path) -> EvalReport:
    """Read a report written by :meth:`EvalReport.to_json`."""
    d = json.loads(Path(path).read_text())

    def tr(x: dict[str, Any]) -> TaskResult:
        return TaskResult(**{k: _nan(v) if isinstance(v, float) or v is None else v for k, v in x.items()})

    return EvalReport(
        suite=d["suite"],
        policy=d["policy"],
        seed=d["seed"],
        split=d["split"],
        tasks={k: tr(v) for k, v in d["tasks"].items()},
        episodes=[EpisodeResult(**e) for e in d["episodes"]],
        wall_s=d.get("wall_s", 0.0),
    )


# --------------------------------------------------------------------------------------------
# baseline adapters (same interface as VLAPolicy for the loop)
# --------------------------------------------------------------------------------------------


@dataclass
class ChunkInfo:
    """Minimal ``last_output`` of the adapters (one single-step "chunk" per control step)."""

    latency_ms: float
    energy: torch.Tensor | None = None
    steps: torch.Tensor | None = None


class _AdapterBase:
    """Each select_action is one planned chunk of length 1 with a measured latency."""

    def __init__(self) -> None:
        self.last_output: ChunkInfo | None = None

    def reset(self) -> None:
        self.last_output = None

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
    """The suite's scripted expert (privileged: reads the env) behind the policy interface."""

    def __init__(self, suite: Suite, noise: float = 0.0) -> None:
        super().__init__()
        self.suite, self.noise = suite, float(noise)
        self._fn: Callable | None = None
        self._env: Any = None

    def begin_episode(self, env: Any, task: str, seed: int, suite: Suite) -> None:
        self._env = env
        self._fn = self.suite.expert(task, noise=self.noise, seed=seed)

    def _act(self, obs: dict[str, Any]) -> np.ndarray:
        if self._fn is None:
            raise RuntimeError("ExpertPolicy: begin_episode() was not called (it needs the env)")
        raw = {"state": obs["state"][0, -1].cpu().numpy(), "instruction": obs["instruction"][0]}
        return self._fn(raw, self._env)


class RandomPolicy(_AdapterBase):
    """Uniform random actions in the suite's action box, seeded per episode."""

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
    """Wrap ``fn(obs_batch) -> (1, D) or (D,)`` array-like as a policy."""

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


class _ObsBuilder:
    """Raw env observations -> B = 1 schema batches, keeping the last To frames/states."""

    def __init__(self, obs_steps: int, image_history: bool, embodiment: int, instruction: str | None) -> None:
        self.obs_steps, self.image_history = obs_steps, image_history
        self.embodiment = torch.tensor([embodiment], dtype=torch.long)
        self.instruction = instruction
        self.images: deque[np.ndarray] = deque(maxlen=obs_steps)
        self.states: deque[np.ndarray] = deque(maxlen=obs_steps)

    def __call__(self, obs: dict[str, Any]) -> dict[str, Any]:
        img = np.asarray(obs["image"])
        img = img[None] if img.ndim == 3 else img  # (V, 3, S, S)
        st = np.asarray(obs["state"], np.float32).reshape(-1)
        if not self.states:  # episode start: pad history with the first step
            for _ in range(self.obs_steps - 1):
                self.images.append(img)
                self.states.append(st)
        self.images.append(img)
        self.states.append(st)
        if self.image_history:
            frames = np.stack(self.images, axis=1)  # (V, To, 3, S, S) -> camera-major
            frames = frames.reshape(-1, *frames.shape[2:])
        else:
            frames = img
        images = torch.from_numpy(np.ascontiguousarray(frames)).float().div_(255.0)[None]
        return {
            "images": images,
            "instruction": [self.instruction or obs["instruction"]],
            "state": torch.from_numpy(np.stack(self.states))[None],
            "embodiment": self.embodiment,
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
    tb = traceback.extract_tb(e.__traceback__)
    where = f" (at {Path(tb[-1].filename).name}:{tb[-1].lineno})" if tb else ""
    return f"{phase}: {type(e).__name__}: {e}{where}"


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
) -> tuple[EpisodeResult, list[np.ndarray]]:
    """One closed-loop episode; never raises for env/policy errors (recorded in ``error``)."""
    t_start = time.perf_counter()
    res = EpisodeResult(task=spec.task, index=spec.index, seed=spec.seed, instruction="", success=False, length=0)
    frames: list[np.ndarray] = []
    env = None
    phase = "make_env"
    try:
        env = suite.make_env(spec.task, seed=spec.seed, split=split)
        phase = "env.reset"
        opts = {"instruction": instruction} if instruction else None
        obs, info = env.reset(seed=spec.seed, options=opts)
        res.instruction = str(obs["instruction"])
        phase = "policy.reset"
        policy.reset()
        hook = getattr(policy, "begin_episode", None)
        if hook is not None:
            hook(env=env, task=spec.task, seed=spec.seed, suite=suite)
        build = _ObsBuilder(obs_steps, image_history, embodiment, instruction)
        if record_frames:
            frames.append(env.render())
        prev_out = getattr(policy, "last_output", None)
        for _ in range(suite.max_episode_steps):
            phase = "policy.select_action"
            act = policy.select_action(build(obs))
            out = getattr(policy, "last_output", None)
            if out is not None and out is not prev_out:
                res.chunk_latency_ms.append(float(getattr(out, "latency_ms", float("nan"))))
                e = _scalar0(getattr(out, "energy", None))
                if e is not None:
                    res.energy.append(e)
                s = _scalar0(getattr(out, "steps", None))
                if s is not None:
                    res.steps.append(s)
            prev_out = out
            if isinstance(act, torch.Tensor):
                act = act.detach().cpu().float().numpy()
            act = np.asarray(act, np.float32).reshape(-1)
            if act.shape[0] < suite.action_dim:
                raise ValueError(f"action has {act.shape[0]} dims, the suite needs {suite.action_dim}")
            act = act[: suite.action_dim]  # dims past the embodiment's own are padding
            if not np.isfinite(act).all():
                raise ValueError(f"non-finite action {act.tolist()}")
            phase = "env.step"
            obs, _, terminated, truncated, info = env.step(act)
            res.length += 1
            if record_frames:
                frames.append(env.render())
            if terminated or truncated:
                break
        res.success = bool(info.get("is_success", False))
    except Exception as e:  # noqa: BLE001 - a failing episode must not end the evaluation
        res.success = False
        res.error = _fmt_error(phase, e)
    finally:
        if env is not None:
            try:
                env.close()
            except Exception:  # noqa: BLE001
                pass
    res.wall_s = time.perf_counter() - t_start
    return res, frames


def _write_video(frames: list[np.ndarray], path: Path, fps: int = 10) -> str:
    import imageio.v2 as imageio

    up = max(1, 128 // max(1, frames[0].shape[0]))
    frames = [np.repeat(np.repeat(f, up, 0), up, 1) for f in frames]
    path.parent.mkdir(parents=True, exist_ok=True)
    imageio.mimsave(path, frames, duration=1000.0 / fps, loop=0)
    return str(path)


def _run_jobs(jobs: Sequence[EpisodeSpec], run_one: Callable[[EpisodeSpec], EpisodeResult], num_workers: int) -> list[EpisodeResult]:
    """Run the episode jobs; the seam for parallel env workers (jobs are independent and seeded)."""
    if num_workers and num_workers > 0:
        warnings.warn("evaluate: parallel env workers are not implemented yet; running serially", stacklevel=3)
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
) -> EvalReport:
    """Closed-loop evaluation (see the module docstring).

    suite:        a Suite or a registered name. tasks None: all of the suite's tasks.
    split:        instruction paraphrases the envs draw from ("train" or "heldout").
    obs_steps:    state/frame history length To; None: ``policy.cfg.obs_steps`` if present, else 1.
    image_history: send the last To frames per camera (camera-major) instead of the current one.
    instruction:  override every episode's instruction (e.g. for language probes).
    video_dir:    write GIFs of the first ``max_videos_per_task`` episodes of each task.
    """
    if isinstance(suite, str):
        suite = make_suite(suite)
    tasks = list(suite.task_names() if tasks is None else tasks)
    for t in tasks:
        suite.check_task(t)
    suite.check_split(split)
    to = _policy_obs_steps(policy) if obs_steps is None else int(obs_steps)
    jobs = [EpisodeSpec(t, i, episode_seed(seed, t, i)) for t in tasks for i in range(episodes_per_task)]
    vdir = Path(video_dir) if video_dir is not None else None

    def run_one(spec: EpisodeSpec) -> EpisodeResult:
        want_video = vdir is not None and spec.index < max_videos_per_task
        res, frames = run_episode(
            policy, suite, spec, split=split, embodiment=embodiment, obs_steps=to,
            image_history=image_history, instruction=instruction, record_frames=want_video,
        )
        if want_video and frames:
            tag = "success" if res.success else "fail"
            try:
                res.video = _write_video(frames, vdir / f"{spec.task}_ep{spec.index:03d}_{tag}.gif")
            except Exception as e:  # noqa: BLE001 - a video must not end the evaluation
                warnings.warn(f"evaluate: could not write video: {e}", stacklevel=2)
        if log is not None:
            status = "ok" if res.success else ("ERROR " + res.error if res.error else "fail")
            log(f"{spec.task} #{spec.index}: {status} in {res.length} steps")
        return res

    was_training = isinstance(policy, torch.nn.Module) and policy.training
    if isinstance(policy, torch.nn.Module):
        policy.eval()
    t0 = time.perf_counter()
    try:
        results = _run_jobs(jobs, run_one, num_workers)
    finally:
        if was_training:
            policy.train()
    per_task = {t: TaskResult.from_episodes(t, [r for r in results if r.task == t]) for t in tasks}
    name = getattr(policy, "name", None) if isinstance(getattr(policy, "name", None), str) else type(policy).__name__
    return EvalReport(
        suite=getattr(suite, "name", type(suite).__name__),
        policy=name,
        seed=seed,
        split=split,
        tasks=per_task,
        episodes=results,
        wall_s=time.perf_counter() - t0,
    )


def evaluate_callable(fn: Callable[[dict[str, Any]], Any], suite: Suite | str, *args: Any, **kwargs: Any) -> EvalReport:
    """``evaluate(CallablePolicy(fn), suite, ...)``: fn maps a B = 1 observation batch to an action."""
    return evaluate(CallablePolicy(fn), suite, *args, **kwargs)
