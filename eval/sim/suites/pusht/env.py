"""PushTEnv: the ``push_t`` task on ``gym_pusht.envs.PushTEnv`` (world, observation, action and
termination contract: docs/suites.md, "PushT")."""

from __future__ import annotations

import os
import string
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from ...contracts import Displacement
from .geometry import AGENT_RADIUS, TEE_OUTLINE, WORKSPACE, dist_to_tee, rot

__all__ = ["PushTEnv", "TASKS", "STATE_DIM", "ACTION_DIM", "instructions_for"]

TASKS = ("push_t",)
STATE_DIM = 2
ACTION_DIM = 2

_TRAIN_INSTRUCTIONS = (
    "push the T-shaped block onto the target outline",
    "push the T into the green target area",
    "slide the T block so it covers the goal shape",
    "move the gray T onto the green T",
    "align the T-shaped block with the target",
)
_HELDOUT_INSTRUCTIONS = (
    "nudge the tee until it sits exactly on its outline",
    "get the T piece to line up with the marked goal region",
)
_CHARSET = string.ascii_letters + string.digits + " .,:;'-!?"


def instructions_for(split: str) -> list[str]:
    """The ``push_t`` paraphrases of ``split`` ("train"; anything else: the held-out ones)."""
    return list(_TRAIN_INSTRUCTIONS if split == "train" else _HELDOUT_INSTRUCTIONS)


def _import_gym_pusht() -> Any:
    """Import ``gym_pusht.envs`` headless (dummy SDL video driver, no pygame banner)."""
    os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
    os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import gym_pusht.envs as envs

    return envs


