"""reach2d_detour: reach2d with an obstacle that makes averaging two demonstrated modes fatal.

Each episode is a reach2d layout (three colored targets, a point agent, an instruction naming one
color) plus a gray disc obstacle of radius ``OBSTACLE_RADIUS`` centered on the midpoint of the
straight segment from the agent's start to the instructed target. Touching the obstacle ends the
episode as a failure (``terminated``, ``info["collision"] = True``).

The scripted expert is **bimodal by construction**: per episode it flips a fair coin (from its own
seeded RNG, independent of everything visible) and passes the obstacle on the left or on the right
through a via-point ``VIA_OFFSET`` beside the obstacle center, then goes straight to the target.
Both modes are demonstrated from the same distribution of start states, so the side is not
predictable from the observation; the mean of the two modes is the straight path, which runs
through the obstacle. A policy that averages the modes therefore collides, one that commits to
either mode succeeds.

Mode bookkeeping (``info["mode"]``, final value of the episode):

- ``"left"`` / ``"right"``: the agent passed the obstacle's cross-line (the line through the
  obstacle center perpendicular to start->target) on that side of the start->target line
  (left = counter-clockwise of the direction of travel);
- ``"collision"``: the agent touched the obstacle (the averaged path);
- ``"none"``: the episode ended before the agent passed the cross-line.

``info["lateral"]`` is the signed lateral offset (units of the unit square) at the crossing.

Tasks, observation, action and success are as in :mod:`eval.sim.suites.reach2d`; episodes last at
most 60 steps by default (the expert needs at most ~20).
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from . import register_suite
from .reach2d import ACTION_DIM, COLORS, MAX_DELTA, MIN_TARGET_SEPARATION, Reach2DEnv, Reach2DSuite

__all__ = ["Reach2DDetourSuite", "Reach2DDetourEnv", "OBSTACLE_RADIUS", "VIA_OFFSET", "MODES"]

OBSTACLE_RADIUS = 0.09
VIA_OFFSET = 0.19  # via-point distance from the obstacle center (> radius + agent half size + margin)
MIN_START_DISTANCE = 0.40  # room for the obstacle between start and target
EDGE_MARGIN = 0.04  # via-points stay this far inside the unit square
OBSTACLE_GRAY = 128
MODES = ("left", "right", "collision", "none")


class Reach2DDetourEnv(Reach2DEnv):
    """A reach2d task with an obstacle on the straight path (see the module docstring)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.start = np.zeros(2, np.float64)
        self.obstacle = np.zeros(2, np.float64)
        self.mode = "none"
        self.lateral = float("nan")
        self.collided = False

    # ------------------------------------------------------------------ geometry
    @property
    def direction(self) -> np.ndarray:
        """Unit vector start -> instructed target, (2,)."""
        d = self.goal - self.start
        return d / max(np.linalg.norm(d), 1e-9)

    @property
    def left_normal(self) -> np.ndarray:
        """Unit normal to the left of the direction of travel, (2,)."""
        d = self.direction
        return np.array([-d[1], d[0]])

    def via_point(self, side: int) -> np.ndarray:
        """Via-point beside the obstacle; side +1 = left, -1 = right. (2,) float64."""
        return self.obstacle + side * VIA_OFFSET * self.left_normal

    def _sample_layout(self) -> None:
        rng = self.np_random
        for _ in range(10_000):
            t = rng.uniform(0.1, 0.9, size=(len(COLORS), 2))
            d = np.linalg.norm(t[:, None] - t[None], axis=-1) + np.eye(len(COLORS))
            if d.min() < MIN_TARGET_SEPARATION:
                continue
            a = rng.uniform(0.05, 0.95, size=2)
            if np.linalg.norm(t - a, axis=-1).min() < MIN_START_DISTANCE:
                continue
            self.targets, self.agent, self.start = t, a, a.copy()
            self.obstacle = 0.5 * (a + self.goal)
            vias = np.stack([self.via_point(+1), self.via_point(-1)])
            if (vias < EDGE_MARGIN).any() or (vias > 1 - EDGE_MARGIN).any():
                continue
            return
        raise RuntimeError("reach2d_detour: could not place a layout")  # pragma: no cover

    def render_image(self) -> np.ndarray:
        img = super().render_image()
        ox, oy = self.obstacle
        mask = (self._px - ox) ** 2 + (self._py - oy) ** 2 <= OBSTACLE_RADIUS**2
        # keep the agent visible on top of the obstacle (it can touch it on the last frame)
        agent = (img == 255).all(axis=0)
        img[:, mask & ~agent] = OBSTACLE_GRAY
        return img

    # ------------------------------------------------------------------ bookkeeping
    def _info(self) -> dict[str, Any]:
        info = super()._info()
        info.update(mode=self.mode, lateral=self.lateral, collision=self.collided)
        if self.collided:
            info["is_success"] = False
        return info

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        self.mode, self.lateral, self.collided = "none", float("nan"), False
        return super().reset(seed=seed, options=options)

    def step(self, action):
        prev = self.agent.copy()
        a = np.asarray(action, dtype=np.float64).reshape(-1)
        if a.shape == (ACTION_DIM,) and np.isfinite(a).all():
            # collision along the swept segment prev -> new (so a fast step cannot tunnel through)
            new = np.clip(prev + np.clip(a, -MAX_DELTA, MAX_DELTA), 0.0, 1.0)
            seg = new - prev
            u = np.clip(np.dot(self.obstacle - prev, seg) / max(np.dot(seg, seg), 1e-12), 0.0, 1.0)
            if np.linalg.norm(prev + u * seg - self.obstacle) <= OBSTACLE_RADIUS:
                self.collided = True
            # crossing of the obstacle's cross-line: projection onto the direction passes the center
            d = self.direction
            p0, p1 = np.dot(prev - self.obstacle, d), np.dot(new - self.obstacle, d)
            if self.mode == "none" and p0 < 0.0 <= p1:
                w = -p0 / max(p1 - p0, 1e-12)
                lat = float(np.dot(prev + w * seg - self.obstacle, self.left_normal))
                self.lateral = lat
                self.mode = "left" if lat > 0 else "right"
        obs, reward, terminated, truncated, info = super().step(action)
        if self.collided:
            self.mode = "collision"
            info = self._info()
            return obs, 0.0, True, False, info
        return obs, reward, terminated, truncated, info


