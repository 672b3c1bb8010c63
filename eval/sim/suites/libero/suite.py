"""LiberoSuite: a LIBERO benchmark as a registered suite ("libero"): task list, instructions
(train / held-out paraphrases), horizons, and the pool of worker processes its envs borrow."""

from __future__ import annotations

import os
import weakref
from typing import Any, Callable, Sequence

import numpy as np

from .. import Suite, register_suite
from .env import ACTION_DIM, STATE_DIM, LiberoEnv
from .worker_client import LiberoWorker, resolve_python

__all__ = ["LiberoSuite", "heldout_paraphrases", "default_max_episode_steps", "MAX_EPISODE_STEPS"]

# LIBERO / openpi evaluation horizons (policy steps after the settle steps)
MAX_EPISODE_STEPS = {
    "libero_spatial": 220, "libero_object": 280, "libero_goal": 300, "libero_10": 520, "libero_90": 400,
}
FALLBACK_MAX_EPISODE_STEPS = 520

_HELDOUT_TEMPLATES = ("please {i}", "{i}, please", "can you {i}?", "your task is to {i}", "robot, {i}")
_VERB_SYNONYMS = (("pick up ", "grab "), ("put ", "place "), ("place ", "set "), ("turn on ", "switch on "),
                  ("turn off ", "switch off "), ("open ", "pull open "), ("close ", "shut "), ("push ", "slide "))


def default_max_episode_steps(benchmark: str) -> int:
    """LIBERO horizon of ``benchmark`` (LIBERO-PRO variants: their base suite's)."""
    for base in sorted(MAX_EPISODE_STEPS, key=len, reverse=True):
        if benchmark == base or benchmark.startswith(base + "_"):
            return MAX_EPISODE_STEPS[base]
    return FALLBACK_MAX_EPISODE_STEPS


def heldout_paraphrases(instruction: str) -> list[str]:
    """Templated paraphrases of a LIBERO instruction ("please ...", "can you ...?", ...) plus one
    with the leading verb swapped for a synonym (e.g. "pick up" -> "grab") when one applies.
    Never contains ``instruction`` itself."""
    base = instruction.strip().rstrip(".")
    out = [t.format(i=base) for t in _HELDOUT_TEMPLATES]
    for old, new in _VERB_SYNONYMS:
        if base.startswith(old):
            out.append(new + base[len(old):])
            break
    return [s for s in dict.fromkeys(out) if s != instruction]


