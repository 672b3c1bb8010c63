"""reach2d: a language-conditioned 2-D reaching suite, rendered with numpy only.

World: the unit square [0, 1]^2 (x right, y up). Each episode places three targets (red, green,
blue discs of radius ``TARGET_RADIUS``) at random positions in [0.1, 0.9]^2, pairwise at least
``MIN_TARGET_SEPARATION`` apart, and a point agent (drawn as a white square) in [0.05, 0.95]^2 at
least ``MIN_START_DISTANCE`` from every target. The instruction names one color; the task is to
bring the agent within ``SUCCESS_RADIUS`` of that target (distractor targets do nothing).

==============  ==================================================================================
observation     ``{"image": uint8 (3, S, S), "state": float32 (2,), "instruction": str}``;
                ``state`` = agent position (x, y) in [0, 1]^2 (STATE_DIM = 2). Image row 0 is
                the top (y = 1); pixel (r, c) covers x = (c + .5) / S, y = 1 - (r + .5) / S.
action          float32 (2,) position delta (dx, dy), each component clipped to
                [-MAX_DELTA, MAX_DELTA] = [-0.05, 0.05]; the new position is clipped to [0, 1]^2.
termination     ``terminated`` on success (``info["is_success"] = True``); ``truncated`` after
                ``max_episode_steps`` (default 60) steps. Reward: 1.0 on success, else 0.0.
info            ``is_success``, ``distance`` (to the instructed target), ``task``, ``step``.
==============  ==================================================================================

Determinism: ``make_env(task, seed)`` + ``reset()`` (or ``reset(seed=s)``) reproduces the same
layout and instruction; later ``reset()`` calls continue the env's RNG stream.
"""

from __future__ import annotations

import string
from typing import Any, Callable

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from ..contracts import Displacement
from . import Suite, register_suite

__all__ = ["Reach2DSuite", "Reach2DEnv", "COLORS", "TASKS", "STATE_DIM", "ACTION_DIM", "MAX_DELTA"]

COLORS: dict[str, tuple[int, int, int]] = {"red": (230, 40, 40), "green": (40, 200, 60), "blue": (50, 90, 240)}
TASKS = tuple(f"reach_{c}" for c in COLORS)
STATE_DIM = 2
ACTION_DIM = 2
MAX_DELTA = 0.05
SUCCESS_RADIUS = 0.06
TARGET_RADIUS = 0.05
AGENT_HALF_SIZE = 0.03
MIN_TARGET_SEPARATION = 0.25
MIN_START_DISTANCE = 0.25
BACKGROUND = 30

_TRAIN_TEMPLATES = (
    "move to the {c} dot",
    "go to the {c} target",
    "reach the {c} circle",
    "navigate to the {c} dot",
    "touch the {c} disc",
)
_HELDOUT_TEMPLATES = (
    "head over to the {c} spot",
    "get to the {c} marker",
)
_CHARSET = string.ascii_letters + string.digits + " .,:;'-!?"


def _instructions(color: str, split: str) -> list[str]:
    templates = _TRAIN_TEMPLATES if split == "train" else _HELDOUT_TEMPLATES
    return [t.format(c=color) for t in templates]


