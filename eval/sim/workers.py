"""Env worker processes: each builds one suite and serves its envs over a pipe.

A worker is a fresh Python interpreter (``python -m eval.sim.workers``; spawn semantics, never a
fork of the evaluator with its torch threads) that builds ``make_suite(name, **suite_kwargs)``
after importing ``import_modules`` (modules that register extra suites), then answers commands
for one env at a time. The policy never leaves the evaluating process; only numpy arrays and
plain dicts / lists / str / numbers cross the boundary, so a pool can run another virtualenv's
interpreter (``WorkerConfig.python``, e.g. LIBERO's) as long as that environment can import
``eval.sim.workers`` and ``msgpack`` (the repository root and ``packages/vla_ebt_client`` are put on
its ``PYTHONPATH``).

Why subprocess and not ``multiprocessing``: a spawn-context child re-imports the parent's
``sys.path`` (its site-packages included), which would mix two virtualenvs; here the child's
interpreter and packages are entirely its own.

Wire format: :mod:`vla_ebt_client.wire` frames (4-byte big-endian length + msgpack body with numpy arrays
as dtype/shape/bytes; nothing is unpickled), the same as the LIBERO worker's. The worker writes
replies on a duplicate of its original stdout; its fd 1 is redirected to stderr, so anything an
env prints (C libraries included) goes to the evaluator's stderr.

Requests ``{"cmd": str, "args": dict}``; replies ``{"ok": True, "result": ...}`` or
``{"ok": False, "error": {"phase", "type", "message", "where"}}``:

=============  ==========================================  ======================================
cmd            args                                        result
=============  ==========================================  ======================================
init           suite, suite_kwargs, import_modules         SuiteInfo dict (sent once, first)
open           task, seed, split, instruction, render,     make_env + reset (+ render) in one
               expert ({"noise": float} or None)           round trip: {"obs", "info", "frame",
                                                           "expert_action", "expert_error"}
step           action (float32 (D,)), render               {"obs", "reward", "terminated",
                                                           "truncated", "info", "frame", ...}
make_env       task, seed, split                           {} (the individual commands)
reset          seed, options                               {"obs", "info"}
render         -                                           frame uint8 (H, W, 3)
expert_action  -                                           the expert's action for the last obs
close          -                                           {} (closes the current env)
ping           -                                           "pong"
shutdown       -                                           {} then the worker exits
=============  ==========================================  ======================================

With ``expert`` set in ``open``, the worker builds ``suite.expert(task, noise, seed)`` (the expert
reads privileged env state, which never leaves the worker) and returns the expert's action for
every observation it sends (``expert_action``), so an expert rollout costs one round trip per
step. An env exception is a normal error reply naming the phase; a worker that dies or stops
answering is the pool's business (:class:`EnvWorkerPool` kills and replaces it).

:class:`EnvSession` is the env side of an episode; the serial evaluator runs it in-process, a
worker runs the very same code, which is what keeps serial and parallel results identical.
"""

from __future__ import annotations

import importlib
import math
import os
import select
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from vla_ebt_client import wire

from .suites import INSTRUCTION_SPLITS, Suite, make_suite

__all__ = [
    "SuiteInfo",
    "EnvSession",
    "EnvOpError",
    "RemoteError",
    "WorkerFailure",
    "WorkerCrashed",
    "WorkerTimeout",
    "WorkerStartError",
    "WorkerConfig",
    "WorkerEvent",
    "EnvWorker",
    "EnvWorkerPool",
    "RemoteEnvHandle",
    "describe_exception",
    "format_error",
    "serve",
]

# how a command is named in failure messages
_PHASES = {"open": "make_env/env.reset", "step": "env.step", "reset": "env.reset", "render": "env.render",
           "make_env": "make_env", "expert_action": "expert", "close": "env.close"}
_REPO_ROOT = Path(__file__).resolve().parents[2]


# --------------------------------------------------------------------------------------------
# errors
# --------------------------------------------------------------------------------------------


def describe_exception(e: BaseException) -> dict[str, str]:
    """{"type", "message", "where"}: where is " (at file.py:LINE)" of the innermost frame or ""."""
    tb = traceback.extract_tb(e.__traceback__)
    where = f" (at {Path(tb[-1].filename).name}:{tb[-1].lineno})" if tb else ""
    return {"type": type(e).__name__, "message": str(e), "where": where}


