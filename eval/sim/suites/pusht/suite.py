"""PushTSuite: one task, ``push_t``, registered as ``"pusht"`` (docs/suites.md, "PushT")."""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from .. import Suite, register_suite
from .env import ACTION_DIM, STATE_DIM, TASKS, PushTEnv, instructions_for
from .expert import PushTExpert
from .geometry import WORKSPACE

__all__ = ["PushTSuite"]


@register_suite("pusht")
class PushTSuite(Suite):
    """One task, ``push_t`` (docs/suites.md, "PushT")."""

    name = "pusht"
    action_dim = ACTION_DIM
    state_dim = STATE_DIM
    num_views = 1

    def __init__(self, image_size: int = 64, max_episode_steps: int = 300) -> None:
        self.image_size = int(image_size)
        self.max_episode_steps = int(max_episode_steps)

    def task_names(self) -> list[str]:
        return list(TASKS)

    def instructions(self, task: str, split: str = "train") -> list[str]:
        self.check_task(task)
        self.check_split(split)
        return instructions_for(split)

    def make_env(self, task: str, seed: int | None = None, split: str = "train") -> PushTEnv:
        self.check_task(task)
        return PushTEnv(
            image_size=self.image_size,
            max_episode_steps=self.max_episode_steps,
            instructions=self.instructions(task, split),
            seed=seed,
            task=task,
        )

    def action_bounds(self) -> tuple[np.ndarray, np.ndarray]:
        return np.zeros(ACTION_DIM, np.float32), np.full(ACTION_DIM, WORKSPACE, np.float32)

    def expert(self, task: str, noise: float = 0.0, seed: int | None = None) -> Callable[[dict, Any], np.ndarray]:
        """A fresh :class:`PushTExpert` (stateful; one per episode). ``noise``: std in pixels."""
        self.check_task(task)
        return PushTExpert(noise=noise, seed=seed)
