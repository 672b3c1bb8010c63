"""Policy server: a saved VLAPolicy behind a WebSocket, msgpack-numpy on the wire.

::

    python -m eval.real.serve --policy runs/default/policy [--host 127.0.0.1 --port 8000]
        [--token T | env VLA_EBT_SERVE_TOKEN] [--max-message-mb 16] [--port-file FILE]

Protocol ``PROTOCOL`` (one binary msgpack frame per message): on connect the server sends the
metadata; each observation (validated by :mod:`eval.real.serve_request`) gets a ``result``
(actions float32 (B, H, D), unnormalized; a request may carry a committed ``prefix`` and soft
guidance for real-time chunking), each ``score`` request (an observation and candidate chunks) a
``scores`` reply (the policy's energy of each), or an ``error`` reply (``bad_request`` /
``internal``; the connection stays open). Message types and fields: :mod:`vla_ebt_client.protocol`.
``GET /healthz``: 200 JSON. Binds 127.0.0.1 by default; with a token the handshake needs
``Authorization: Bearer <token>`` (else HTTP 401); oversized messages close the connection with 1009.
Message fields, safety and concurrency: docs/serving.md.
"""

from __future__ import annotations

import argparse
import asyncio
import hmac
import http
import json
import logging
import os
import signal
import threading
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from vla_ebt.config_io import atomic_write_text
from vla_ebt_client.codec import CodecError, packb, unpackb

from .serve_request import (
    DEFAULT_MAX_MESSAGE_BYTES,
    INFER_FIELDS,
    PROTOCOL,
    REQUEST_TYPES,
    SCORE_FIELDS,
    RequestError,
    check_chunks,
    check_inpainting,
    check_observation,
    check_options,
    to_numpy,
)

__all__ = ["PolicyServer", "warmup", "main"]

LOOPBACK = ("127.0.0.1", "localhost", "::1")

log = logging.getLogger("vla_ebt.serve")


