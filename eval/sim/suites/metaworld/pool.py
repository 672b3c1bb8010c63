"""Meta-World simulators with their GL renderers, and a per-task pool that reuses them across envs
(building one costs 0.4 - 0.8 s; docs/suites.md, "Meta-World: env reuse")."""

from __future__ import annotations

import atexit
import functools
import warnings
import weakref
from typing import Sequence

import numpy as np

from .render import configure_gl

__all__ = ["SimCore", "SimPool", "MAX_IDLE_PER_TASK"]

MAX_IDLE_PER_TASK = 4


def _close_if_alive(ref: "weakref.ReferenceType[SimCore]") -> None:
    core = ref()
    if core is not None:
        core.close()


class SimCore:
    """One Meta-World task simulator + its GL renderer + camera bookkeeping.

    ``mw``: the ``SawyerXYZEnv`` subclass instance (MT convention: goal observable, a fresh start
    state from ``mw.np_random`` at every reset). Unknown camera names raise ValueError.
    """

    def __init__(self, task: str, image_size: int, cameras: Sequence[str]) -> None:
        configure_gl()
        import mujoco
        from metaworld.env_dict import ENV_CLS_MAP

        self.task = task
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            mw = ENV_CLS_MAP[task](render_mode=None)
        # MT convention: the goal is part of the raw observation.
        mw._partially_observable = False
        if "sawyer_observation_space" in mw.__dict__:
            del mw.sawyer_observation_space  # cached_property: recompute with the goal bounds
        mw._freeze_rand_vec = False  # draw a new start state at every reset ...
        mw.seeded_rand_vec = True  # ... from mw.np_random (not the global numpy RNG)
        mw._set_task_called = True
        self.mw = mw
        model = mw.model
        known = [mujoco.mj_id2name(model, mujoco.mjtObj.mjOBJ_CAMERA, i) for i in range(model.ncam)]
        bad = [c for c in cameras if c not in known]
        if bad:
            raise ValueError(f"metaworld: unknown camera(s) {bad}; known: {known}")
        self.cam_ids = [known.index(c) for c in cameras]
        self.cam_pos0 = model.cam_pos[self.cam_ids].copy()
        # fast software rendering: no multisampling (read when the GL context is made), no shadows,
        # reflections, skybox or haze (scene flags).
        model.vis.quality.offsamples = 0
        model.vis.global_.offwidth = max(int(model.vis.global_.offwidth), image_size)
        model.vis.global_.offheight = max(int(model.vis.global_.offheight), image_size)
        self.renderer = mujoco.Renderer(model, image_size, image_size)
        flags = self.renderer.scene.flags
        for f in ("mjRND_SHADOW", "mjRND_REFLECTION", "mjRND_SKYBOX", "mjRND_HAZE"):
            flags[getattr(mujoco.mjtRndFlag, f)] = 0
        mujoco.mj_forward(model, mw.data)
        # A camera whose image-up axis (2nd column of its frame) points down is upside down.
        self.rotate180 = [bool(mw.data.cam_xmat[i].reshape(3, 3)[2, 1] < 0.0) for i in self.cam_ids]
        self._seg = False
        self._mujoco = mujoco
        self._closed = False
        # Free the GL context before EGL itself is torn down at interpreter exit (MuJoCo's EGL
        # module registers eglTerminate with atexit on import, i.e. before this, so this runs
        # first). The hook holds only a weak reference: an unclosed, unreferenced core is freed
        # by the garbage collector as usual.
        self._atexit_hook = functools.partial(_close_if_alive, weakref.ref(self))
        atexit.register(self._atexit_hook)

    def render(self, segmentation: bool = False) -> np.ndarray:
        """Upright views, uint8 (V, S, S, 3); with ``segmentation``, int32 (V, S, S, 2) holding
        (object id, object type) per pixel (MuJoCo's segmentation render)."""
        r = self.renderer
        if segmentation != self._seg:
            (r.enable_segmentation_rendering if segmentation else r.disable_segmentation_rendering)()
            self._seg = segmentation
        views = []
        for cid, rot in zip(self.cam_ids, self.rotate180):
            r.update_scene(self.mw.data, camera=cid)
            img = r.render()
            views.append(img[::-1, ::-1] if rot else img)
        return np.stack(views)

    def restore_cameras(self) -> None:
        self.mw.model.cam_pos[self.cam_ids] = self.cam_pos0

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        atexit.unregister(self._atexit_hook)
        try:
            self.renderer.close()
        finally:
            self.mw.close()


class SimPool:
    """Idle :class:`SimCore` objects per task (at most ``max_idle`` each; more are closed)."""

    def __init__(self, image_size: int, cameras: Sequence[str], max_idle: int = MAX_IDLE_PER_TASK) -> None:
        self.image_size, self.cameras, self.max_idle = int(image_size), tuple(cameras), int(max_idle)
        self._idle: dict[str, list[SimCore]] = {}

    def acquire(self, task: str) -> SimCore:
        """An idle simulator of ``task``, else a new one."""
        idle = self._idle.get(task)
        if idle:
            return idle.pop()
        return SimCore(task, self.image_size, self.cameras)

    def release(self, core: SimCore) -> None:
        """Take ``core`` back (cameras restored) or close it when the task's pool is full."""
        idle = self._idle.setdefault(core.task, [])
        if len(idle) < self.max_idle:
            core.restore_cameras()
            idle.append(core)
        else:
            core.close()

    def close(self) -> None:
        """Free every idle simulator / GL renderer."""
        for cores in self._idle.values():
            for c in cores:
                c.close()
        self._idle.clear()