class PushTEnv(gym.Env):
    """The ``push_t`` task (docs/suites.md, "PushT"). ``render()`` returns an (S, S, 3) uint8 frame."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 10}

    def __init__(
        self,
        image_size: int = 64,
        max_episode_steps: int = 300,
        instructions: list[str] | None = None,
        seed: int | None = None,
        task: str = "push_t",
        render_mode: str | None = "rgb_array",
    ) -> None:
        if image_size < 8:
            raise ValueError(f"pusht: image_size must be >= 8, got {image_size}")
        if max_episode_steps < 1:
            raise ValueError(f"pusht: max_episode_steps must be >= 1, got {max_episode_steps}")
        envs = _import_gym_pusht()
        self.task = task
        self.image_size = int(image_size)
        self.max_episode_steps = int(max_episode_steps)
        self.instruction_choices = list(instructions or instructions_for("train"))
        self.render_mode = render_mode
        self.sim = envs.PushTEnv(
            obs_type="pixels_agent_pos",
            render_mode="rgb_array",
            observation_width=self.image_size,
            observation_height=self.image_size,
        )
        self._init_seed = seed
        self._seeded = False
        s = self.image_size
        self.observation_space = spaces.Dict(
            {
                "image": spaces.Box(0, 255, (3, s, s), np.uint8),
                "state": spaces.Box(0.0, WORKSPACE, (STATE_DIM,), np.float32),
                "instruction": spaces.Text(max_length=256, min_length=1, charset=_CHARSET),
            }
        )
        self.action_space = spaces.Box(0.0, WORKSPACE, (ACTION_DIM,), np.float32)
        self.instruction = self.instruction_choices[0]
        self._frame = np.zeros((s, s, 3), np.uint8)
        self._coverage = 0.0
        self._steps = 0

    # ------------------------------------------------------------------ privileged state
    @property
    def steps(self) -> int:
        """Control steps taken in the current episode."""
        return self._steps

    @property
    def agent_pos(self) -> np.ndarray:
        """(2,) float64 agent position."""
        return np.array(self.sim.agent.position, np.float64)

    @property
    def agent_vel(self) -> np.ndarray:
        """(2,) float64 agent velocity (pixels / s)."""
        return np.array(self.sim.agent.velocity, np.float64)

    @property
    def block_pose(self) -> np.ndarray:
        """(3,) float64 (x, y, angle) of the block's body origin: the midpoint of the bar's outer
        long edge, body-frame (0, 0) of ``TEE_RECTS``."""
        b = self.sim.block
        return np.array([b.position[0], b.position[1], b.angle], np.float64)

    @property
    def goal_pose(self) -> np.ndarray:
        """(3,) float64 (x, y, angle) of the goal pose of the block's body origin."""
        return np.asarray(self.sim.goal_pose, np.float64).copy()

    @property
    def block_dynamics(self) -> tuple[float, float, np.ndarray]:
        """(mass, moment of inertia about the centre of gravity, body-frame cog (2,))."""
        b = self.sim.block
        return float(b.mass), float(b.moment), np.array(b.center_of_gravity, np.float64)

    @property
    def coverage(self) -> float:
        """Fraction of the goal outline covered by the block (as of the last reset/step)."""
        return self._coverage

    # ------------------------------------------------------------------ observations
    def _obs(self, sim_obs: dict[str, Any]) -> dict[str, Any]:
        self._frame = np.ascontiguousarray(sim_obs["pixels"], dtype=np.uint8)
        return {
            "image": np.ascontiguousarray(self._frame.transpose(2, 0, 1)),
            "state": np.asarray(sim_obs["agent_pos"], np.float32).reshape(STATE_DIM),
            "instruction": self.instruction,
        }

    def _info(self, success: bool) -> dict[str, Any]:
        return {
            "is_success": bool(success),
            "coverage": self._coverage,
            "block_pose": self.block_pose,
            "goal_pose": self.goal_pose,
            "agent_pos": self.agent_pos,
            "task": self.task,
            "step": self._steps,
        }

    def render(self) -> np.ndarray:
        """The current observation frame, (S, S, 3) uint8."""
        return self._frame.copy()

    # ------------------------------------------------------------------ gym API
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        """Options: ``instruction`` (override), ``reset_to_state`` ([agent x, y, block x, y,
        angle], passed to ``gym-pusht``)."""
        if seed is None and not self._seeded:
            seed = self._init_seed
        super().reset(seed=seed)
        self._seeded = True
        sim_seed = int(self.np_random.integers(2**31 - 1))
        k = int(self.np_random.integers(len(self.instruction_choices)))
        self.instruction = self.instruction_choices[k]
        opts = dict(options or {})
        if opts.get("instruction"):
            self.instruction = str(opts["instruction"])
        sim_opts = {"reset_to_state": opts["reset_to_state"]} if opts.get("reset_to_state") is not None else None
        sim_obs, _ = self.sim.reset(seed=sim_seed, options=sim_opts)
        self._coverage = float(self.sim._get_coverage())
        self._steps = 0
        return self._obs(sim_obs), self._info(self._coverage > self.sim.success_threshold)

    def step(self, action):
        a = np.asarray(action, dtype=np.float64).reshape(-1)
        if a.shape != (ACTION_DIM,):
            raise ValueError(f"pusht: action must have shape ({ACTION_DIM},), got {np.shape(action)}")
        if not np.isfinite(a).all():
            raise ValueError(f"pusht: non-finite action {a.tolist()}")
        a = np.clip(a, 0.0, WORKSPACE)
        sim_obs, reward, _, _, sim_info = self.sim.step(a)
        self._coverage = float(sim_info["coverage"])
        self._steps += 1
        info = self._info(bool(sim_info["is_success"]))
        terminated = info["is_success"]
        truncated = (not terminated) and self._steps >= self.max_episode_steps
        return self._obs(sim_obs), float(reward), terminated, truncated, info

    def close(self) -> None:
        self.sim.close()

    # ------------------------------------------------------------------ perturbation
    def displace_object(self, rng: np.random.Generator, scale: float = 40.0) -> Displacement:
        """The suite-independent perturbation hook (:mod:`eval.sim.perturb`): :meth:`displace_block`;
        returns the block pose (x, y, angle) before and after."""
        before = self.block_pose
        self.displace_block(rng, scale=scale)
        return Displacement(before=before, after=self.block_pose)

    def displace_block(
        self, rng: np.random.Generator, scale: float = 40.0, angle_scale: float | None = None, max_tries: int = 100
    ) -> dict[str, Any]:
        """Move the T mid-episode: its body origin by N(0, scale^2) pixels per axis and its angle
        by N(0, angle_scale^2) radians (default ``scale / 100``), resampled (up to ``max_tries``,
        else RuntimeError) until the whole T lies in [20, 492]^2 (inside the walls) and clear of
        the agent. Returns the new observation (the next ``step`` continues from it; the step
        counter is unchanged)."""
        angle_scale = scale / 100.0 if angle_scale is None else float(angle_scale)
        x, y, th = self.block_pose
        agent = self.agent_pos
        for _ in range(max_tries):
            pos = np.array([x, y]) + rng.normal(0.0, scale, 2)
            ang = th + rng.normal(0.0, angle_scale)
            corners = pos + TEE_OUTLINE @ rot(ang).T
            inside = bool(((corners >= 20.0) & (corners <= WORKSPACE - 20.0)).all())
            if inside and dist_to_tee(rot(ang).T @ (agent - pos)) > AGENT_RADIUS + 2.0:
                break
        else:
            raise RuntimeError(
                f"pusht.displace_block: no pose inside the walls and clear of the agent in {max_tries} tries "
                f"(scale={scale}, angle_scale={angle_scale})"
            )
        block = self.sim.block
        block.angle = float(ang)
        block.position = (float(pos[0]), float(pos[1]))
        block.velocity, block.angular_velocity = (0.0, 0.0), 0.0
        self.sim.space.reindex_shapes_for_body(block)
        self._coverage = float(self.sim._get_coverage())
        return self._obs({"pixels": self.sim._render(), "agent_pos": self.agent_pos})
