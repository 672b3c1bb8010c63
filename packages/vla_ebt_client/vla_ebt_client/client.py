"""Robot-side client of the policy server (numpy + websockets + msgpack only; never imports torch).

::

    from vla_ebt_client import PolicyClient, ActionChunkBroker

    client = PolicyClient("ws://127.0.0.1:8000", token=None)
    client.metadata                        # the server's observation schema (cameras, image size, ...)
    reply = client.infer({"images": uint8 (1, V, 3, S, S), "instruction": "pick up the cup",
                          "state": float32 (1, To, S), "embodiment": 0})
    reply["actions"]                       # float32 (1, H, D), unnormalized; also infer_ms, energy, steps
    client.infer(obs, prefix=committed, prefix_weights=w, soft_target=prev)   # real-time chunking (rtc)
    client.score(obs, chunks)              # (B, K) energies of candidate chunks (B, K, H, D) (EBT)

    broker = ActionChunkBroker(client, mode="receding", n_action_steps=4)   # or mode="ensemble"
    broker.reset()                         # at episode start
    action = broker.act(obs)               # (B, D): one action per control step
    broker.latency_stats()                 # round trip / server / overhead p50, p99 (ms)

Reconnects: a dropped connection (server restart, network blip, timeout) is retried up to
``max_retries`` times with exponential backoff (``backoff_s`` doubling up to ``max_backoff_s``);
the request is re-sent (inference is stateless on the server, so this is safe). Refusals are
not retried: a wrong token (:class:`AuthenticationError`), an oversized message
(:class:`MessageTooLargeError`), and invalid observations (:class:`ServerError`, with the
server's message). A client is not thread-safe: use one per thread.
"""

from __future__ import annotations

import collections
import http.client
import itertools
import json
import math
import time
from typing import Any, Callable, Mapping
from urllib.parse import urlsplit

import numpy as np

from .codec import packb, unpackb
from .protocol import CONTROL_KEYS, OBS_KEYS, REPLY_TYPES

__all__ = [
    "PolicyClient",
    "LatencyStats",
    "PolicyClientError",
    "ServerError",
    "AuthenticationError",
    "MessageTooLargeError",
    "to_numpy_observation",
]

CLOSE_MESSAGE_TOO_BIG = 1009


class PolicyClientError(RuntimeError):
    """Base class of the client's errors (connection lost for good, protocol mismatch)."""


class ServerError(PolicyClientError):
    """The server answered with an error (``kind`` "bad_request" or "internal")."""

    def __init__(self, message: str, kind: str = "bad_request", request_id: Any = None) -> None:
        super().__init__(message)
        self.kind, self.request_id = kind, request_id


class AuthenticationError(PolicyClientError):
    """The server refused the token (HTTP 401); not retried."""


class MessageTooLargeError(PolicyClientError):
    """The request exceeds the server's ``max_message_bytes``; not retried."""


class LatencyStats:
    """Bounded window of millisecond samples with percentiles."""

    def __init__(self, window: int = 10_000) -> None:
        self.samples: collections.deque[float] = collections.deque(maxlen=int(window))
        self.count = 0

    def add(self, ms: float) -> None:
        if ms is not None and math.isfinite(ms):
            self.samples.append(float(ms))
            self.count += 1

    def summary(self) -> dict[str, float | int | None]:
        if not self.samples:
            return {"count": 0, "p50_ms": None, "p90_ms": None, "p99_ms": None, "mean_ms": None, "max_ms": None}
        x = np.asarray(self.samples)
        p50, p90, p99 = np.percentile(x, [50, 90, 99])
        return {"count": self.count, "p50_ms": float(p50), "p90_ms": float(p90), "p99_ms": float(p99),
                "mean_ms": float(x.mean()), "max_ms": float(x.max())}


def _array(v: Any) -> Any:
    """Tensor-like (duck-typed; torch is never imported here) -> numpy; others unchanged."""
    if hasattr(v, "detach") and hasattr(v, "cpu"):
        return v.detach().cpu().numpy()
    return v


def to_numpy_observation(obs: Mapping[str, Any]) -> dict[str, Any]:
    """An observation dict with tensors or nested lists -> numpy arrays (strings kept as they are)."""
    out: dict[str, Any] = {}
    for k, v in obs.items():
        v = _array(v)
        if k in ("images", "state") and not isinstance(v, np.ndarray):
            v = np.asarray(v)
        if k == "embodiment" and isinstance(v, (list, tuple)):
            v = np.asarray(v, np.int64)
        if k == "instruction" and isinstance(v, tuple):
            v = list(v)
        out[k] = v
    return out


