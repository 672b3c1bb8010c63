"""MetaWorldSuite: Meta-World MT10 / MT50 (``*-v3`` tasks), registered as ``"metaworld"``
(options, task lists and measured expert numbers: docs/suites.md, "Meta-World")."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

from .. import Suite, register_suite
from .env import ACTION_DIM, STATE_MODES, MetaWorldEnv
from .expert import make_expert
from .instructions import instructions_for
from .pool import SimPool
from .render import configure_gl

__all__ = ["MetaWorldSuite", "MetaWorldConfig", "BENCHMARKS", "HELDOUT_TASKS", "DEFAULT_MAX_EPISODE_STEPS"]

DEFAULT_MAX_EPISODE_STEPS = 200
BENCHMARKS = ("MT10", "MT50")

#: near-transfer variants of MT10 tasks, never in MT10 (docs/suites.md, "Meta-World: held-out tasks")
HELDOUT_TASKS: tuple[str, ...] = (
    "door-close-v3",
    "button-press-v3",
    "push-wall-v3",
    "reach-wall-v3",
    "pick-place-wall-v3",
)


def _benchmarks() -> dict[str, tuple[str, ...]]:
    configure_gl()
    from metaworld.env_dict import MT10_V3, MT50_V3

    return {"MT10": tuple(MT10_V3), "MT50": tuple(MT50_V3)}


@dataclass
class MetaWorldConfig:
    """Options of :class:`MetaWorldSuite`; ``validate()`` raises ValueError naming a bad one."""

    benchmark: str = "MT10"
    image_size: int = 64
    cameras: tuple[str, ...] = ("corner2",)
    max_episode_steps: int = DEFAULT_MAX_EPISODE_STEPS
    state_mode: str = "proprio"
    reuse_envs: bool = True
    displace_at_step: int | None = None
    displace_scale: float = 0.05
    heldout_tasks: tuple[str, ...] = field(default_factory=lambda: HELDOUT_TASKS)

    def validate(self) -> None:
        if self.benchmark not in BENCHMARKS:
            raise ValueError(f"metaworld: unknown benchmark {self.benchmark!r}; known: {list(BENCHMARKS)}")
        if self.state_mode not in STATE_MODES:
            raise ValueError(f"metaworld: unknown state_mode {self.state_mode!r}; known: {list(STATE_MODES)}")
        if self.image_size < 8:
            raise ValueError(f"metaworld: image_size must be >= 8, got {self.image_size}")
        if not self.cameras:
            raise ValueError("metaworld: cameras must name at least one camera")
        if self.max_episode_steps < 1:
            raise ValueError(f"metaworld: max_episode_steps must be >= 1, got {self.max_episode_steps}")
        if self.displace_at_step is not None and self.displace_at_step < 1:
            raise ValueError(f"metaworld: displace_at_step must be >= 1 or None, got {self.displace_at_step}")


@register_suite("metaworld")
class MetaWorldSuite(Suite):
    """Meta-World MT10 / MT50. Closed envs hand their simulator back to a per-task pool that the
    next ``make_env`` of the task reuses (``reuse_envs=False``: no reuse); ``close()`` frees it."""

    name = "metaworld"
    action_dim = ACTION_DIM

    def __init__(
        self,
        benchmark: str = "MT10",
        image_size: int = 64,
        cameras: Sequence[str] | str = ("corner2",),
        max_episode_steps: int = DEFAULT_MAX_EPISODE_STEPS,
        state_mode: str = "proprio",
        reuse_envs: bool = True,
        displace_at_step: int | None = None,
        displace_scale: float = 0.05,
    ) -> None:
        cams = (cameras,) if isinstance(cameras, str) else tuple(cameras)
        self.cfg = MetaWorldConfig(
            benchmark=str(benchmark),
            image_size=int(image_size),
            cameras=cams,
            max_episode_steps=int(max_episode_steps),
            state_mode=str(state_mode),
            reuse_envs=bool(reuse_envs),
            displace_at_step=None if displace_at_step is None else int(displace_at_step),
            displace_scale=float(displace_scale),
        )
        self.cfg.validate()
        self.benchmark = self.cfg.benchmark
        self.image_size = self.cfg.image_size
        self.cameras = self.cfg.cameras
        self.num_views = len(cams)
        self.max_episode_steps = self.cfg.max_episode_steps
        self.state_mode = self.cfg.state_mode
        self.state_dim = STATE_MODES[self.state_mode]
        self._tasks = _benchmarks()[self.benchmark]
        self._pool = SimPool(self.image_size, self.cameras)

    @property
    def make_kwargs(self) -> dict[str, Any]:
        """The ``make_suite("metaworld", **kwargs)`` arguments that rebuild this suite (env workers)."""
        c = self.cfg
        return {
            "benchmark": c.benchmark,
            "image_size": c.image_size,
            "cameras": list(c.cameras),
            "max_episode_steps": c.max_episode_steps,
            "state_mode": c.state_mode,
            "reuse_envs": c.reuse_envs,
            "displace_at_step": c.displace_at_step,
            "displace_scale": c.displace_scale,
        }

    # ------------------------------------------------------------------ tasks / language
    def task_names(self) -> list[str]:
        return list(self._tasks)

    def heldout_tasks(self) -> list[str]:
        """Tasks held out from training for task generalization (:data:`HELDOUT_TASKS`)."""
        return list(self.cfg.heldout_tasks)

    def train_tasks(self) -> list[str]:
        """``task_names()`` without the held-out tasks (all of MT10; 45 tasks of MT50)."""
        held = set(self.cfg.heldout_tasks)
        return [t for t in self._tasks if t not in held]

    def check_task(self, task: str) -> None:
        names = self.task_names() + [t for t in self.heldout_tasks() if t not in self._tasks]
        if task not in names:
            raise ValueError(
                f"suite {self.name!r} ({self.benchmark}): unknown task {task!r}; known tasks: {names}"
            )

    def instructions(self, task: str, split: str = "train") -> list[str]:
        self.check_task(task)
        self.check_split(split)
        return instructions_for(task, split)

    # ------------------------------------------------------------------ envs
    def make_env(self, task: str, seed: int | None = None, split: str = "train") -> MetaWorldEnv:
        self.check_task(task)
        instr = self.instructions(task, split)
        core = self._pool.acquire(task)
        return MetaWorldEnv(
            core,
            image_size=self.image_size,
            max_episode_steps=self.max_episode_steps,
            state_mode=self.state_mode,
            instructions=instr,
            seed=seed,
            release=self._pool.release if self.cfg.reuse_envs else None,
            displace_at_step=self.cfg.displace_at_step,
            displace_scale=self.cfg.displace_scale,
        )

    def close(self) -> None:
        """Free the pooled simulators / GL renderers."""
        self._pool.close()

    def action_bounds(self) -> tuple[np.ndarray, np.ndarray]:
        return np.full(ACTION_DIM, -1.0, np.float32), np.full(ACTION_DIM, 1.0, np.float32)

    def expert(self, task: str, noise: float = 0.0, seed: int | None = None) -> Callable[[dict, Any], np.ndarray]:
        """Meta-World's scripted policy for ``task`` (:func:`~.expert.make_expert`)."""
        self.check_task(task)
        return make_expert(task, noise=noise, seed=seed)
