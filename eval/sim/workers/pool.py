"""The evaluator side: worker processes (:class:`EnvWorker`), remote env handles and a pool that
replaces dead or hung workers (:class:`EnvWorkerPool`)."""

from __future__ import annotations

import math
import os
import select
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from vla_ebt_client import wire

from .errors import PHASES, RemoteError, WorkerCrashed, WorkerFailure, WorkerStartError, WorkerTimeout
from .session import SuiteInfo, _plain

_REPO_ROOT = Path(__file__).resolve().parents[3]


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
        w.send(cmd, args or {}, phase or PHASES.get(cmd, cmd), timeout_s)

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
