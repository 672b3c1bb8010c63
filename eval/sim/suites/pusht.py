"""pusht: push a T-shaped block onto a fixed target outline (wraps the ``gym-pusht`` package).

The simulator is :class:`gym_pusht.envs.PushTEnv` (pymunk physics, pygame drawing; the Diffusion
Policy "PushT" benchmark). World: a 512 x 512 workspace in pixel units, x right, y *down* (the
image's orientation: world (x, y) is at image column x * S / 512, row y * S / 512). The agent is a
kinematic disc (radius 15) driven by a PD controller towards the commanded position (10 control
steps per second, 10 physics sub-steps each). The T block (a 120 x 30 bar plus a 30 x 90 stem,
mass 1, frictionless contacts, no momentum: it stops as soon as it is not pushed) starts at a
random pose; the goal pose is fixed at (256, 256, pi / 4). Success: the block covers more than
95 % of the goal outline's area (``gym-pusht``'s own coverage criterion).

==============  ==================================================================================
task            ``push_t`` (one task; instructions paraphrase "push the T onto the target").
observation     ``{"image": uint8 (3, S, S), "state": float32 (2,), "instruction": str}``;
                ``image`` is ``gym-pusht``'s own observation render at S x S (``image_size``,
                default 64): its ``obs_type="pixels"`` frame (512 px drawing, ``cv2.resize``),
                the render behind the 96 px PushT datasets; ``state`` is the agent position
                (x, y) in world pixels, [0, 512]^2 (not normalized, as in those datasets).
action          float32 (2,): the agent's target position (x, y) in world pixels, clipped to
                ``action_bounds()`` = ([0, 0], [512, 512]) (native units; training code
                normalizes actions with dataset statistics).
termination     ``terminated`` on success (``info["is_success"]``); ``truncated`` after
                ``max_episode_steps`` (default 300, as in the Diffusion Policy benchmark).
                Reward: ``gym-pusht``'s ``clip(coverage / 0.95, 0, 1)``.
info            ``is_success``, ``coverage``, ``block_pose`` (x, y, angle of the block's body
                origin), ``goal_pose``, ``agent_pos``, ``task``, ``step``.
==============  ==================================================================================

Determinism: ``make_env(task, seed)`` + ``reset()`` (or ``reset(seed=s)``) reproduces the start
state and the instruction; later ``reset()`` calls continue the env's RNG stream.

Headless: pygame only draws on off-screen surfaces here; ``SDL_VIDEODRIVER=dummy`` (and a quiet
pygame banner) are set, unless already set, right before ``gym_pusht`` is first imported.

Perturbations (recovery studies): :meth:`PushTEnv.displace_block` moves the T mid-episode.

Expert: :class:`PushTExpert` (see its docstring), a contact-point pushing planner on privileged
state. Measured with ``evaluate(ExpertPolicy(suite), suite, episodes_per_task=100, seed=0)``
(default suite, 300-step limit): noise 0: 100/100 successes (Wilson 95 % CI [0.963, 1]), mean
length 94.3 steps (median 91, max 165); noise 5 px: 100/100, mean length 101.3. With seed=7,
50 episodes: noise 0: 50/50 (mean length 99.3); noise 10 px: 49/50 (133.6). A uniform random
policy: 0/30.

Speed (one CPU core, ``time.process_time``): env step incl. the 64 px render ~520 steps/s (the
512 x 512 pygame drawing dominates; ~500 at 96 px); with the expert ~380 steps/s. Wall-clock
rates on a loaded 2-core machine were 180-520 steps/s.
"""

from __future__ import annotations

import math
import os
import string
from dataclasses import dataclass
from typing import Any, Callable

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from . import Suite, register_suite

__all__ = [
    "PushTSuite",
    "PushTEnv",
    "PushTExpert",
    "ExpertConfig",
    "TASKS",
    "STATE_DIM",
    "ACTION_DIM",
    "WORKSPACE",
    "AGENT_RADIUS",
    "TEE_RECTS",
]