@register_suite("libero")
class LiberoSuite(Suite):
    """A LIBERO benchmark as a suite (contract: the package docstring and docs/suites.md, "LIBERO").

    benchmark:          LIBERO suite name ("libero_spatial", "libero_object", "libero_goal",
                        "libero_10", "libero_90", LIBERO-PRO variants ...).
    image_size:         S of the observation images.
    cameras:            subset/order of ("agentview", "wrist").
    max_episode_steps:  None: the LIBERO horizon of the benchmark (:data:`MAX_EPISODE_STEPS`).
    python:             LIBERO interpreter (default ``.venv-libero/bin/python``, see :func:`resolve_python`).
    render_size:        render at this size (a multiple of image_size) and area-downsample
                        (e.g. 256 like the LIBERO datasets); None: render at image_size.
    settle_steps:       no-op steps after restoring the init state (LIBERO eval practice: 10).
    fast_render:        turn off MuJoCo reflections (about 2x faster on CPU; images differ slightly).
    max_idle_workers:   workers kept for reuse after ``env.close()`` (0: each env's worker exits).
    timeout_s:          per-command timeout (the worker is stopped when it is exceeded).
    """

    name = "libero"
    action_dim = ACTION_DIM
    state_dim = STATE_DIM

    def __init__(
        self,
        benchmark: str = "libero_spatial",
        image_size: int = 64,
        cameras: Sequence[str] = ("agentview", "wrist"),
        max_episode_steps: int | None = None,
        python: str | os.PathLike | None = None,
        render_size: int | None = None,
        settle_steps: int = 10,
        fast_render: bool = False,
        max_idle_workers: int = 1,
        timeout_s: float = 300.0,
    ) -> None:
        cameras = tuple(cameras)
        if not cameras or any(c not in ("agentview", "wrist") for c in cameras) or len(set(cameras)) != len(cameras):
            raise ValueError(f"libero: cameras must be distinct names from ('agentview', 'wrist'), got {cameras}")
        if int(image_size) < 8:
            raise ValueError(f"libero: image_size must be >= 8, got {image_size}")
        if render_size is not None and (int(render_size) < int(image_size) or int(render_size) % int(image_size)):
            raise ValueError(f"libero: render_size must be a multiple of image_size={image_size}, got {render_size}")
        self.benchmark = str(benchmark)
        self.image_size = int(image_size)
        self.cameras = cameras
        self.num_views = len(cameras)
        self.max_episode_steps = int(max_episode_steps or default_max_episode_steps(self.benchmark))
        self.render_size = None if render_size is None else int(render_size)
        self.settle_steps = int(settle_steps)
        self.fast_render = bool(fast_render)
        self.max_idle_workers = int(max_idle_workers)
        self.timeout_s = float(timeout_s)
        self.python = resolve_python(python)
        self._idle: list[LiberoWorker] = []
        self._envs: weakref.WeakSet[LiberoEnv] = weakref.WeakSet()
        worker = LiberoWorker(self.python, timeout_s=self.timeout_s)
        try:
            self._tasks: list[str] = list(worker.call("list_tasks", suite=self.benchmark))
            self._instructions: dict[str, str] = dict(worker.call("instructions", suite=self.benchmark))
        except BaseException:
            worker.close()
            raise
        self.versions = worker.versions
        self._release_worker(worker, healthy=True)

    # ------------------------------------------------------------------ worker pool
    def _acquire_worker(self) -> LiberoWorker:
        while self._idle:
            w = self._idle.pop()
            if w.alive():
                return w
            w.close()
        return LiberoWorker(self.python, timeout_s=self.timeout_s)

    def _release_worker(self, worker: LiberoWorker, healthy: bool) -> None:
        if healthy and worker.alive() and len(self._idle) < self.max_idle_workers:
            self._idle.append(worker)
        else:
            worker.close()

    def worker_pids(self) -> list[int]:
        """Process ids of this suite's live workers (idle ones and those of open envs)."""
        pids = [w.pid for w in self._idle if w.alive()]
        return pids + [e.worker_pid for e in list(self._envs) if e.worker_pid is not None]

    def close(self) -> None:
        """Close every env of this suite and stop all workers."""
        for env in list(self._envs):
            env.close()
        while self._idle:
            self._idle.pop().close()

    def __enter__(self) -> "LiberoSuite":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # ------------------------------------------------------------------ Suite API
    def task_names(self) -> list[str]:
        return list(self._tasks)

    def instructions(self, task: str, split: str = "train") -> list[str]:
        self.check_task(task)
        self.check_split(split)
        base = self._instructions[task]
        return [base] if split == "train" else heldout_paraphrases(base)

    def make_env(self, task: str, seed: int | None = None, split: str = "train") -> LiberoEnv:
        self.check_task(task)
        env = LiberoEnv(self, task, seed, self.instructions(task, split))
        self._envs.add(env)
        return env

    def action_bounds(self) -> tuple[np.ndarray, np.ndarray]:
        return np.full(ACTION_DIM, -1.0, np.float32), np.full(ACTION_DIM, 1.0, np.float32)

    def expert(self, task: str, noise: float = 0.0, seed: int | None = None) -> Callable[[dict, Any], np.ndarray]:
        raise NotImplementedError(
            "libero: there is no scripted expert; LIBERO is an evaluation target for policies trained on "
            "the LIBERO demonstration datasets (e.g. their RLDS/LeRobot conversions), so collect_demos / "
            "ExpertPolicy cannot be used with it"
        )