def format_error(phase: str, desc: dict[str, str]) -> str:
    """The one error-string format of episode failures: ``"phase: Type: message (at f.py:N)"``."""
    return f"{phase}: {desc['type']}: {desc['message']}{desc.get('where', '')}"


class EnvOpError(Exception):
    """An env-side operation raised; ``phase`` is "make_env", "env.reset", "env.step",
    "env.render" or "expert"; ``cause`` is the original exception (with its traceback)."""

    def __init__(self, phase: str, cause: BaseException) -> None:
        self.phase, self.cause = phase, cause
        super().__init__(format_error(phase, describe_exception(cause)))

    @property
    def description(self) -> dict[str, str]:
        return describe_exception(self.cause)


class RemoteError(Exception):
    """An exception raised inside a worker, described by type name / message / location."""

    def __init__(self, phase: str, desc: dict[str, str]) -> None:
        self.phase = phase
        self.description = {k: str(desc.get(k, "")) for k in ("type", "message", "where")}
        super().__init__(format_error(phase, self.description))


class WorkerFailure(RuntimeError):
    """The worker process itself failed (died or stopped answering); the message is the
    episode's error string."""

    def __init__(self, message: str, phase: str, worker: int) -> None:
        super().__init__(message)
        self.phase, self.worker = phase, worker


class WorkerCrashed(WorkerFailure):
    """The worker process exited (``exit_code``: its return code, negative = killed by signal)."""

    def __init__(self, phase: str, worker: int, exit_code: int | None) -> None:
        self.exit_code = exit_code
        super().__init__(f"env worker crashed (exit code {exit_code}) during {phase}", phase, worker)