TASKS = ("push_t",)
STATE_DIM = 2
ACTION_DIM = 2
WORKSPACE = 512.0  # world is [0, WORKSPACE]^2 pixels
AGENT_RADIUS = 15.0
# The T in its body frame (``gym_pusht.PushTEnv.add_tee``, scale 30): axis-aligned rectangles
# (xmin, ymin, xmax, ymax): the bar and the stem.
TEE_RECTS = np.array([[-60.0, 0.0, 60.0, 30.0], [-15.0, 30.0, 15.0, 120.0]])
# Its outline, counter-clockwise in a y-up frame (so the outward normal of edge (a, b) is
# (dy, -dx) / |b - a|).
_TEE_OUTLINE = np.array(
    [[-60, 0], [60, 0], [60, 30], [15, 30], [15, 120], [-15, 120], [-15, 30], [-60, 30]], np.float64
)

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


def _instructions(split: str) -> list[str]:
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


# ------------------------------------------------------------------------------------------
# geometry of the T in its body frame (all arrays float64; points (..., 2))
# ------------------------------------------------------------------------------------------


def _rot(angle: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    return np.array([[c, -s], [s, c]])


def _dist_to_tee(points: np.ndarray) -> np.ndarray:
    """Euclidean distance (...,) from body-frame points (..., 2) to the T (0 inside)."""
    p = np.asarray(points, np.float64)[..., None, :]  # (..., 1, 2)
    lo, hi = TEE_RECTS[:, :2], TEE_RECTS[:, 2:]  # (2, 2)
    d = np.maximum(np.maximum(lo - p, p - hi), 0.0)  # (..., 2 rects, 2)
    return np.linalg.norm(d, axis=-1).min(axis=-1)


def _nearest_on_tee(points: np.ndarray) -> np.ndarray:
    """Nearest point (..., 2) of the (filled) T to body-frame points (..., 2)."""
    p = np.asarray(points, np.float64)
    cand = np.clip(p[..., None, :], TEE_RECTS[:, :2], TEE_RECTS[:, 2:])  # (..., 2, 2)
    d = np.linalg.norm(cand - p[..., None, :], axis=-1)
    idx = d.argmin(axis=-1)
    return np.take_along_axis(cand, idx[..., None, None], axis=-2)[..., 0, :]


def _boxes(clearance: float) -> tuple[np.ndarray, np.ndarray]:
    """The T's rectangles grown by ``clearance``: (lo (2, 2), hi (2, 2))."""
    return TEE_RECTS[:, :2] - clearance, TEE_RECTS[:, 2:] + clearance


def _inside_boxes(points: np.ndarray, clearance: float) -> np.ndarray:
    """bool (...,): body-frame point inside a rectangle of the T grown by ``clearance``."""
    lo, hi = _boxes(clearance)
    p = np.asarray(points, np.float64)[..., None, :]
    return ((p > lo) & (p < hi)).all(-1).any(-1)


def _segments_hit_boxes(p0: np.ndarray, p1: np.ndarray, clearance: float) -> np.ndarray:
    """bool (...,): segment p0 -> p1 (body frame, (..., 2) each) meets a grown rectangle.

    A grown axis-aligned rectangle contains the rectangle's Minkowski sum with a disc of radius
    ``clearance``, so a segment that misses them keeps at least ``clearance`` from the T."""
    lo, hi = _boxes(clearance)
    a = np.asarray(p0, np.float64)[..., None, :]
    d = np.asarray(p1, np.float64)[..., None, :] - a
    d = np.where(np.abs(d) < 1e-12, 1e-12, d)
    t1, t2 = (lo - a) / d, (hi - a) / d
    t_in = np.minimum(t1, t2).max(-1)
    t_out = np.maximum(t1, t2).min(-1)
    return ((t_in < t_out) & (t_out > 0.0) & (t_in < 1.0)).any(-1)


def _ray_exit(origin: np.ndarray, direction: np.ndarray, clearance: float) -> np.ndarray:
    """Distance s (...,) along unit rays until the point leaves every grown rectangle."""
    lo, hi = _boxes(clearance)
    o = np.asarray(origin, np.float64)
    u = np.where(np.abs(direction) < 1e-12, 1e-12, direction)
    s = np.zeros(o.shape[:-1])
    for _ in range(3):  # leaving one rectangle may land in the other
        p = o + s[..., None] * direction
        inside = ((p[..., None, :] > lo) & (p[..., None, :] < hi)).all(-1)  # (..., 2)
        t_exit = np.maximum((lo - o[..., None, :]) / u[..., None, :], (hi - o[..., None, :]) / u[..., None, :]).min(-1)
        s = np.maximum(s, np.where(inside, t_exit, 0.0).max(-1))
    return s + 1e-6


@dataclass(frozen=True)
class _Contacts:
    """Pushing contacts on the T outline, body frame. N candidates."""

    point: np.ndarray  # (N, 2) contact point on the outline
    normal: np.ndarray  # (N, 2) outward unit normal
    edge: np.ndarray  # (N,) outline edge index
    touch: np.ndarray  # (N, 2) agent centre touching the outline there
    exit: np.ndarray  # (N, 2) point on the outward normal ray clear of the grown rectangles


def _make_contacts(spacing: float, radius: float, clearance: float) -> _Contacts:
    pts, nrm, edge = [], [], []
    for k in range(len(_TEE_OUTLINE)):
        a, b = _TEE_OUTLINE[k], _TEE_OUTLINE[(k + 1) % len(_TEE_OUTLINE)]
        length = float(np.linalg.norm(b - a))
        t = (b - a) / length
        n = np.array([t[1], -t[0]])
        for s in np.arange(spacing / 2, length, spacing):
            pts.append(a + s * t)
            nrm.append(n)
            edge.append(k)
    point, normal, edge_ = np.array(pts), np.array(nrm), np.array(edge)
    touch = point + normal * radius
    ok = _dist_to_tee(touch + normal * 0.5) >= radius  # the disc touches only this face
    point, normal, edge_, touch = point[ok], normal[ok], edge_[ok], touch[ok]
    exit_ = touch + normal * _ray_exit(touch, normal, clearance)[:, None]
    return _Contacts(point, normal, edge_, touch, exit_)


# ------------------------------------------------------------------------------------------
# env
# ------------------------------------------------------------------------------------------


class PushTEnv(gym.Env):
    """The ``push_t`` task (see module docstring). ``render()`` returns an (S, S, 3) uint8 frame."""

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
        self.instruction_choices = list(instructions or _instructions("train"))
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
    def displace_object(self, rng: np.random.Generator, scale: float = 40.0) -> dict[str, Any]:
        """The suite-independent perturbation hook (:mod:`eval.sim.perturb`): :meth:`displace_block`."""
        return self.displace_block(rng, scale=scale)

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
            corners = pos + _TEE_OUTLINE @ _rot(ang).T
            inside = bool(((corners >= 20.0) & (corners <= WORKSPACE - 20.0)).all())
            if inside and _dist_to_tee(_rot(ang).T @ (agent - pos)) > AGENT_RADIUS + 2.0:
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


# ------------------------------------------------------------------------------------------
# expert
# ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ExpertConfig:
    """Tuning of :class:`PushTExpert` (lengths in world pixels)."""

    contact_spacing: float = 5.0  # candidate contacts every this many pixels along the outline
    angle_weight: float = 1.0  # rho = angle_weight * sqrt(I / m): pixels per radian of angle error
    travel_cost: float = 0.25  # score penalty per 100 px of travel to a contact
    commit_bonus: float = 0.1  # score bonus of the contact currently pursued (hysteresis)
    min_cos: float = 0.15  # only contacts aligned better than this compete
    clear_check: float = AGENT_RADIUS + 6.0  # paths keep this far from the T (centre distance)
    clear_node: float = AGENT_RADIUS + 12.0  # detour waypoints sit this far out
    approach_gap: float = 3.0  # pre-contact point: this far off the touching position
    engage_tol: float = 4.0  # start pushing within this distance of the pre-contact point
    lookahead: float = 50.0  # carrot distance along the path while travelling
    push_gain: float = 1.0  # push target depth = gain * predicted optimal push length
    min_push: float = 2.0
    max_push: float = 30.0


class PushTExpert:
    """Contact-point pushing expert on privileged state (block pose, goal pose, block inertia).

    Model: contacts are frictionless and the block has no momentum, so a push at outline point
    p with inward normal n moves the block quasi-statically along the generalized direction
    D = (n / m, rho * ((p - c) x n) / I) per unit impulse (c: centre of gravity, m: mass,
    I: inertia, rho = ``angle_weight`` * sqrt(I / m) converts radians to pixels).

    Each control step:

    1. Error e = (goal cog - cog, rho * wrap(goal angle - angle)).
    2. Score every candidate contact (points every ``contact_spacing`` px on the T outline whose
       touching disc clears the rest of the T) by cos(e, D_j) minus ``travel_cost`` x the
       length of a collision-free path to it (plus ``commit_bonus`` for the contact already
       pursued). Only contacts with cos > ``min_cos`` compete (if none does, the best-aligned
       one is taken); the best is pursued.
    3. If the agent sits at the chosen contact's pre-contact point (``approach_gap`` off the
       face, within ``engage_tol``) or on its normal ray against the face, push: command the touching position moved ``depth`` px into
       the block along n, depth = ``push_gain`` x the push length that minimizes |e| under the
       model, clipped to [``min_push``, ``max_push``]; the contact is re-located on the moving
       block every step, so the agent follows the face.
    4. Else travel without touching the block: if the agent hovers over the same face, slide
       along it to the new pre-contact point; otherwise move away from the nearest point of the
       T (after a push: back out along the face's normal) until clear, then follow the shortest path through a
       visibility graph on the corners of the T's rectangles grown by ``clear_node`` (segments
       checked against rectangles grown by ``clear_check``) to the contact's exit point (where its
       outward normal ray leaves the grown rectangles), then straight in along the normal to the
       pre-contact point. The command is a carrot ``lookahead`` px ahead on that path (the PD
       controller then moves the agent at about lookahead / 2 px per step).

    ``noise`` adds N(0, noise^2) pixels per component to each action (seeded by ``seed``); the
    result is clipped to the workspace. The expert is stateful (the contact pursued); it resets
    itself when the env's step counter restarts.
    """

    def __init__(self, noise: float = 0.0, seed: int | None = None, cfg: ExpertConfig | None = None) -> None:
        self.cfg = cfg or ExpertConfig()
        self.noise = float(noise)
        self.rng = np.random.default_rng(seed)
        c = self.cfg
        self.contacts = _make_contacts(c.contact_spacing, AGENT_RADIUS, c.clear_check)
        self.nodes, self.node_dist, self.node_next = self._graph()
        self.committed: int | None = None
        self._last_step = -1

    # ---------------------------------------------------------------- static visibility graph
    def _graph(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        c = self.cfg.clear_node
        cand = []
        for xmin, ymin, xmax, ymax in TEE_RECTS:
            cand += [[xmin - c, ymin - c], [xmax + c, ymin - c], [xmax + c, ymax + c], [xmin - c, ymax + c]]
        # concave corners of the T (between bar top and stem sides)
        cand += [[15 + c, 30 + c], [-15 - c, 30 + c]]
        cand = np.array(cand)
        nodes = cand[~_inside_boxes(cand, self.cfg.clear_check)]
        k = len(nodes)
        vis = ~_segments_hit_boxes(nodes[:, None].repeat(k, 1), nodes[None].repeat(k, 0), self.cfg.clear_check)
        dist = np.where(vis, np.linalg.norm(nodes[:, None] - nodes[None], axis=-1), np.inf)
        np.fill_diagonal(dist, 0.0)
        nxt = np.where(np.isfinite(dist), np.arange(k)[None].repeat(k, 0), -1)
        for m in range(k):  # Floyd-Warshall
            via = dist[:, m : m + 1] + dist[m : m + 1, :]
            better = via < dist
            dist = np.where(better, via, dist)
            nxt = np.where(better, nxt[:, m : m + 1].repeat(k, 1), nxt)
        return nodes, dist, nxt

    def _node_path(self, i: int, j: int) -> list[int]:
        path = [i]
        while i != j:
            i = int(self.node_next[i, j])
            if i < 0:
                return []
            path.append(i)
        return path

    # ---------------------------------------------------------------- main
    def __call__(self, obs: dict, env: Any) -> np.ndarray:
        e = env.unwrapped
        if e.steps <= self._last_step or e.steps == 0:
            self.committed = None
        self._last_step = e.steps
        a = self._plan(e)
        if self.noise > 0:
            a = a + self.rng.normal(0.0, self.noise, 2)
        return np.clip(a, 0.0, WORKSPACE).astype(np.float32)

    def _plan(self, e: Any) -> np.ndarray:
        cfg, C = self.cfg, self.contacts
        bx, by, th = e.block_pose
        gx, gy, gth = e.goal_pose
        m, inertia, cog = e.block_dynamics
        rho = cfg.angle_weight * math.sqrt(inertia / m)
        R = _rot(th)
        pos = np.array([bx, by])
        agent = e.agent_pos
        agent_l = R.T @ (agent - pos)  # agent in the body frame

        # 1. error in the body frame: (dx, dy, rho * dtheta)
        goal_cog_l = R.T @ (np.array([gx, gy]) + _rot(gth) @ cog - pos)
        dth = (gth - th + math.pi) % (2 * math.pi) - math.pi
        err = np.array([*(goal_cog_l - cog), rho * dth])
        enorm = float(np.linalg.norm(err))
        if enorm < 1e-6:
            return agent

        # 2. candidate scores (body frame)
        n_in = -C.normal
        r = C.point - cog
        torque = r[:, 0] * n_in[:, 1] - r[:, 1] * n_in[:, 0]
        D = np.concatenate([n_in / m, (rho * torque / inertia)[:, None]], axis=1)  # (N, 3)
        dnorm = np.linalg.norm(D, axis=1)
        cos = D @ err / (dnorm * enorm)

        pre = C.touch + C.normal * cfg.approach_gap
        travel, start_l, escape = self._travel(agent_l, C.exit)
        travel = travel + np.linalg.norm(C.exit - pre, axis=1)
        score = cos - cfg.travel_cost * travel / 100.0
        k = self.committed
        pushing = False
        if k is not None:
            pushing = self._engaged(agent_l, k)
            if pushing or self._same_face_near(agent_l, k):
                score[k] = cos[k]
            score[k] += cfg.commit_bonus
        masked = np.where(cos > cfg.min_cos, score, -np.inf)
        best = int(np.argmax(masked))
        if not np.isfinite(masked[best]):  # nothing aligns well: take the best-aligned contact
            best = int(np.argmax(cos))
        if best != k:
            self.committed, pushing = best, self._engaged(agent_l, best)
        k = self.committed

        # 3. push
        if pushing:
            lam = float(D[k] @ err) / float(D[k] @ D[k])
            k_n = 1.0 / m + torque[k] ** 2 / inertia
            depth = float(np.clip(cfg.push_gain * lam * k_n, cfg.min_push, cfg.max_push))
            target_l = C.touch[k] + n_in[k] * depth
            return pos + R @ target_l

        # 4. travel
        if self._same_face_near(agent_l, k):
            path_l = [agent_l, pre[k]]
        else:
            path_l = [agent_l] + ([escape] if escape is not None else [])
            path_l += self._route(start_l, C.exit[k]) + [C.exit[k], pre[k]]
        target_l = self._carrot(path_l, cfg.lookahead)
        return pos + R @ target_l

    def _engaged(self, agent_l: np.ndarray, k: int) -> bool:
        """Agent (body frame) is at contact k's pre-contact point or on its normal ray, pushing."""
        C, cfg = self.contacts, self.cfg
        pre = C.touch[k] + C.normal[k] * cfg.approach_gap
        rel = agent_l - C.touch[k]
        along = float(rel @ C.normal[k])
        lateral = abs(float(rel @ np.array([-C.normal[k][1], C.normal[k][0]])))
        on_ray = lateral <= cfg.engage_tol and -cfg.max_push <= along <= cfg.approach_gap + cfg.engage_tol
        return float(np.linalg.norm(agent_l - pre)) <= cfg.engage_tol or on_ray

    def _same_face_near(self, agent_l: np.ndarray, k: int) -> bool:
        """Agent hovers over the face of contact k (within a few pixels of its offset line)."""
        C = self.contacts
        face = C.edge[k]
        idx = np.nonzero(C.edge == face)[0]
        rel = agent_l - C.touch[k]
        along = float(rel @ C.normal[k])
        if not (-2.0 <= along <= self.cfg.approach_gap + self.cfg.engage_tol):
            return False
        t = np.array([-C.normal[k][1], C.normal[k][0]])
        s = (C.touch[idx] - C.touch[k]) @ t
        a = float(rel @ t)
        return float(s.min()) - 1.0 <= a <= float(s.max()) + 1.0

    def _travel(self, agent_l: np.ndarray, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """Path lengths (N,) from the agent to body-frame targets (N, 2) avoiding the T; also the
        start point of the graph search and the escape point (None if the agent is clear)."""
        cfg = self.cfg
        escape = None
        start = agent_l
        extra = 0.0
        if _inside_boxes(agent_l, cfg.clear_check):
            near = _nearest_on_tee(agent_l)
            u = agent_l - near
            if np.linalg.norm(u) < 1e-6:  # overlapping the T: leave away from its middle
                u = agent_l - np.array([0.0, 45.0])
            u = u / max(np.linalg.norm(u), 1e-9)
            escape = agent_l + u * (_ray_exit(agent_l, u, cfg.clear_check) + 1.0)
            extra = float(np.linalg.norm(escape - agent_l))
            start = escape
        self._start_node_dist = self._dist_from(start)
        direct_ok = ~_segments_hit_boxes(np.broadcast_to(start, targets.shape), targets, cfg.clear_check)
        direct = np.where(direct_ok, np.linalg.norm(targets - start, axis=1), np.inf)
        k = len(self.nodes)
        vis = ~_segments_hit_boxes(
            np.broadcast_to(self.nodes[None], (len(targets), k, 2)), targets[:, None].repeat(k, 1), cfg.clear_check
        )
        leg = np.where(vis, np.linalg.norm(self.nodes[None] - targets[:, None], axis=-1), np.inf)
        via = (self._start_node_dist[None] + leg).min(axis=1)
        return extra + np.minimum(direct, via), start, escape

    def _dist_from(self, start: np.ndarray) -> np.ndarray:
        """Shortest path length (K,) from body-frame ``start`` to every graph node."""
        k = len(self.nodes)
        vis = ~_segments_hit_boxes(np.broadcast_to(start, (k, 2)), self.nodes, self.cfg.clear_check)
        first = np.where(vis, np.linalg.norm(self.nodes - start, axis=1), np.inf)
        return (first[:, None] + self.node_dist).min(axis=0)

    def _route(self, start: np.ndarray, goal: np.ndarray) -> list[np.ndarray]:
        """Waypoints (body frame) strictly between ``start`` and ``goal`` on a collision-free path."""
        cfg = self.cfg
        if not _segments_hit_boxes(start, goal, cfg.clear_check):
            return []
        k = len(self.nodes)
        vis_s = ~_segments_hit_boxes(np.broadcast_to(start, (k, 2)), self.nodes, cfg.clear_check)
        vis_g = ~_segments_hit_boxes(self.nodes, np.broadcast_to(goal, (k, 2)), cfg.clear_check)
        d_s = np.where(vis_s, np.linalg.norm(self.nodes - start, axis=1), np.inf)
        d_g = np.where(vis_g, np.linalg.norm(self.nodes - goal, axis=1), np.inf)
        total = d_s[:, None] + self.node_dist + d_g[None, :]
        i, j = np.unravel_index(int(np.argmin(total)), total.shape)
        if not np.isfinite(total[i, j]):
            return []  # no route (should not happen): go straight
        return [self.nodes[n] for n in self._node_path(int(i), int(j))]

    @staticmethod
    def _carrot(path: list[np.ndarray], lookahead: float) -> np.ndarray:
        """The point ``lookahead`` along the polyline ``path`` from its start (or its end)."""
        left = lookahead
        for a, b in zip(path[:-1], path[1:]):
            seg = float(np.linalg.norm(b - a))
            if seg >= left:
                return a + (b - a) * (left / max(seg, 1e-9))
            left -= seg
        return path[-1]


# ------------------------------------------------------------------------------------------
# suite
# ------------------------------------------------------------------------------------------


@register_suite("pusht")
class PushTSuite(Suite):
    """One task, ``push_t``; see the module docstring."""

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
        return _instructions(split)

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
