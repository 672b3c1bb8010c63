"""Errors of env operations and of worker processes, and how an exception is described on the wire."""

from __future__ import annotations

import traceback
from pathlib import Path

#: how a command is named in failure messages
PHASES = {"open": "make_env/env.reset", "step": "env.step", "reset": "env.reset", "render": "env.render",
          "make_env": "make_env", "expert_action": "expert", "close": "env.close"}


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
