"""MetaWorldEnv: one Meta-World task as a gymnasium env (observation / action / termination
contract and the perturbation hooks: docs/suites.md, "Meta-World")."""

from __future__ import annotations

import string
from typing import Any, Callable, Sequence

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from ...contracts import Displacement
from .pool import SimCore

__all__ = ["MetaWorldEnv", "ACTION_DIM", "RAW_OBS_DIM", "STATE_MODES"]

ACTION_DIM = 4
RAW_OBS_DIM = 39
STATE_MODES: dict[str, int] = {"proprio": 4, "proprio_object": 18, "full": RAW_OBS_DIM}
MIN_HINGE_RADIUS = 0.05  # displace_object: arc -> angle uses at least this radius (m)
TABLE_XY_LOW = np.array([-0.45, 0.35])  # displace_object keeps free objects on the table
TABLE_XY_HIGH = np.array([0.45, 0.95])
_ROBOT_JOINT_PREFIXES = ("right_j", "r_close", "l_close")
_REACH_TASKS = ("reach-v3", "reach-wall-v3")
_CHARSET = string.ascii_letters + string.digits + " .,:;'-!?()"


class MetaWorldEnv(gym.Env):
    """One Meta-World task (docs/suites.md, "Meta-World"). ``render()`` returns the first camera's
    current frame, (S, S, 3) uint8; ``raw_obs`` is the last raw Meta-World observation (39,)."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 10}

    def __init__(
        self,
        core: SimCore,
        image_size: int,
        max_episode_steps: int,
        state_mode: str,
        instructions: list[str],
        seed: int | None = None,
        release: Callable[[SimCore], None] | None = None,
        displace_at_step: int | None = None,
        displace_scale: float = 0.05,
    ) -> None:
        self.core = core
        self.task = core.task
        self.image_size = int(image_size)
        self.max_episode_steps = int(max_episode_steps)
        self.state_mode = state_mode
        self.instruction_choices = list(instructions)
        self.render_mode = "rgb_array"
        self.displace_at_step = displace_at_step
        self.displace_scale = float(displace_scale)
        self._release = release
        self._init_seed = seed
        self._seeded = False
        self._closed = False
        self.num_views = len(core.cam_ids)
        s = self.image_size
        img_shape = (3, s, s) if self.num_views == 1 else (self.num_views, 3, s, s)
        self.observation_space = spaces.Dict(
            {
                "image": spaces.Box(0, 255, img_shape, np.uint8),
                "state": spaces.Box(-np.inf, np.inf, (STATE_MODES[state_mode],), np.float32),
                "instruction": spaces.Text(max_length=256, min_length=1, charset=_CHARSET),
            }
        )
        self.action_space = spaces.Box(-1.0, 1.0, (ACTION_DIM,), np.float32)
        if self.max_episode_steps > core.mw.max_path_length:
            core.mw.max_path_length = self.max_episode_steps  # Meta-World raises past its own limit
        self.raw_obs = np.zeros(RAW_OBS_DIM, np.float64)
        self.instruction = self.instruction_choices[0]
        self.last_displacement: np.ndarray | None = None
        self._views = np.zeros((self.num_views, s, s, 3), np.uint8)
        self._steps = 0
        self._displace_rng = np.random.default_rng(0)

    # ------------------------------------------------------------------ observations
    def _state(self) -> np.ndarray:
        raw = self.raw_obs
        if self.state_mode == "proprio":
            return raw[:4].astype(np.float32)
        if self.state_mode == "proprio_object":
            return raw[:18].astype(np.float32)
        return raw.astype(np.float32)

    def _obs(self) -> dict[str, Any]:
        self._views = self.core.render()
        img = np.ascontiguousarray(self._views.transpose(0, 3, 1, 2))  # (V, 3, S, S)
        return {
            "image": img[0] if self.num_views == 1 else img,
            "state": self._state(),
            "instruction": self.instruction,
        }

    def render(self) -> np.ndarray:
        """The first camera's current frame, uint8 (S, S, 3) (no re-render)."""
        return self._views[0].copy()

    def render_views(self, segmentation: bool = False) -> np.ndarray:
        """Re-render every camera: uint8 (V, S, S, 3), or with ``segmentation`` int32
        (V, S, S, 2) = (MuJoCo object id, object type) per pixel, in the same upright orientation."""
        self._check_open()
        return self.core.render(segmentation=segmentation)

    @property
    def mw(self) -> Any:
        """The underlying Meta-World env (``SawyerXYZEnv``), for privileged access."""
        return self.core.mw

    # ------------------------------------------------------------------ gym API
    def _check_open(self) -> None:
        if self._closed:  # its simulator may already serve another env (the suite's pool)
            raise RuntimeError(f"metaworld: the env for {self.task!r} is closed")

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        self._check_open()
        if seed is None and not self._seeded:
            seed = self._init_seed
        super().reset(seed=seed)
        self._seeded = True
        mw = self.core.mw
        self.core.restore_cameras()
        mw.seed(int(self.np_random.integers(2**31 - 1)))  # start state comes from mw.np_random
        self._displace_rng = np.random.default_rng(int(self.np_random.integers(2**31 - 1)))
        k = int(self.np_random.integers(len(self.instruction_choices)))
        self.instruction = self.instruction_choices[k]
        if options and options.get("instruction"):
            self.instruction = str(options["instruction"])
        raw, _ = mw.reset()
        self.raw_obs = np.asarray(raw, np.float64).copy()
        self._steps = 0
        self.last_displacement = None
        info = {"is_success": False, "task": self.task, "step": 0}
        return self._obs(), info

    def step(self, action):
        self._check_open()
        a = np.asarray(action, dtype=np.float64).reshape(-1)
        if a.shape != (ACTION_DIM,):
            raise ValueError(f"metaworld: action must have shape ({ACTION_DIM},), got {np.shape(action)}")
        if not np.isfinite(a).all():
            raise ValueError(f"metaworld: non-finite action {a.tolist()}")
        a = np.clip(a, -1.0, 1.0).astype(np.float32)
        raw, reward, _, _, mw_info = self.core.mw.step(a)
        self.raw_obs = np.asarray(raw, np.float64).copy()
        self._steps += 1
        success = bool(mw_info.get("success", 0.0))
        info = dict(mw_info)
        info.update(is_success=success, task=self.task, step=self._steps)
        terminated = success
        truncated = (not terminated) and self._steps >= self.max_episode_steps
        if self.displace_at_step is not None and self._steps == self.displace_at_step and not (terminated or truncated):
            self.displace_object(self._displace_rng, self.displace_scale)
            info["displacement"] = self.last_displacement
        return self._obs(), float(reward), terminated, truncated, info

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._release is not None:
            self._release(self.core)
        else:
            self.core.close()

    # ------------------------------------------------------------------ perturbations
    def displace_object(self, rng: np.random.Generator, scale: float = 0.05) -> Displacement:
        """Perturbation hook: move the task's main object by about ``scale`` m (docs/suites.md,
        "Meta-World: perturbations"); the reach tasks move their goal instead. Velocities of the
        moved joints are zeroed and ``raw_obs`` is refreshed; the images update at the next ``step``.

        Returns the object position ``raw_obs[4:7]`` (the goal for the reach tasks) before and
        after. ``last_displacement`` holds the applied qpos (or goal) change.
        """
        self._check_open()
        mujoco = self.core._mujoco
        mw = self.core.mw
        m, d = mw.model, mw.data
        scale = float(scale)
        ang = rng.uniform(0.0, 2.0 * np.pi)
        dxy = scale * np.array([np.cos(ang), np.sin(ang)])
        reach = self.task in _REACH_TASKS
        before = np.asarray(mw._target_pos if reach else self.raw_obs[4:7], np.float64).copy()
        if reach:
            goal = np.asarray(mw._target_pos, np.float64).copy()
            new = goal.copy()
            new[:2] = np.clip(goal[:2] + dxy, TABLE_XY_LOW, TABLE_XY_HIGH)
            mw._target_pos = new
            mw._set_pos_site("goal", new)
            self.last_displacement = new - goal
        else:
            obj = np.asarray(self.raw_obs[4:7], np.float64)
            joints = self._main_object_joints(obj)
            qpos, qvel = d.qpos.copy(), d.qvel.copy()
            sign = 1.0 if np.cos(ang) >= 0 else -1.0
            n_dof = sum(m.jnt_type[j] != mujoco.mjtJoint.mjJNT_FREE for j in joints)
            for j in joints:
                adr, vadr = int(m.jnt_qposadr[j]), int(m.jnt_dofadr[j])
                if m.jnt_type[j] == mujoco.mjtJoint.mjJNT_FREE:
                    qpos[adr : adr + 2] = np.clip(qpos[adr : adr + 2] + dxy, TABLE_XY_LOW, TABLE_XY_HIGH)
                    qvel[vadr : vadr + 6] = 0.0
                    continue
                off = sign * scale / np.sqrt(n_dof)  # e.g. the plate's x and y slides: |move| = scale
                if m.jnt_type[j] == mujoco.mjtJoint.mjJNT_HINGE:  # arc length -> angle
                    rel = obj - d.xanchor[j]
                    axis = d.xaxis[j]
                    radius = float(np.linalg.norm(rel - rel.dot(axis) * axis))
                    off /= max(radius, MIN_HINGE_RADIUS)
                v = qpos[adr]
                if m.jnt_limited[j]:  # the random direction unless the other one moves farther
                    a, b = np.clip([v + off, v - off], *m.jnt_range[j])
                    qpos[adr] = a if abs(a - v) >= abs(b - v) else b
                else:
                    qpos[adr] = v + off
                qvel[vadr] = 0.0
            self.last_displacement = qpos - d.qpos
            d.qpos[:] = qpos
            d.qvel[:] = qvel
            mujoco.mj_forward(m, d)
        space = mw.sawyer_observation_space
        self.raw_obs = np.clip(mw._get_obs(), space.low, space.high).astype(np.float64)
        after = np.asarray(mw._target_pos if reach else self.raw_obs[4:7], np.float64).copy()
        return Displacement(before=before, after=after)

    def _main_object_joints(self, obj_pos: np.ndarray) -> list[int]:
        """Joints of the non-robot jointed body whose subtree (bodies + geoms) is nearest ``obj_pos``."""
        mujoco = self.core._mujoco
        m, d = self.core.mw.model, self.core.mw.data
        by_body: dict[int, list[int]] = {}
        for j in range(m.njnt):
            name = mujoco.mj_id2name(m, mujoco.mjtObj.mjOBJ_JOINT, j) or ""
            if not name.startswith(_ROBOT_JOINT_PREFIXES):
                by_body.setdefault(int(m.jnt_bodyid[j]), []).append(j)
        if not by_body:
            raise RuntimeError(f"metaworld: task {self.task!r} has no object to displace")
        parent = m.body_parentid
        best, best_dist = None, np.inf
        for b in by_body:
            sub = [c for c in range(m.nbody) if self._in_subtree(c, b, parent)]
            pts = [d.xpos[c] for c in sub] + [d.geom_xpos[g] for g in range(m.ngeom) if m.geom_bodyid[g] in sub]
            dist = min(float(np.linalg.norm(p - obj_pos)) for p in pts)
            if dist < best_dist:
                best, best_dist = b, dist
        return by_body[best]

    @staticmethod
    def _in_subtree(body: int, root: int, parent: np.ndarray) -> bool:
        while True:
            if body == root:
                return True
            if body == 0:
                return False
            body = int(parent[body])

    def set_camera_offset(self, offset: Sequence[float] | None) -> None:
        """Shift every observation camera by ``offset`` (3,) m in its parent frame (world for the
        fixed cameras); ``None`` restores the original poses. Reset also restores them."""
        self._check_open()
        self.core.restore_cameras()
        if offset is not None:
            off = np.asarray(offset, np.float64).reshape(-1)
            if off.shape != (3,):
                raise ValueError(f"metaworld: camera offset must have shape (3,), got {np.shape(offset)}")
            self.core.mw.model.cam_pos[self.core.cam_ids] += off
        self.core._mujoco.mj_forward(self.core.mw.model, self.core.mw.data)  # camera poses in data