@register_suite("reach2d_detour")
class Reach2DDetourSuite(Reach2DSuite):
    """reach2d tasks with an obstacle and a bimodal (left/right detour) expert."""

    name = "reach2d_detour"
    #: env attributes an evaluation records per episode: the mode followed (``MODES``), the signed
    #: lateral offset at the obstacle's cross-line, and whether it hit the obstacle
    episode_attrs = ("mode", "lateral", "collided")

    def __init__(self, image_size: int = 64, max_episode_steps: int = 60, left_share: float = 0.5) -> None:
        super().__init__(image_size=image_size, max_episode_steps=max_episode_steps)
        if not 0.0 <= left_share <= 1.0:
            raise ValueError(f"reach2d_detour: left_share must be in [0, 1], got {left_share}")
        self.left_share = float(left_share)

    def make_env(self, task: str, seed: int | None = None, split: str = "train") -> Reach2DDetourEnv:
        self.check_task(task)
        return Reach2DDetourEnv(
            self._color(task),
            image_size=self.image_size,
            max_episode_steps=self.max_episode_steps,
            instructions=self.instructions(task, split),
            seed=seed,
        )

    def expert(self, task: str, noise: float = 0.0, seed: int | None = None) -> Callable[[dict, Any], np.ndarray]:
        """Bimodal detour expert: side ~ Bernoulli(left_share) per expert instance (seeded), go to that
        side's via-point, then straight to the target; full speed, N(0, noise^2) per component.
        The chosen side is exposed as ``fn.side`` (+1 left, -1 right) for tests and studies."""
        self.check_task(task)
        rng = np.random.default_rng(seed)
        side = 1 if rng.random() < self.left_share else -1
        state = {"via_done": False}

        def toward(pos: np.ndarray, goal: np.ndarray) -> np.ndarray:
            d = goal - pos
            m = np.abs(d).max()
            return d * min(1.0, MAX_DELTA / m) if m > 0 else np.zeros(2)

        def act(obs: dict, env: Any) -> np.ndarray:
            e = env.unwrapped
            pos = np.asarray(obs["state"], np.float64)[:2]
            via = e.via_point(side)
            if not state["via_done"] and (np.linalg.norm(via - pos) <= MAX_DELTA or np.dot(pos - e.obstacle, e.direction) >= 0):
                state["via_done"] = True
            a = toward(pos, e.goal if state["via_done"] else via)
            if noise > 0:
                a = a + rng.normal(0.0, noise, size=2)
            return np.clip(a, -MAX_DELTA, MAX_DELTA).astype(np.float32)

        act.side = side  # type: ignore[attr-defined]
        return act
