"""LiberoEnv: one LIBERO task as a gymnasium.Env, a proxy to a :class:`LiberoWorker` borrowed from
its suite's pool (contract: the package docstring and docs/suites.md, section "LIBERO")."""

from __future__ import annotations

import string
from typing import TYPE_CHECKING, Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from ... import libero_worker
from .worker_client import LiberoWorker

if TYPE_CHECKING:
    from .suite import LiberoSuite

__all__ = ["LiberoEnv", "STATE_DIM", "ACTION_DIM"]

STATE_DIM = libero_worker.STATE_DIM
ACTION_DIM = libero_worker.ACTION_DIM


class LiberoEnv(gym.Env):
    """One LIBERO task in a worker process (see the package docstring). ``render()`` returns the
    last observation's first camera, uint8 (S, S, 3)."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 20}

    def __init__(self, suite: "LiberoSuite", task: str, seed: int | None, instructions: list[str]) -> None:
        self.suite, self.task = suite, task
        self.instruction_choices = list(instructions)
        self.instruction = self.instruction_choices[0]
        self.max_episode_steps = suite.max_episode_steps
        self.render_mode = "rgb_array"
        self._init_seed = 0 if seed is None else int(seed)
        self._seeded = False
        s, v = suite.image_size, suite.num_views
        img_shape = (3, s, s) if v == 1 else (v, 3, s, s)
        self.observation_space = spaces.Dict(
            {
                "image": spaces.Box(0, 255, img_shape, np.uint8),
                "state": spaces.Box(-np.inf, np.inf, (STATE_DIM,), np.float32),
                "instruction": spaces.Text(max_length=512, min_length=1, charset=string.printable),
            }
        )
        self.action_space = spaces.Box(-1.0, 1.0, (ACTION_DIM,), np.float32)
        self._worker: LiberoWorker | None = suite._acquire_worker()
        try:
            made = self._worker.call(
                "make_env",
                suite=suite.benchmark,
                task=task,
                image_size=s,
                cameras=list(suite.cameras),
                init_state_index=self._init_seed,
                render_size=suite.render_size,
                settle_steps=suite.settle_steps,
                fast_render=suite.fast_render,
            )
        except BaseException:
            suite._release_worker(self._worker, healthy=False)
            self._worker = None
            raise
        self.n_init_states = int(made["n_init_states"])
        self.init_state_index = self._init_seed % self.n_init_states
        self._last: dict[str, Any] | None = None
        self._steps = 0

    def _need_worker(self) -> LiberoWorker:
        if self._worker is None:
            raise RuntimeError(f"LiberoEnv({self.task!r}) is closed")
        return self._worker

    def _obs(self, raw: dict[str, Any]) -> dict[str, Any]:
        img = raw["image"]
        image = img[0] if self.suite.num_views == 1 else img
        self._last = {"image": image, "state": raw["state"], "instruction": self.instruction}
        return dict(self._last)

    def _info(self, success: bool) -> dict[str, Any]:
        return {
            "is_success": bool(success), "task": self.task, "step": self._steps,
            "init_state_index": self.init_state_index,
        }

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        worker = self._need_worker()
        if seed is None and not self._seeded:
            seed = self._init_seed
        super().reset(seed=seed)
        if seed is not None:
            index, worker_seed = int(seed), int(seed)
        else:  # continue: next init state, fixtures from this env's RNG stream
            index, worker_seed = self.init_state_index + 1, int(self.np_random.integers(2**31))
        if options and options.get("init_state_index") is not None:
            index = int(options["init_state_index"])
        self.init_state_index = index % self.n_init_states
        self._seeded = True
        self.instruction = self.instruction_choices[int(self.np_random.integers(len(self.instruction_choices)))]
        if options and options.get("instruction"):
            self.instruction = str(options["instruction"])
        raw = worker.call("reset", init_state_index=self.init_state_index, seed=worker_seed)
        self._steps = 0
        return self._obs(raw), self._info(False)

    def step(self, action):
        worker = self._need_worker()
        if self._last is None:
            raise RuntimeError(f"LiberoEnv({self.task!r}): call reset() before step()")
        a = np.asarray(action, dtype=np.float32).reshape(-1)
        if a.shape != (ACTION_DIM,):
            raise ValueError(f"libero: action must have shape ({ACTION_DIM},), got {np.shape(action)}")
        if not np.isfinite(a).all():
            raise ValueError(f"libero: non-finite action {a.tolist()}")
        out = worker.call("step", action=np.clip(a, -1.0, 1.0))
        self._steps += 1
        success = bool(out["success"])
        truncated = (not success) and self._steps >= self.max_episode_steps
        return self._obs(out["obs"]), float(success), success, truncated, self._info(success)

    def render(self) -> np.ndarray:
        if self._last is None:
            raise RuntimeError(f"LiberoEnv({self.task!r}): call reset() before render()")
        img = self._last["image"]
        return np.ascontiguousarray((img if img.ndim == 3 else img[0]).transpose(1, 2, 0))

    def render_camera(self, camera: str = "agentview", size: int | None = None) -> np.ndarray:
        """A fresh upright frame of ``camera`` ("agentview" / "wrist") at ``size`` px, uint8 (H, W, 3)."""
        return self._need_worker().call("render", camera=camera, size=size)

    @property
    def worker_pid(self) -> int | None:
        return None if self._worker is None else self._worker.pid

    def close(self) -> None:
        if self._worker is not None:
            worker, self._worker = self._worker, None
            self.suite._release_worker(worker, healthy=True)
