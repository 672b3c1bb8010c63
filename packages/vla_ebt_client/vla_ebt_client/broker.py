"""Chunk execution: action chunks (B, H, D) -> one action (B, D) per control step.

The one implementation of Diffusion Policy's receding horizon and ACT's temporal ensembling:
the robot client drives it with a :class:`~vla_ebt_client.client.PolicyClient`, and
``VLAPolicy.select_action`` with its own ``predict_chunk``. It never imports torch: a chunk is
any array with ``shape``, integer indexing and ``*`` / ``+`` by Python floats (numpy arrays and
torch tensors alike), and actions come back in the chunk's own type, dtype and device.

::

    broker = ActionChunkBroker(client)                       # defaults from client.metadata
    broker = ActionChunkBroker(lambda obs: chunk_of(obs), mode="ensemble", horizon=16)
    broker.reset()                                           # at episode start
    action = broker.act(obs)                                 # (B, D)
"""

from __future__ import annotations

import math
from typing import Any, Callable, Mapping

import numpy as np

__all__ = ["ActionChunkBroker", "MODES"]

MODES = ("receding", "ensemble")


def _weighted_mean(rows: list[Any], weights: list[float]) -> Any:
    """sum_i rows[i] * weights[i] / sum(weights), in the rows' own array type and dtype."""
    total = math.fsum(weights)
    out = rows[0] * (weights[0] / total)
    for row, w in zip(rows[1:], weights[1:]):
        out = out + row * (w / total)
    return out


class ActionChunkBroker:
    """Turns chunks into one action per control step.

    source:         a client with ``infer(obs) -> {"actions": (B, H, D)}`` (e.g. PolicyClient;
                    each chunk becomes float32 numpy, the reply is kept as ``last_reply`` and the
                    defaults below come from its ``metadata``: ``execution`` and ``horizon``), or
                    a callable ``obs -> (B, H, D)`` chunk (numpy or torch, used as it is).
    mode:           "receding": execute the first ``n_action_steps`` actions of each chunk, then
                    request a new chunk. "ensemble": request a chunk every step and average, for
                    the current step, every chunk that covers it with weights
                    ``exp(-ensemble_decay * age)`` (age in control steps since it was planned).
    horizon:        H, the chunk length (only checks ``n_action_steps``; None: unchecked).

    ``act`` returns (B, D) (the padded action dim; slice to your embodiment's own dims).
    ``chunks`` / ``steps`` count requests and actions since construction (not reset per episode).
    Raises ValueError for an unknown mode or ``n_action_steps`` outside [1, horizon], TypeError
    for a source that is neither a client nor callable.
    """

    def __init__(
        self,
        source: Any,
        mode: str | None = None,
        n_action_steps: int | None = None,
        ensemble_decay: float | None = None,
        *,
        horizon: int | None = None,
    ) -> None:
        self.client = source if callable(getattr(source, "infer", None)) else None
        if self.client is None and not callable(source):
            raise TypeError(f"source must have infer(obs) or be callable, got {type(source).__name__}")
        self._source: Callable[[Any], Any] | None = None if self.client is not None else source
        meta = getattr(self.client, "metadata", None) or {}
        ex = meta.get("execution") or {}
        self.mode = mode or ex.get("mode", "receding")
        if self.mode not in MODES:
            raise ValueError(f"mode must be 'receding' or 'ensemble', got {self.mode!r}")
        self.horizon = int(horizon or meta.get("horizon", 0)) or None
        self.n_action_steps = int(n_action_steps or ex.get("n_action_steps") or self.horizon or 1)
        if self.n_action_steps < 1 or (self.horizon and self.n_action_steps > self.horizon):
            raise ValueError(f"n_action_steps must be in [1, horizon={self.horizon}], got {self.n_action_steps}")
        self.ensemble_decay = float(ex.get("ensemble_decay", 0.01) if ensemble_decay is None else ensemble_decay)
        self.chunks = 0
        self.steps = 0
        self.last_reply: dict[str, Any] | None = None
        self.reset()

    def reset(self) -> None:
        """Forget queued actions and ensemble history (call at episode start)."""
        self._queue: list[Any] = []
        self._ensemble: list[tuple[int, Any]] = []  # (step the chunk was planned at, chunk (B, H, D))
        self._t = 0

    def state(self) -> dict[str, Any]:
        """The per-episode state ``reset()`` clears: ``queue`` (actions still to execute), ``ensemble``
        ((step, chunk) pairs) and ``t`` (ensemble step counter); shallow copies, arrays shared."""
        return {"queue": list(self._queue), "ensemble": list(self._ensemble), "t": self._t}

    def load_state(self, state: Mapping[str, Any]) -> None:
        """Restore a state captured by :meth:`state` (to interleave several episodes)."""
        self._queue = list(state["queue"])
        self._ensemble = list(state["ensemble"])
        self._t = int(state["t"])

    def _request(self, obs: Any) -> Any:
        if self.client is not None:
            reply = self.client.infer(obs)
            self.last_reply = reply
            chunk = np.asarray(reply["actions"], np.float32)
        else:
            chunk = self._source(obs)  # type: ignore[misc]
        if len(chunk.shape) != 3:
            raise ValueError(f"a chunk must be (B, H, D), got shape {tuple(chunk.shape)}")
        self.chunks += 1
        return chunk

    def act(self, obs: Any) -> Any:
        """The action (B, D) for this control step (requests a chunk when needed)."""
        self.steps += 1
        if self.mode == "receding":
            if not self._queue:
                chunk = self._request(obs)
                self._queue = [chunk[:, i] for i in range(min(self.n_action_steps, chunk.shape[1]))]
            return self._queue.pop(0)
        chunk = self._request(obs)
        self._ensemble.append((self._t, chunk))
        self._ensemble = [(t0, c) for t0, c in self._ensemble if self._t - t0 < c.shape[1]]
        rows = [c[:, self._t - t0] for t0, c in self._ensemble]
        weights = [math.exp(-self.ensemble_decay * (self._t - t0)) for t0, _ in self._ensemble]
        self._t += 1
        return _weighted_mean(rows, weights)

    def latency_stats(self) -> dict[str, Any]:
        """The client's latency summary (if it has one) plus ``chunks`` and ``steps``."""
        stats = self.client.latency_stats() if hasattr(self.client, "latency_stats") else {}
        return {**stats, "chunks": self.chunks, "steps": self.steps}