class Reach2DEnv(gym.Env):
    """One reach2d task (see module docstring). ``render()`` returns an (S, S, 3) uint8 frame."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 10}

    def __init__(
        self,
        color: str,
        image_size: int = 64,
        max_episode_steps: int = 60,
        instructions: list[str] | None = None,
        seed: int | None = None,
        render_mode: str | None = "rgb_array",
    ) -> None:
        if color not in COLORS:
            raise ValueError(f"unknown color {color!r}; known: {list(COLORS)}")
        if image_size < 8:
            raise ValueError(f"image_size must be >= 8, got {image_size}")
        self.color = color
        self.target_index = list(COLORS).index(color)
        self.task = f"reach_{color}"
        self.image_size = int(image_size)
        self.max_episode_steps = int(max_episode_steps)
        self.instruction_choices = list(instructions or _instructions(color, "train"))
        self.render_mode = render_mode
        self._init_seed = seed
        self._seeded = False
        self.observation_space = spaces.Dict(
            {
                "image": spaces.Box(0, 255, (3, self.image_size, self.image_size), np.uint8),
                "state": spaces.Box(0.0, 1.0, (STATE_DIM,), np.float32),
                "instruction": spaces.Text(max_length=256, min_length=1, charset=_CHARSET),
            }
        )
        self.action_space = spaces.Box(-MAX_DELTA, MAX_DELTA, (ACTION_DIM,), np.float32)
        # pixel-center coordinates in world units, shared by every frame
        c = (np.arange(self.image_size, dtype=np.float32) + 0.5) / self.image_size
        self._px = c[None, :]  # x of column
        self._py = 1.0 - c[:, None]  # y of row (row 0 is the top)
        self.targets = np.zeros((len(COLORS), 2), np.float64)
        self.agent = np.zeros(2, np.float64)
        self.instruction = self.instruction_choices[0]
        self._steps = 0

    # ------------------------------------------------------------------ layout / rendering
    def _sample_layout(self) -> None:
        rng = self.np_random
        for _ in range(10_000):
            t = rng.uniform(0.1, 0.9, size=(len(COLORS), 2))
            d = np.linalg.norm(t[:, None] - t[None], axis=-1) + np.eye(len(COLORS))
            if d.min() >= MIN_TARGET_SEPARATION:
                break
        else:  # pragma: no cover - practically unreachable
            raise RuntimeError("reach2d: could not place targets")
        for _ in range(10_000):
            a = rng.uniform(0.05, 0.95, size=2)
            if np.linalg.norm(t - a, axis=-1).min() >= MIN_START_DISTANCE:
                break
        else:  # pragma: no cover
            raise RuntimeError("reach2d: could not place the agent")
        self.targets, self.agent = t, a

    def render_image(self) -> np.ndarray:
        """The observation image, uint8 (3, S, S)."""
        s = self.image_size
        img = np.full((3, s, s), BACKGROUND, np.uint8)
        r2 = TARGET_RADIUS**2
        for (name, rgb), (tx, ty) in zip(COLORS.items(), self.targets):
            mask = (self._px - tx) ** 2 + (self._py - ty) ** 2 <= r2
            img[:, mask] = np.asarray(rgb, np.uint8)[:, None]
        ax, ay = self.agent
        h = max(AGENT_HALF_SIZE, 0.5 / s)  # at least one pixel
        cols = np.abs(self._px[0] - ax) <= h
        rows = np.abs(self._py[:, 0] - ay) <= h
        img[:, rows[:, None] & cols[None, :]] = 255
        return img

    def render(self) -> np.ndarray:
        return np.ascontiguousarray(self.render_image().transpose(1, 2, 0))

    def _obs(self) -> dict[str, Any]:
        return {
            "image": self.render_image(),
            "state": self.agent.astype(np.float32),
            "instruction": self.instruction,
        }

    @property
    def goal(self) -> np.ndarray:
        """Position of the instructed target, (2,) float64 (privileged; for experts)."""
        return self.targets[self.target_index]

    def _info(self) -> dict[str, Any]:
        dist = float(np.linalg.norm(self.agent - self.goal))
        return {"is_success": dist <= SUCCESS_RADIUS, "distance": dist, "task": self.task, "step": self._steps}

    def displace_object(self, rng: np.random.Generator, scale: float = 0.3) -> Displacement:
        """Perturbation hook (recovery / shift studies): move the instructed target by a random
        offset of length ``scale`` (kept in [0.1, 0.9]^2). Returns its position (2,) before and after."""
        before = self.goal.copy()
        ang = rng.uniform(0.0, 2 * np.pi)
        new = np.clip(self.goal + scale * np.array([np.cos(ang), np.sin(ang)]), 0.1, 0.9)
        self.targets[self.target_index] = new
        return Displacement(before=before, after=new.copy())

    # ------------------------------------------------------------------ gym API
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        if seed is None and not self._seeded:
            seed = self._init_seed
        super().reset(seed=seed)
        self._seeded = True
        self._sample_layout()
        k = int(self.np_random.integers(len(self.instruction_choices)))
        self.instruction = self.instruction_choices[k]
        if options and options.get("instruction"):
            self.instruction = str(options["instruction"])
        self._steps = 0
        return self._obs(), self._info()

    def step(self, action):
        a = np.asarray(action, dtype=np.float64).reshape(-1)
        if a.shape != (ACTION_DIM,):
            raise ValueError(f"reach2d: action must have shape ({ACTION_DIM},), got {np.shape(action)}")
        if not np.isfinite(a).all():
            raise ValueError(f"reach2d: non-finite action {a.tolist()}")
        a = np.clip(a, -MAX_DELTA, MAX_DELTA)
        self.agent = np.clip(self.agent + a, 0.0, 1.0)
        self._steps += 1
        info = self._info()
        terminated = bool(info["is_success"])
        truncated = (not terminated) and self._steps >= self.max_episode_steps
        return self._obs(), float(terminated), terminated, truncated, info


@register_suite("reach2d")
class Reach2DSuite(Suite):
    """Three tasks (reach_red / reach_green / reach_blue); see the module docstring."""

    name = "reach2d"
    action_dim = ACTION_DIM
    state_dim = STATE_DIM
    num_views = 1

    def __init__(self, image_size: int = 64, max_episode_steps: int = 60) -> None:
        self.image_size = int(image_size)
        self.max_episode_steps = int(max_episode_steps)

    def task_names(self) -> list[str]:
        return list(TASKS)

    @staticmethod
    def _color(task: str) -> str:
        return task.removeprefix("reach_")

    def instructions(self, task: str, split: str = "train") -> list[str]:
        self.check_task(task)
        self.check_split(split)
        return _instructions(self._color(task), split)

    def make_env(self, task: str, seed: int | None = None, split: str = "train") -> Reach2DEnv:
        self.check_task(task)
        return Reach2DEnv(
            self._color(task),
            image_size=self.image_size,
            max_episode_steps=self.max_episode_steps,
            instructions=self.instructions(task, split),
            seed=seed,
        )

    def action_bounds(self) -> tuple[np.ndarray, np.ndarray]:
        return np.full(ACTION_DIM, -MAX_DELTA, np.float32), np.full(ACTION_DIM, MAX_DELTA, np.float32)

    def expert(self, task: str, noise: float = 0.0, seed: int | None = None) -> Callable[[dict, Any], np.ndarray]:
        """Straight line to the instructed target at full speed (the larger component is MAX_DELTA,
        never overshooting), plus N(0, noise^2) per component, clipped to the action box."""
        self.check_task(task)
        rng = np.random.default_rng(seed)

        def act(obs: dict, env: Any) -> np.ndarray:
            e = env.unwrapped
            pos = np.asarray(obs["state"], np.float64)[:2]
            d = e.goal - pos
            m = np.abs(d).max()
            a = d * min(1.0, MAX_DELTA / m) if m > 0 else np.zeros(2)
            if noise > 0:
                a = a + rng.normal(0.0, noise, size=2)
            return np.clip(a, -MAX_DELTA, MAX_DELTA).astype(np.float32)

        return act