class PolicyClient:
    """Synchronous client: ``infer(obs) -> dict`` (see the module docstring).

    url:            ws://host:port of ``python -m eval.real.serve``.
    token:          shared secret (sent as ``Authorization: Bearer <token>``).
    timeout_s:      per-reply timeout; a timeout drops the connection and counts as a retry.
    max_retries:    reconnect attempts per call (connect failures and dropped connections).
    backoff_s / max_backoff_s: first retry delay and its cap (doubling).
    connect:        connect now (fails fast on a wrong URL/token); else on the first call.
    """

    def __init__(
        self,
        url: str = "ws://127.0.0.1:8000",
        token: str | None = None,
        *,
        timeout_s: float = 30.0,
        open_timeout_s: float = 5.0,
        max_retries: int = 5,
        backoff_s: float = 0.1,
        max_backoff_s: float = 2.0,
        max_reply_bytes: int = 64 * 2**20,
        check_size: bool = True,
        connect: bool = True,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if not url.startswith(("ws://", "wss://")):
            raise ValueError(f"url must start with ws:// or wss://, got {url!r}")
        self.url, self.token = url, token
        self.timeout_s, self.open_timeout_s = float(timeout_s), float(open_timeout_s)
        self.max_retries = int(max_retries)
        self.backoff_s, self.max_backoff_s = float(backoff_s), float(max_backoff_s)
        self.max_reply_bytes = int(max_reply_bytes)
        self.check_size = bool(check_size)
        self._sleep = sleep
        self._ws: Any = None
        self._ids = itertools.count(1)
        self.metadata: dict[str, Any] = {}
        self.reconnects = 0
        self.connects = 0
        self.round_trip = LatencyStats()
        self.server_infer = LatencyStats()
        self.server_total = LatencyStats()
        self.overhead = LatencyStats()
        self.score_round_trip = LatencyStats()
        self.last_score_reply: dict[str, Any] | None = None
        if connect:
            self._with_retries(lambda: None)

    # ------------------------------------------------------------------ connection
    def _open(self) -> None:
        from websockets.exceptions import InvalidStatus
        from websockets.sync.client import connect

        headers = {"Authorization": f"Bearer {self.token}"} if self.token else None
        try:
            ws = connect(self.url, additional_headers=headers, open_timeout=self.open_timeout_s,
                         max_size=self.max_reply_bytes, compression=None, proxy=None, legacy=True)
        except InvalidStatus as e:
            if e.response.status_code == 401:
                raise AuthenticationError(f"{self.url}: the server refused the token (HTTP 401)") from None
            raise
        try:
            meta = unpackb(ws.recv(timeout=self.timeout_s))
        except BaseException:
            ws.close()
            raise
        if not isinstance(meta, dict) or meta.get("type") != "metadata":
            ws.close()
            raise PolicyClientError(f"{self.url}: expected the server's metadata on connect, got {str(meta)[:200]}")
        self.metadata = meta
        self._ws = ws
        self.connects += 1

    def close(self) -> None:
        if self._ws is not None:
            try:
                self._ws.close()
            except Exception:  # noqa: BLE001
                pass
            self._ws = None

    def __enter__(self) -> "PolicyClient":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    @property
    def connected(self) -> bool:
        return self._ws is not None

    def _with_retries(self, call: Callable[[], Any]) -> Any:
        """Run ``call`` on a live connection, reconnecting with backoff on connection failures."""
        from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI

        last: BaseException | None = None
        for attempt in range(self.max_retries + 1):
            if attempt:
                self.reconnects += 1
                self._sleep(min(self.max_backoff_s, self.backoff_s * 2 ** (attempt - 1)))
            try:
                if self._ws is None:
                    self._open()
                return call()
            except ConnectionClosed as e:
                self.close()
                rcvd = e.rcvd
                if rcvd is not None and rcvd.code == CLOSE_MESSAGE_TOO_BIG:
                    raise MessageTooLargeError(f"{self.url}: the server closed the connection: message too big "
                                               f"({rcvd.reason})") from None
                last = e
            except (AuthenticationError, InvalidURI):
                self.close()
                raise
            except (OSError, TimeoutError, InvalidHandshake, EOFError) as e:
                self.close()
                last = e
        raise PolicyClientError(
            f"{self.url}: no answer after {self.max_retries + 1} attempt(s): {type(last).__name__}: {last}"
        ) from last

    # ------------------------------------------------------------------ requests
    def _roundtrip(self, payload: bytes, rid: int) -> dict[str, Any]:
        ws = self._ws
        ws.send(payload)
        while True:
            reply = unpackb(ws.recv(timeout=self.timeout_s))
            if not isinstance(reply, dict):
                raise PolicyClientError(f"malformed reply: {str(reply)[:200]}")
            if reply.get("request_id") == rid:
                return reply
            # a reply to an earlier request on this connection (cannot happen with this client's
            # one-request-at-a-time protocol, but never hand back a stale chunk)

    def _request(self, kind: str, obs: Mapping[str, Any], fields: Mapping[str, Any]) -> tuple[dict[str, Any], float]:
        """Send one ``kind`` request (the observation plus ``fields``, those that are not None) and
        return (its reply, round trip ms); ServerError for an error reply."""
        rid = next(self._ids)
        msg = to_numpy_observation(obs)
        for k, v in fields.items():
            if k in OBS_KEYS or k in CONTROL_KEYS:
                raise ValueError(f"{kind}: {k!r} is not a request field (it is part of the observation or protocol)")
            if v is not None:
                msg[k] = _array(v)
        msg["request_id"] = rid
        if kind != "infer":
            msg["type"] = kind
        payload = packb(msg)
        limit = self.metadata.get("max_message_bytes")
        if self.check_size and limit and len(payload) > limit:
            raise MessageTooLargeError(f"request of {len(payload)} bytes exceeds the server's limit of {limit} bytes")
        t0 = time.perf_counter()
        reply = self._with_retries(lambda: self._roundtrip(payload, rid))
        rtt = (time.perf_counter() - t0) * 1e3
        if reply.get("type") == "error":
            raise ServerError(f"server rejected the request: {reply.get('error')}", reply.get("kind", "bad_request"), rid)
        if reply.get("type") != REPLY_TYPES[kind]:
            raise PolicyClientError(f"unexpected reply type {reply.get('type')!r} to a {kind!r} request")
        reply["round_trip_ms"] = rtt
        return reply, rtt

    def infer(self, obs: Mapping[str, Any], **fields: Any) -> dict[str, Any]:
        """Send one observation (schema of :mod:`vla_ebt.schema`, numpy arrays) and return the
        reply dict: ``actions`` (B, H, D) float32, ``energy``, ``steps``, ``grad_norm``, ``nfe``,
        ``infer_ms``, ``server_ms``, ``queue_ms`` and the client-side ``round_trip_ms``.

        fields: further request fields, sent when not None (arrays as numpy, tensors converted), in
        the robot's action units (the server normalizes them with the policy's normalizer):
        ``prefix`` (B, d, D) (or one sample's (d, D)) committed actions, returned exactly as the
        chunk's first d steps; ``prefix_weights`` (H,) or (B, H) with ``soft_target`` (B, H, D) (or
        (H, D)): soft guidance toward the previous plan (heads with ``capabilities.inpainting``);
        ``latency_budget_ms`` (see docs/realtime.md). Raises :class:`ServerError` when the server
        rejects the request (a wrong shape, a field the head cannot take: the message names it),
        ValueError for a field that is an observation key or ``request_id`` / ``type``."""
        reply, rtt = self._request("infer", obs, fields)
        self.round_trip.add(rtt)
        self.server_infer.add(reply.get("infer_ms"))
        self.server_total.add(reply.get("server_ms"))
        if reply.get("server_ms") is not None:
            self.overhead.add(rtt - reply["server_ms"])
        return reply

    def score(self, obs: Mapping[str, Any], chunks: Any) -> np.ndarray:
        """The policy's energies (B, K) float32 of candidate chunks ``chunks`` (B, K, H, D) (or
        (K, H, D), scored under every observation of the batch), in the robot's action units, under
        ``obs`` (lower is better; ``VLAPolicy.score_chunks`` on the server). The whole reply (with
        ``infer_ms``, ``server_ms``, ``round_trip_ms``) is kept as ``last_score_reply``. Raises
        :class:`ServerError` when the head has no energy (``metadata["capabilities"]
        ["reports_energy"]`` False) or the chunks have the wrong shape. This is the ``score`` of the
        chunk broker's ``energy_gate`` strategy."""
        reply, rtt = self._request("score", obs, {"chunks": chunks})
        self.score_round_trip.add(rtt)
        self.last_score_reply = reply
        return np.asarray(reply["energy"], np.float32)

    def get_metadata(self) -> dict[str, Any]:
        """Ask the server for its metadata again (also refreshes ``self.metadata``)."""
        rid = next(self._ids)
        payload = packb({"type": "metadata", "request_id": rid})
        meta = self._with_retries(lambda: self._roundtrip(payload, rid))
        meta.pop("request_id", None)
        self.metadata = meta
        return meta

    def health(self, timeout_s: float = 5.0) -> dict[str, Any]:
        """GET /healthz on the server's host and port (plain HTTP; no token)."""
        u = urlsplit(self.url)
        cls = http.client.HTTPSConnection if u.scheme == "wss" else http.client.HTTPConnection
        conn = cls(u.hostname, u.port or (443 if u.scheme == "wss" else 80), timeout=timeout_s)
        try:
            conn.request("GET", "/healthz")
            r = conn.getresponse()
            body = r.read()
            if r.status != 200:
                raise PolicyClientError(f"GET /healthz: HTTP {r.status}: {body[:200]!r}")
            return json.loads(body)
        finally:
            conn.close()

    def latency_stats(self) -> dict[str, Any]:
        """p50/p90/p99/mean of infer round trips, server-side inference and total, and the overhead
        (round trip minus server time: network + codec + client), and of score round trips, in ms."""
        return {
            "round_trip": self.round_trip.summary(),
            "server_infer": self.server_infer.summary(),
            "server_total": self.server_total.summary(),
            "overhead": self.overhead.summary(),
            "score_round_trip": self.score_round_trip.summary(),
            "reconnects": self.reconnects,
            "connects": self.connects,
        }
