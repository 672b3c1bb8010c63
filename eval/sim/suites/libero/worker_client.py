"""The LIBERO worker process seen from the main process: :class:`LiberoWorker` starts
``eval/sim/libero_worker.py`` with the LIBERO interpreter (:func:`resolve_python`) and speaks the
request/reply protocol to it over :mod:`vla_ebt_client.wire` frames (the protocol: that script's
docstring). Errors: :class:`LiberoUnavailableError` (no LIBERO venv / LIBERO not importable),
:class:`LiberoWorkerError` (a command failed, timed out, or the worker died).
"""

from __future__ import annotations

import collections
import os
import subprocess
import threading
import time
import weakref
from pathlib import Path
from typing import Any

from vla_ebt_client import wire

from ... import libero_worker

__all__ = [
    "LiberoWorker",
    "LiberoWorkerError",
    "LiberoUnavailableError",
    "resolve_python",
    "DEFAULT_PYTHON",
    "INSTALL_HINT",
]

REPO_ROOT = Path(__file__).resolve().parents[4]
WORKER_SCRIPT = Path(libero_worker.__file__).resolve()
DEFAULT_PYTHON = REPO_ROOT / ".venv-libero" / "bin" / "python"
PYTHON_ENV_VAR = "VLA_EBT_LIBERO_PYTHON"
INSTALL_HINT = "create it with `bash setup.sh --install-only` (installs .venv-libero unless VLA_EBT_SKIP_LIBERO=1)"


class LiberoUnavailableError(RuntimeError):
    """The LIBERO virtualenv is missing or does not provide LIBERO."""


class LiberoWorkerError(RuntimeError):
    """A LIBERO worker command failed (``remote_traceback``: the worker's), timed out, or the
    worker process died."""

    def __init__(self, message: str, remote_traceback: str = "") -> None:
        super().__init__(message)
        self.remote_traceback = remote_traceback


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
