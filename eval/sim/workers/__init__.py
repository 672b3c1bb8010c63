"""Env worker processes: each builds one suite and serves its envs over a pipe.

A worker is a fresh interpreter (``python -m eval.sim.workers``, possibly another virtualenv's)
speaking :mod:`vla_ebt_client.wire` frames; :class:`EnvSession` is the env side of an episode, run
in-process by the serial evaluator and inside a worker otherwise (hence identical results).
:class:`EnvWorkerPool` replaces workers that die or stop answering. Protocol and commands:
docs/evaluation.md ("Env worker processes").
"""

from .errors import (
    EnvOpError,
    RemoteError,
    WorkerCrashed,
    WorkerFailure,
    WorkerStartError,
    WorkerTimeout,
    describe_exception,
    format_error,
)
from .pool import EnvWorker, EnvWorkerPool, RemoteEnvHandle, WorkerConfig, WorkerEvent
from .server import serve
from .session import EnvSession, SuiteInfo

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
