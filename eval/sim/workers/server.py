"""The worker process: the request loop over :mod:`vla_ebt_client.wire` frames (``python -m eval.sim.workers``)."""

from __future__ import annotations

import importlib
import os
import sys
from typing import Any

import numpy as np

from vla_ebt_client import wire

from ..suites import make_suite
from .errors import EnvOpError, describe_exception
from .session import EnvSession, SuiteInfo, _plain


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