class WorkerTimeout(WorkerFailure):
    """No reply within the command's timeout; the worker was killed."""

    def __init__(self, phase: str, worker: int, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        super().__init__(f"env worker timed out after {timeout_s:g} s during {phase}", phase, worker)


class WorkerStartError(RuntimeError):
    """A worker could not start or build its suite (fatal for the evaluation)."""


# --------------------------------------------------------------------------------------------
# suite metadata (what the evaluator needs from a suite it may not be able to import)
# --------------------------------------------------------------------------------------------


@dataclass
class SuiteInfo:
    """Plain-data description of a built suite, with the few Suite methods the evaluator uses.

    action_low / action_high: float32 (action_dim,) bounds, or None if the suite has none.
    """

    name: str
    tasks: list[str]
    action_dim: int
    state_dim: int
    image_size: int
    num_views: int
    max_episode_steps: int
    action_low: list[float] | None = None
    action_high: list[float] | None = None
    extra_tasks: list[str] | None = None  # valid but not in task_names(), e.g. Meta-World's held-out tasks

    @classmethod
    def from_suite(cls, suite: Suite | "SuiteInfo") -> "SuiteInfo":
        if isinstance(suite, SuiteInfo):
            return suite
        try:
            lo, hi = suite.action_bounds()
            low, high = [float(x) for x in np.asarray(lo).reshape(-1)], [float(x) for x in np.asarray(hi).reshape(-1)]
        except NotImplementedError:
            low = high = None
        return cls(
            name=str(getattr(suite, "name", "") or type(suite).__name__),
            tasks=list(suite.task_names()),
            action_dim=int(suite.action_dim),
            state_dim=int(suite.state_dim),
            image_size=int(getattr(suite, "image_size", 0) or 0),
            num_views=int(getattr(suite, "num_views", 1) or 1),
            max_episode_steps=int(suite.max_episode_steps),
            action_low=low,
            action_high=high,
            extra_tasks=[t for t in getattr(suite, "heldout_tasks", lambda: [])() if t not in suite.task_names()],
        )

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "SuiteInfo":
        return cls(**{k: d.get(k) for k in cls.__dataclass_fields__})

    def compatible_with(self, other: "SuiteInfo") -> list[str]:
        """Names of the fields (besides the bounds) that differ from ``other``."""
        keys = ("name", "tasks", "action_dim", "state_dim", "image_size", "num_views", "max_episode_steps")
        return [k for k in keys if getattr(self, k) != getattr(other, k)]

    # the Suite methods the evaluator calls
    def task_names(self) -> list[str]:
        return list(self.tasks)

    def check_task(self, task: str) -> None:
        known = self.tasks + list(self.extra_tasks or [])
        if task not in known:
            raise ValueError(f"suite {self.name!r}: unknown task {task!r}; known tasks: {known}")

    def check_split(self, split: str) -> None:
        if split not in INSTRUCTION_SPLITS:
            raise ValueError(f"instruction split must be one of {list(INSTRUCTION_SPLITS)}, got {split!r}")

    def action_bounds(self) -> tuple[np.ndarray, np.ndarray]:
        if self.action_low is None or self.action_high is None:
            raise NotImplementedError(f"suite {self.name!r} has no action bounds")
        return np.asarray(self.action_low, np.float32), np.asarray(self.action_high, np.float32)


# --------------------------------------------------------------------------------------------
# the env side of an episode (in-process for serial evaluation, inside a worker otherwise)
# --------------------------------------------------------------------------------------------


class EnvSession:
    """Holds at most one env of ``suite``; ``open`` / ``step`` raise :class:`EnvOpError`.

    Results are dicts: ``obs`` (the env's observation dict), ``info``, ``frame`` (uint8
    (H, W, 3) from ``env.render()`` when asked, else None), ``expert_action`` (float32 (D,) when
    the session runs the expert, else None) and ``expert_error`` (a describe_exception dict
    when the expert raised, else None); ``step`` adds ``reward``, ``terminated``, ``truncated``.
    """

    def __init__(self, suite: Suite) -> None:
        self.suite = suite
        self.env: Any = None
        self._expert: Any = None
        self._expert_instruction: str | None = None
        self._obs: dict[str, Any] | None = None

    def make_env(self, task: str, seed: int | None, split: str = "train") -> None:
        self.close()
        try:
            self.env = self.suite.make_env(task, seed=seed, split=split)
        except Exception as e:  # noqa: BLE001
            raise EnvOpError("make_env", e) from e

    def reset(self, seed: int | None = None, options: dict[str, Any] | None = None) -> dict[str, Any]:
        self._need_env("env.reset")
        try:
            obs, info = self.env.reset(seed=seed, options=options)
        except Exception as e:  # noqa: BLE001
            raise EnvOpError("env.reset", e) from e
        self._obs = obs
        return {"obs": obs, "info": info}

    def render(self) -> np.ndarray:
        self._need_env("env.render")
        try:
            return np.asarray(self.env.render())
        except Exception as e:  # noqa: BLE001
            raise EnvOpError("env.render", e) from e

    def open(
        self,
        task: str,
        seed: int,
        split: str = "train",
        instruction: str | None = None,
        render: bool = False,
        expert: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """make_env(task, seed, split) + reset(seed) (+ render), and the expert when asked."""
        self.make_env(task, seed=seed, split=split)
        out = self.reset(seed=seed, options={"instruction": instruction} if instruction else None)
        self._expert = None
        if expert is not None:
            try:
                self._expert = self.suite.expert(task, noise=float(expert.get("noise", 0.0)), seed=seed)
            except Exception as e:  # noqa: BLE001
                raise EnvOpError("expert", e) from e
            self._expert_instruction = instruction
        return self._finish(out, render)

    def step(self, action: np.ndarray, render: bool = False) -> dict[str, Any]:
        self._need_env("env.step")
        try:
            obs, reward, terminated, truncated, info = self.env.step(action)
        except Exception as e:  # noqa: BLE001
            raise EnvOpError("env.step", e) from e
        self._obs = obs
        out = {"obs": obs, "reward": reward, "terminated": bool(terminated), "truncated": bool(truncated), "info": info}
        return self._finish(out, render)

    def expert_action(self) -> np.ndarray:
        """The session expert's action for the last observation, float32 (D,)."""
        if self._expert is None or self._obs is None:
            raise RuntimeError("expert_action: open the env with expert={...} first")
        raw = {
            "state": np.asarray(self._obs["state"], np.float32).reshape(-1),
            "instruction": self._expert_instruction or self._obs["instruction"],
        }
        return np.asarray(self._expert(raw, self.env), np.float32)

    def _finish(self, out: dict[str, Any], render: bool) -> dict[str, Any]:
        out["frame"] = self.render() if render else None
        out["expert_action"] = out["expert_error"] = None
        if self._expert is not None:
            try:
                out["expert_action"] = self.expert_action()
            except Exception as e:  # noqa: BLE001 - reported when the policy asks for the action
                out["expert_error"] = describe_exception(e)
        return out

    def _need_env(self, phase: str) -> None:
        if self.env is None:
            raise EnvOpError(phase, RuntimeError("no env: send make_env/open first"))

    def close(self) -> None:
        env, self.env, self._expert, self._obs = self.env, None, None, None
        if env is not None:
            try:
                env.close()
            except Exception:  # noqa: BLE001 - closing must not fail an episode
                pass


# --------------------------------------------------------------------------------------------
# wire helpers
# --------------------------------------------------------------------------------------------


def _plain(x: Any, depth: int = 0) -> Any:
    """Make ``x`` msgpack-numpy safe: arrays of bool/int/float, dicts, lists, scalars, str;
    anything else becomes its repr (info dicts may hold arbitrary objects)."""
    if x is None or isinstance(x, (bool, int, float, str, bytes)):
        return x
    if isinstance(x, np.generic):
        return x.item() if x.dtype.kind in wire.ALLOWED_KINDS else repr(x)
    if isinstance(x, np.ndarray):
        return x if x.dtype.kind in wire.ALLOWED_KINDS else repr(x)
    if depth > 16:
        return repr(x)
    if isinstance(x, dict):
        return {str(k) if not isinstance(k, (str, int)) else k: _plain(v, depth + 1) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v, depth + 1) for v in x]
    if hasattr(x, "__array__"):  # e.g. a torch tensor from an env
        try:
            return _plain(np.asarray(x), depth + 1)
        except Exception:  # noqa: BLE001
            pass
    return repr(x)


# --------------------------------------------------------------------------------------------
# the worker process
# --------------------------------------------------------------------------------------------


def serve(in_fd: int, out_fd: int) -> None:
    """The worker loop: read requests from in_fd, write replies to out_fd, until EOF/shutdown."""

    def recv() -> dict[str, Any] | None:
        try:
            return wire.read_frame(in_fd)
        except wire.ShortReadError:  # the evaluator went away mid-request
            return None

    def reply_ok(result: Any) -> None:
        wire.write_frame(out_fd, {"ok": True, "result": _plain(result)})

    def reply_err(phase: str, e: BaseException) -> None:
        desc = e.description if isinstance(e, EnvOpError) else describe_exception(e)
        wire.write_frame(out_fd, {"ok": False, "error": {"phase": getattr(e, "phase", phase), **desc}})

    init = recv()
    if init is None:
        return
    try:
        args = init.get("args", {})
        for mod in args.get("import_modules", []):
            importlib.import_module(mod)
        suite = make_suite(args["suite"], **(args.get("suite_kwargs") or {}))
        info = SuiteInfo.from_suite(suite)
    except Exception as e:  # noqa: BLE001
        reply_err("init", e)
        return
    reply_ok(info.to_dict())

    session = EnvSession(suite)
    while True:
        msg = recv()
        if msg is None:
            break
        cmd, a = msg.get("cmd"), msg.get("args") or {}
        try:
            if cmd == "open":
                result: Any = session.open(
                    a["task"], int(a["seed"]), a.get("split", "train"), a.get("instruction"),
                    bool(a.get("render", False)), a.get("expert"),
                )
            elif cmd == "step":
                result = session.step(np.asarray(a["action"], np.float32), bool(a.get("render", False)))
            elif cmd == "make_env":
                session.make_env(a["task"], a.get("seed"), a.get("split", "train"))
                result = {}
            elif cmd == "reset":
                result = session.reset(a.get("seed"), a.get("options"))
            elif cmd == "render":
                result = session.render()
            elif cmd == "expert_action":
                result = session.expert_action()
            elif cmd == "close":
                session.close()
                result = {}
            elif cmd == "ping":
                result = "pong"
            elif cmd == "shutdown":
                session.close()
                reply_ok({})
                break
            else:
                raise ValueError(f"unknown command {cmd!r}")
        except Exception as e:  # noqa: BLE001 - every env error is a reply, never a dead worker
            reply_err(str(cmd), e)
            continue
        try:
            reply_ok(result)
        except (TypeError, ValueError) as e:  # a result msgpack cannot carry
            reply_err(str(cmd), e)
    session.close()


def _worker_main() -> None:
    """Entry point of ``python -m eval.sim.workers``: protocol on stdin / the original stdout."""
    out_fd = os.dup(1)
    os.dup2(2, 1)  # env prints (Python or C) go to stderr, never into the protocol stream
    sys.stdout = sys.stderr
    serve(0, out_fd)


# --------------------------------------------------------------------------------------------
# the evaluator side
# --------------------------------------------------------------------------------------------


@dataclass
class WorkerConfig:
    """How to start env workers.

    suite / suite_kwargs: what each worker builds with ``make_suite``.
    import_modules:       modules each worker imports first (to register extra suites).
    python:               interpreter of the workers (None: this one); another virtualenv's
                          python serves a suite this process cannot import.
    start_timeout_s:      process start + imports + suite build.
    env:                  extra environment variables for the workers.
    """

    suite: str
    suite_kwargs: dict[str, Any] = field(default_factory=dict)
    import_modules: Sequence[str] = ()
    python: str | None = None
    start_timeout_s: float = 120.0
    env: dict[str, str] = field(default_factory=dict)


@dataclass
class WorkerEvent:
    """What ``EnvWorkerPool.poll`` reports for a worker.

    kind: "reply" (``result`` holds the command's result), "error" (``error``: a RemoteError from
    the env, the worker is fine), "failure" (``error``: WorkerCrashed / WorkerTimeout, the worker
    was killed and is being replaced) or "ready" (a replacement worker became idle).
    """

    worker: int
    kind: str
    result: Any = None
    error: Exception | None = None
    cmd: str = ""


class EnvWorker:
    """One worker process and its pipe; at most one request in flight."""

    def __init__(self, cfg: WorkerConfig, index: int) -> None:
        self.cfg, self.index = cfg, index
        env = dict(os.environ)
        env.update(cfg.env)
        roots = [str(_REPO_ROOT), str(_REPO_ROOT / "packages" / "vla_ebt_client")]  # the codec for foreign venvs
        env["PYTHONPATH"] = os.pathsep.join([*roots, *filter(None, [env.get("PYTHONPATH")])])
        env.setdefault("OMP_NUM_THREADS", "1")
        python = cfg.python or sys.executable
        try:
            self.proc = subprocess.Popen(
                [python, "-m", "eval.sim.workers"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env,
                close_fds=True,
            )
        except OSError as e:
            raise WorkerStartError(f"cannot start env worker with python {python!r}: {e}") from None
        self._in_fd = self.proc.stdin.fileno()
        self._out_fd = self.proc.stdout.fileno()
        os.set_blocking(self._out_fd, False)
        self._frames = wire.FrameReader()
        self.ready = False
        self.info: SuiteInfo | None = None
        self.cmd: str | None = None
        self.phase = ""
        self.deadline = math.inf
        self.timeout_s = 0.0
        self.dead = False
        self.send(
            "init",
            {"suite": cfg.suite, "suite_kwargs": dict(cfg.suite_kwargs), "import_modules": list(cfg.import_modules)},
            phase="worker start",
            timeout_s=cfg.start_timeout_s,
        )

    @property
    def busy(self) -> bool:
        return self.cmd is not None

    @property
    def idle(self) -> bool:
        return self.ready and not self.busy and not self.dead

    def fileno(self) -> int:
        return self._out_fd

    def send(self, cmd: str, args: dict[str, Any], phase: str, timeout_s: float) -> None:
        """Send one request (the previous one must have been answered). A dead pipe is reported
        by the next ``read`` as a crash."""
        if self.busy:
            raise RuntimeError(f"env worker {self.index}: {self.cmd!r} still in flight, cannot send {cmd!r}")
        self.cmd, self.phase, self.timeout_s = cmd, phase, float(timeout_s)
        self.deadline = time.monotonic() + float(timeout_s) if timeout_s and timeout_s > 0 else math.inf
        try:
            wire.write_frame(self._in_fd, {"cmd": cmd, "args": _plain(args)})
        except OSError:
            pass  # the process is gone; read() sees EOF

    def read(self) -> dict[str, Any] | None | bool:
        """Drain the pipe: the reply dict when complete, None if incomplete, False on EOF."""
        while True:
            try:
                chunk = os.read(self._out_fd, 1 << 20)
            except BlockingIOError:
                break
            except OSError:
                return False
            if not chunk:
                return self._take() if self._frames.ready else False
            self._frames.feed(chunk)
        return self._take() if self._frames.ready else None

    def _take(self) -> dict[str, Any]:
        self.cmd, self.deadline = None, math.inf
        return self._frames.pop()

    def exit_code(self, wait_s: float = 5.0) -> int | None:
        try:
            return self.proc.wait(timeout=wait_s)
        except subprocess.TimeoutExpired:
            self.kill()
            return self.proc.returncode

    def kill(self) -> None:
        self.dead = True
        if self.proc.poll() is None:
            self.proc.kill()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:  # pragma: no cover - SIGKILL is not ignorable
            pass
        for f in (self.proc.stdin, self.proc.stdout):
            try:
                f.close()
            except OSError:
                pass

    def shutdown(self, wait_s: float = 2.0) -> None:
        """Ask the worker to exit (closes its env); kill it if it does not within wait_s."""
        if self.dead:
            return
        if self.proc.poll() is None and not self.busy:
            self.send("shutdown", {}, "shutdown", wait_s)
        try:
            self.proc.stdin.close()
        except OSError:
            pass
        try:
            self.proc.wait(timeout=wait_s)
        except subprocess.TimeoutExpired:
            pass
        self.kill()


class RemoteEnvHandle:
    """What a policy's ``begin_episode(env=...)`` receives for an env living in a worker.

    ``expert_fn(raw_obs, env)`` returns the action the worker's expert computed for the latest
    observation (the worker sees the same observation the policy does); ``update`` is called by
    the evaluator with every reply of the episode.
    """

    def __init__(self, worker: int) -> None:
        self.worker = worker
        self._reply: dict[str, Any] | None = None

    def update(self, reply: dict[str, Any]) -> None:
        self._reply = reply

    def expert_fn(self, raw_obs: dict[str, Any], env: Any = None) -> np.ndarray:  # noqa: ARG002
        r = self._reply or {}
        if r.get("expert_error"):
            raise RemoteError("expert", r["expert_error"])
        if r.get("expert_action") is None:
            raise RuntimeError("the env worker computed no expert action (open the env with expert=...)")
        return np.asarray(r["expert_action"], np.float32)


class EnvWorkerPool:
    """N env workers; requests are asynchronous (``submit`` then ``poll``).

    A worker that crashes or exceeds a request's timeout is killed and replaced by a fresh one
    (``restarts`` counts them; ``failures`` keeps the messages); the failure is reported once as a
    "failure" event for the request it was serving. Use as a context manager or call ``close``.
    """

    def __init__(self, cfg: WorkerConfig, num_workers: int) -> None:
        if num_workers < 1:
            raise ValueError(f"EnvWorkerPool: num_workers must be >= 1, got {num_workers}")
        self.cfg = cfg
        self.workers: list[EnvWorker] = []
        self.restarts = 0
        self.failures: list[str] = []
        try:
            self.workers = [EnvWorker(cfg, i) for i in range(num_workers)]
            while not all(w.ready for w in self.workers):
                self.poll(timeout_s=None)
        except BaseException:
            self.close()
            raise
        self.info: SuiteInfo = self.workers[0].info  # type: ignore[assignment]

    def __len__(self) -> int:
        return len(self.workers)

    def __enter__(self) -> "EnvWorkerPool":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def idle_workers(self) -> list[int]:
        """Indices of the workers ready for a request. A worker found dead while idle (between
        episodes) is replaced here, so its death is never blamed on the next episode."""
        out = []
        for i, w in enumerate(self.workers):
            if w.idle and w.proc.poll() is not None:
                self._fail(w, WorkerCrashed("idle time between episodes", i, w.proc.returncode))
            elif w.idle:
                out.append(i)
        return out

    def submit(self, worker: int, cmd: str, args: dict[str, Any] | None = None, phase: str | None = None,
               timeout_s: float = 30.0) -> None:
        """Send ``cmd`` to an idle worker; ``phase`` names it in failure messages."""
        w = self.workers[worker]
        if not w.idle:
            raise RuntimeError(f"env worker {worker} is not idle (starting or busy with {w.cmd!r})")
        w.send(cmd, args or {}, phase or _PHASES.get(cmd, cmd), timeout_s)

    def call(self, worker: int, cmd: str, args: dict[str, Any] | None = None, phase: str | None = None,
             timeout_s: float = 30.0) -> Any:
        """Synchronous ``submit`` + wait; raises RemoteError / WorkerFailure."""
        self.submit(worker, cmd, args, phase, timeout_s)
        while True:
            for ev in self.poll():
                if ev.worker != worker or ev.kind == "ready":
                    continue
                if ev.error is not None:
                    raise ev.error
                return ev.result

    def poll(self, timeout_s: float | None = None) -> list[WorkerEvent]:
        """Wait until at least one busy worker answers, fails or times out (or ``timeout_s``
        passes: then possibly []); return the events."""
        busy = [w for w in self.workers if w.busy]
        if not busy:
            return []
        now = time.monotonic()
        wait = min(w.deadline for w in busy) - now
        if timeout_s is not None:
            wait = min(wait, timeout_s)
        wait = max(0.0, wait)
        try:
            readable, _, _ = select.select(busy, [], [], None if math.isinf(wait) else wait)
        except InterruptedError:  # pragma: no cover
            readable = []
        events: list[WorkerEvent] = []
        for w in readable:
            ev = self._read(w)
            if ev is not None:
                events.append(ev)
        now = time.monotonic()
        for w in busy:
            if w.busy and not w.dead and now >= w.deadline:
                events.append(self._fail(w, WorkerTimeout(w.phase, w.index, w.timeout_s)))
        return events

    def _read(self, w: EnvWorker) -> WorkerEvent | None:
        cmd, phase = w.cmd or "", w.phase
        msg = w.read()
        if msg is None:
            return None
        if msg is False:
            return self._fail(w, WorkerCrashed(phase, w.index, w.exit_code()))
        if cmd == "init":
            if not msg.get("ok"):
                w.kill()
                e = msg.get("error", {})
                raise WorkerStartError(
                    f"env worker could not build suite {self.cfg.suite!r} (kwargs {self.cfg.suite_kwargs}, imports "
                    f"{list(self.cfg.import_modules)}): {e.get('type')}: {e.get('message')}{e.get('where', '')}"
                )
            w.info = SuiteInfo.from_dict(msg["result"])
            w.ready = True
            return WorkerEvent(w.index, "ready", cmd=cmd)
        if msg.get("ok"):
            return WorkerEvent(w.index, "reply", result=msg.get("result"), cmd=cmd)
        err = msg.get("error") or {}
        return WorkerEvent(w.index, "error", error=RemoteError(str(err.get("phase", phase)), err), cmd=cmd)

    def _fail(self, w: EnvWorker, failure: WorkerFailure) -> WorkerEvent:
        cmd = w.cmd or ""
        w.kill()
        if cmd == "init":
            raise WorkerStartError(
                f"env worker for suite {self.cfg.suite!r} failed while starting: {failure} "
                f"(python {self.cfg.python or sys.executable}; see its stderr above)"
            )
        self.failures.append(str(failure))
        self.restarts += 1
        self.workers[w.index] = EnvWorker(self.cfg, w.index)  # becomes idle when its "ready" arrives
        return WorkerEvent(w.index, "failure", error=failure, cmd=cmd)

    def close(self) -> None:
        """Shut every worker down (a busy or unresponsive one is killed)."""
        for w in self.workers:
            if w.busy:
                w.kill()
        for w in self.workers:
            try:
                w.shutdown()
            except Exception:  # noqa: BLE001
                w.kill()


if __name__ == "__main__":
    _worker_main()