class PolicyServer:
    """Serve ``policy`` (anything with ``spec`` (ObservationSpec) and ``predict_chunk(obs, **options)``
    returning a PolicyOutput-like object; ``score_chunks(obs, chunks)`` for score requests) over
    WebSocket. What the head can do is read from ``policy.head.capabilities`` (inpainting,
    reports_energy, knobs) when the policy has one; a policy without says nothing and gets every
    request field passed through.

    ``start()`` runs it in a background thread (returns once listening; ``port`` is then the
    bound port, also for ``port=0``); ``stop()`` shuts it down. ``run()`` serves in the calling
    thread until SIGINT/SIGTERM.
    """

    def __init__(
        self,
        policy: Any,
        host: str = "127.0.0.1",
        port: int = 8000,
        token: str | None = None,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        max_batch: int = 64,
        workers: int = 1,
        ping_interval: float | None = 20.0,
        ping_timeout: float | None = 20.0,
        name: str | None = None,
    ) -> None:
        if max_message_bytes < 1024:
            raise ValueError(f"max_message_bytes must be >= 1024, got {max_message_bytes}")
        if workers < 1 or max_batch < 1:
            raise ValueError(f"workers and max_batch must be >= 1, got {workers}, {max_batch}")
        self.policy = policy
        self.spec = policy.spec
        self.host, self.port = host, int(port)
        self.token = token or None
        self.max_message_bytes = int(max_message_bytes)
        self.max_batch = int(max_batch)
        self.workers = int(workers)
        self.ping_interval, self.ping_timeout = ping_interval, ping_timeout
        self.name = name or type(policy).__name__
        self._model_lock = threading.Lock()
        self._executor: ThreadPoolExecutor | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_event: asyncio.Event | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._t_start = time.time()
        self.requests = 0
        self.errors = 0
        self.clients = 0
        self.connections = 0
        self.busy = False
        if host not in LOOPBACK and not self.token:
            log.warning("serving on %s without a token: anyone who can reach this address can drive the policy", host)

    # ------------------------------------------------------------------ metadata
    def metadata(self) -> dict[str, Any]:
        spec = self.spec.to_dict()
        cfg = getattr(self.policy, "cfg", None)
        ex = getattr(cfg, "execution", None)
        norm = getattr(self.policy, "normalizer", None)
        dims: dict[str, dict[str, int]] = {}
        for name in spec["embodiments"]:
            try:
                dims[name] = {"action_dim": int(norm.action_dim(name)), "state_dim": int(norm.state_dim(name))}
            except Exception:  # noqa: BLE001 - a policy without a normalizer: the padded dims
                dims[name] = {"action_dim": spec["action_dim"], "state_dim": spec["state_dim"]}
        return {
            "type": "metadata",
            "protocol": PROTOCOL,
            "policy": self.name,
            "spec": spec,
            "cameras": spec["num_views"],
            "image_size": spec["image_size"],
            "obs_steps": spec["obs_steps"],
            "state_dim": spec["state_dim"],
            "action_dim": spec["action_dim"],
            "horizon": spec["horizon"],
            "embodiments": spec["embodiments"],
            "embodiment_dims": dims,
            "head": getattr(cfg, "head", None),
            "latency_budget": "latency_budget_ms" in (self._head_knobs() or {}),
            "capabilities": self.capabilities(),
            "requests": list(REQUEST_TYPES),
            "execution": {
                "mode": getattr(ex, "mode", "receding"),
                "n_action_steps": int(getattr(ex, "n_action_steps", spec["horizon"])),
                "ensemble_decay": float(getattr(ex, "ensemble_decay", 0.01)),
            },
            "max_message_bytes": self.max_message_bytes,
            "max_batch": self.max_batch,
            "auth": self.token is not None,
        }

    def health(self) -> dict[str, Any]:
        return {
            "status": "ok",
            "protocol": PROTOCOL,
            "policy": self.name,
            "requests": self.requests,
            "errors": self.errors,
            "clients": self.clients,
            "connections": self.connections,
            "busy": self.busy,
            "uptime_s": round(time.time() - self._t_start, 3),
        }

    # ------------------------------------------------------------------ validation
    def check_observation(self, req: Mapping[str, Any], fields: tuple[str, ...] = INFER_FIELDS) -> dict[str, Any]:
        """Request dict -> observation for ``predict_chunk``; :func:`eval.real.serve_request.check_observation`
        against this server's spec and ``max_batch`` (RequestError otherwise); ``fields``: the
        request type's keys besides the observation."""
        return check_observation(req, self.spec, self.max_batch, fields)

    def capabilities(self) -> dict[str, bool]:
        """What the served head declares (``inpainting``, ``reports_energy``, ``warm_start``); empty
        when the policy has no ``head.capabilities`` (clients then assume a capability is present
        and the policy's own checks decide)."""
        caps = getattr(getattr(self.policy, "head", None), "capabilities", None)
        if caps is None:
            return {}
        out = {k: bool(getattr(caps, k, False)) for k in ("inpainting", "reports_energy", "warm_start")}
        if not callable(getattr(self.policy, "score_chunks", None)):
            out["reports_energy"] = False
        return out

    def _head_knobs(self) -> Mapping[str, Any] | None:
        """The served head's inference knobs (None when the policy does not say)."""
        caps = getattr(getattr(self.policy, "head", None), "capabilities", None)
        knobs = getattr(caps, "knobs", None)
        return knobs if isinstance(knobs, Mapping) else None

    # ------------------------------------------------------------------ work (worker thread)
    def _error_reply(self, rid: Any, kind: str, msg: str) -> dict[str, Any]:
        return {"type": "error", "request_id": rid, "kind": kind, "error": msg}

    def _head_name(self) -> Any:
        return getattr(getattr(self.policy, "cfg", None), "head", None) or self.name

    def _run_model(self, fn: Callable[[], Any]) -> tuple[Any, float, float, float]:
        """``fn()`` under the model lock -> (result, t_wait, t0, t1); the policy's own validation
        errors (SchemaError) become RequestError."""
        from vla_ebt.schema import SchemaError  # the policy's own validation errors

        t_wait = time.perf_counter()
        with self._model_lock:
            t0 = time.perf_counter()
            self.busy = True
            try:
                result = fn()
            except SchemaError as e:
                raise RequestError(str(e)) from None
            finally:
                self.busy = False
            t1 = time.perf_counter()
        return result, t_wait, t0, t1

    @staticmethod
    def _timings(t_recv: float, t_wait: float, t0: float, t1: float) -> dict[str, float]:
        return {"infer_ms": (t1 - t0) * 1e3, "queue_ms": (t0 - t_recv) * 1e3, "lock_wait_ms": (t0 - t_wait) * 1e3}

    def _infer(self, req: Mapping[str, Any], rid: Any, t_recv: float) -> dict[str, Any]:
        obs = self.check_observation(req)
        opts = check_options(req, self._head_knobs())
        caps = self.capabilities()
        opts.update(check_inpainting(req, self.spec, len(obs["instruction"]), inpainting=caps.get("inpainting"),
                                     head=self._head_name()))
        out, t_wait, t0, t1 = self._run_model(lambda: self.policy.predict_chunk(obs, **opts))
        return {
            "type": "result",
            "request_id": rid,
            "actions": to_numpy(out.actions).astype(np.float32),
            "energy": to_numpy(getattr(out, "energy", None)),
            "steps": to_numpy(getattr(out, "steps", None)),
            "grad_norm": to_numpy(getattr(out, "grad_norm", None)),
            "nfe": int(getattr(out, "nfe", 0) or 0),
            "latency_budget_ms": opts.get("latency_budget_ms"),
            "prefix_len": int(opts["prefix"].shape[1]) if "prefix" in opts else 0,
            **self._timings(t_recv, t_wait, t0, t1),
        }

    def _score(self, req: Mapping[str, Any], rid: Any, t_recv: float) -> dict[str, Any]:
        obs = self.check_observation(req, SCORE_FIELDS)
        caps = self.capabilities()
        if not callable(getattr(self.policy, "score_chunks", None)):
            raise RequestError(f"policy {self.name!r} cannot score chunks (no score_chunks)")
        chunks = check_chunks(req, self.spec, len(obs["instruction"]), self.max_batch,
                              reports_energy=caps.get("reports_energy"), head=self._head_name())
        energy, t_wait, t0, t1 = self._run_model(lambda: self.policy.score_chunks(obs, chunks))
        energy = to_numpy(energy).astype(np.float32).reshape(chunks.shape[:2])
        return {"type": "scores", "request_id": rid, "energy": energy, **self._timings(t_recv, t_wait, t0, t1)}

    def process(self, message: bytes | str, t_recv: float | None = None) -> tuple[bytes, bool]:
        """One request message -> (reply bytes, ok). Never raises (errors become replies)."""
        t_recv = time.perf_counter() if t_recv is None else t_recv
        rid = None
        try:
            if isinstance(message, str):
                raise RequestError("expected a binary msgpack message, got a text frame")
            req = unpackb(message)
            if not isinstance(req, dict):
                raise RequestError(f"a request must be a map, got {type(req).__name__}")
            rid = req.get("request_id")
            if not isinstance(rid, (int, str, type(None))):
                rid = None
                raise RequestError("'request_id' must be an int or a string")
            kind = req.get("type", "infer")
            if kind == "metadata":
                return packb({**self.metadata(), "request_id": rid}), True
            if kind == "infer":
                reply = self._infer(req, rid, t_recv)
            elif kind == "score":
                reply = self._score(req, rid, t_recv)
            else:
                raise RequestError(f"unknown request type {kind!r}; expected one of {list(REQUEST_TYPES)}")
            reply["server_ms"] = (time.perf_counter() - t_recv) * 1e3
            return packb(reply), True
        except (RequestError, CodecError) as e:
            return packb(self._error_reply(rid, "bad_request", str(e))), False
        except Exception as e:  # noqa: BLE001 - the server stays up whatever the model does
            log.error("request failed:\n%s", traceback.format_exc())
            return packb(self._error_reply(rid, "internal", f"{type(e).__name__}: {e}")), False

    # ------------------------------------------------------------------ asyncio side
    def _process_request(self, connection: Any, request: Any) -> Any:
        path = request.path.split("?", 1)[0]
        if path == "/healthz":
            resp = connection.respond(http.HTTPStatus.OK, json.dumps(self.health()) + "\n")
            resp.headers["Content-Type"] = "application/json"
            return resp
        if self.token is not None:
            got = request.headers.get("Authorization", "")
            if not hmac.compare_digest(got.encode(), f"Bearer {self.token}".encode()):
                log.warning("refused a connection from %s: missing or wrong token", connection.remote_address)
                return connection.respond(
                    http.HTTPStatus.UNAUTHORIZED,
                    "unauthorized: missing or wrong token (send the header 'Authorization: Bearer <token>')\n",
                )
        return None

    async def _handler(self, ws: Any) -> None:
        from websockets.exceptions import ConnectionClosed

        loop = asyncio.get_running_loop()
        self.clients += 1
        self.connections += 1
        peer = ws.remote_address
        log.info("client connected: %s", peer)
        try:
            await ws.send(packb(self.metadata()))
            async for message in ws:
                t_recv = time.perf_counter()
                reply, ok = await loop.run_in_executor(self._executor, self.process, message, t_recv)
                self.requests += 1
                if not ok:
                    self.errors += 1
                    log.warning("bad request from %s", peer)
                await ws.send(reply)
        except ConnectionClosed:
            pass
        finally:
            self.clients -= 1
            log.info("client disconnected: %s (close code %s)", peer, getattr(ws, "close_code", None))

    async def serve_async(self, ready: Callable[[int], None] | None = None) -> None:
        """Serve until :meth:`stop` (or the returned task is cancelled)."""
        from websockets.asyncio.server import serve

        self._loop = asyncio.get_running_loop()
        self._stop_event = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="vla-ebt-infer")
        try:
            async with serve(
                self._handler,
                self.host,
                self.port,
                process_request=self._process_request,
                max_size=self.max_message_bytes,
                compression=None,  # numpy payloads: deflate costs CPU for little gain
                ping_interval=self.ping_interval,
                ping_timeout=self.ping_timeout,
            ) as server:
                self.port = int(server.sockets[0].getsockname()[1])
                log.info("serving %s on ws://%s:%d (auth %s, max message %.1f MiB)", self.name, self.host, self.port,
                         "on" if self.token else "off", self.max_message_bytes / 2**20)
                if ready is not None:
                    ready(self.port)
                await self._stop_event.wait()
        finally:
            self._executor.shutdown(wait=True, cancel_futures=True)

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"ws://{host}:{self.port}"

    def start(self, timeout: float = 30.0) -> "PolicyServer":
        """Serve in a daemon thread; returns once listening (raises if binding failed)."""
        if self._thread is not None and self._thread.is_alive():
            raise RuntimeError("server already running")
        self._ready.clear()
        self._error = None

        def run() -> None:
            try:
                asyncio.run(self.serve_async(ready=lambda _p: self._ready.set()))
            except BaseException as e:  # noqa: BLE001 - reported to start()
                self._error = e
                self._ready.set()

        self._thread = threading.Thread(target=run, name="vla-ebt-serve", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            raise TimeoutError(f"policy server did not start within {timeout} s")
        if self._error is not None:
            raise RuntimeError(f"policy server failed to start: {self._error}") from self._error
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Stop serving (closes every connection with 1001 'going away') and join the thread."""
        if self._loop is not None and self._stop_event is not None:
            try:
                self._loop.call_soon_threadsafe(self._stop_event.set)
            except RuntimeError:  # loop already closed
                pass
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def __enter__(self) -> "PolicyServer":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def run(self, port_file: str | os.PathLike | None = None) -> None:
        """Serve in this thread until SIGINT / SIGTERM."""

        async def main() -> None:
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                try:
                    loop.add_signal_handler(sig, lambda: self._stop_event and self._stop_event.set())
                except (NotImplementedError, RuntimeError):  # pragma: no cover - non-main thread / Windows
                    pass

            def ready(port: int) -> None:
                print(f"serving on ws://{self.host}:{port}", flush=True)
                if port_file:
                    atomic_write_text(port_file, str(port))

            await self.serve_async(ready=ready)

        asyncio.run(main())


def warmup(policy: Any) -> float:
    """One dummy inference (zeros) so that the first real request is not the slow one; ms."""
    s = policy.spec
    obs = {
        "images": np.zeros((1, s.num_views, 3, s.image_size, s.image_size), np.uint8),
        "instruction": ["warm up"],
        "state": np.zeros((1, s.obs_steps, s.state_dim), np.float32),
        "embodiment": np.zeros((1,), np.int64),
    }
    t0 = time.perf_counter()
    policy.predict_chunk(obs)
    return (time.perf_counter() - t0) * 1e3


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m eval.real.serve", description=__doc__.split("\n\n")[0])
    p.add_argument("--policy", required=True, help="folder written by VLAPolicy.save_pretrained")
    p.add_argument("--host", default="127.0.0.1", help="bind address (default loopback only)")
    p.add_argument("--port", type=int, default=8000, help="port (0: any free port; see --port-file)")
    p.add_argument("--token", default=os.environ.get("VLA_EBT_SERVE_TOKEN"),
                   help="shared secret; clients send 'Authorization: Bearer <token>' (default: env VLA_EBT_SERVE_TOKEN)")
    p.add_argument("--max-message-mb", type=float, default=DEFAULT_MAX_MESSAGE_BYTES / 2**20,
                   help="largest accepted request in MiB (larger ones close the connection with 1009)")
    p.add_argument("--max-batch", type=int, default=64)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    p.add_argument("--port-file", default=None, help="write the bound port here once listening")
    p.add_argument("--no-warmup", action="store_true", help="skip the dummy inference at start")
    p.add_argument("--log-level", default="INFO")
    a = p.parse_args(argv)
    logging.basicConfig(level=a.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("websockets").setLevel(logging.WARNING)

    import torch

    from vla_ebt.policy import VLAPolicy

    torch.set_num_threads(max(1, a.threads))
    policy = VLAPolicy.from_pretrained(a.policy, map_location=a.device)
    if not a.no_warmup:
        log.info("warm-up inference: %.1f ms", warmup(policy))
    server = PolicyServer(policy, host=a.host, port=a.port, token=a.token,
                          max_message_bytes=int(a.max_message_mb * 2**20), max_batch=a.max_batch,
                          name=str(Path(a.policy)))
    server.run(port_file=a.port_file)


if __name__ == "__main__":
    main()
