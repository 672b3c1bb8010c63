"""Chunk execution: action chunks (B, H, D) -> one action (B, D) per control step.

The one implementation of Diffusion Policy's receding horizon, ACT's temporal ensembling and
asynchronous (real-time) execution: the robot client drives it with a
:class:`~vla_ebt_client.client.PolicyClient`, ``VLAPolicy.select_action`` with its own
``predict_chunk``, and the sim rollout with a local policy source. It never imports torch: a chunk
is any array with ``shape``, integer indexing and ``*`` / ``+`` by Python floats (numpy arrays and
torch tensors alike); the ``sync`` strategy returns actions in the chunk's own type, dtype and
device, the asynchronous ones float32 numpy.

::

    broker = ActionChunkBroker(client)                       # defaults from client.metadata
    broker = ActionChunkBroker(lambda obs: chunk_of(obs), mode="ensemble", horizon=16)
    broker = ActionChunkBroker(client, strategy="rtc", control_hz=20)   # never waits for inference
    broker.reset()                                           # at episode start
    action = broker.act(obs)                                 # (B, D)

Strategies (``STRATEGIES``; docs/realtime.md, "Asynchronous execution"):

* ``sync``: the control loop waits for every chunk (``mode`` "receding" or "ensemble").
* ``naive_async``: the next request goes out, in the background, when ``request_remaining``
  actions of the plan remain; the new chunk replaces the plan when it arrives.
* ``temporal_ensemble``: as naive_async, but every step averages all arrived chunks covering it
  (weights ``exp(-ensemble_decay * age)``).
* ``rtc``: the request carries the actions that will execute during the expected delay
  (``prefix``, returned exactly by the server or the in-process policy) and soft weights toward the
  rest of the old plan (``prefix_weights``, ``soft_target``); the head inpaints (needs
  ``capabilities.inpainting``, which the server's metadata declares).
* ``energy_gate``: when a chunk arrives, the source scores (``source.score(obs, chunks)``, EBT:
  ``PolicyClient.score`` over the wire, the policy's ``score_chunks`` in process) the new chunk and
  the rest of the old plan followed by the new chunk's later actions under the current
  observation; the lower energy is executed.
"""

from __future__ import annotations

import itertools
import math
import time
from functools import partial
from typing import Any, Callable, Mapping

import numpy as np

from .realtime import (
    ASYNC_STRATEGIES,
    ON_STARVE,
    STRATEGIES,
    DelayEstimator,
    Job,
    RealTime,
    Timing,
    rtc_prefix_weights,
)

__all__ = ["ActionChunkBroker", "MODES", "STRATEGIES", "strategy_support"]

MODES = ("receding", "ensemble")

COUNTERS = ("chunks", "switches", "stalls", "starved", "gate_rejections", "discarded")


def _weighted_mean(rows: list[Any], weights: list[float]) -> Any:
    """sum_i rows[i] * weights[i] / sum(weights), in the rows' own array type and dtype."""
    total = math.fsum(weights)
    out = rows[0] * (weights[0] / total)
    for row, w in zip(rows[1:], weights[1:]):
        out = out + row * (w / total)
    return out


def _numpy(x: Any) -> np.ndarray:
    """A chunk (numpy or tensor-like, any device) -> float32 numpy."""
    if hasattr(x, "detach") and hasattr(x, "cpu"):
        x = x.detach().cpu()
        x = x.float() if hasattr(x, "float") else x
        x = x.numpy()
    return np.asarray(x, np.float32)


def _first(x: Any) -> float | None:
    if x is None:
        return None
    a = np.asarray(_numpy(x) if hasattr(x, "detach") else x, np.float64).reshape(-1)
    return float(a[0]) if a.size else None


def _capabilities(source: Any) -> dict[str, Any]:
    meta = getattr(source, "metadata", None) or {}
    caps = meta.get("capabilities") if isinstance(meta, Mapping) else None
    return dict(caps) if isinstance(caps, Mapping) else {}


def strategy_support(source: Any) -> dict[str, str | None]:
    """strategy -> None when ``source`` can run it, else the reason it cannot. ``rtc`` needs a
    source whose ``metadata["capabilities"]["inpainting"]`` is not False; ``energy_gate`` a callable
    ``source.score`` and ``capabilities["reports_energy"]`` not False (capabilities a source does
    not declare are assumed present: the server answers with an error if not)."""
    caps = _capabilities(source)
    out: dict[str, str | None] = {s: None for s in STRATEGIES}
    if caps.get("inpainting") is False:
        out["rtc"] = "the head cannot inpaint a committed prefix (capabilities.inpainting is False)"
    if not callable(getattr(source, "score", None)):
        out["energy_gate"] = "the source cannot score chunks (no score(obs, chunks))"
    elif caps.get("reports_energy") is False:
        out["energy_gate"] = "the head has no energy (capabilities.reports_energy is False)"
    return out


class ActionChunkBroker:
    """Turns chunks into one action per control step.

    source:         a client with ``infer(obs, **fields) -> {"actions": (B, H, D), ...}`` (e.g.
                    PolicyClient; each chunk becomes float32 numpy, the reply is kept as
                    ``last_reply`` and the defaults below come from its ``metadata``: ``execution``
                    and ``horizon``), or a callable ``obs -> (B, H, D)`` chunk (numpy or torch, used
                    as it is) or ``-> {"actions": chunk, ...}``. Request fields (``prefix``,
                    ``prefix_weights``, ``soft_target``, ``latency_budget_ms``) are passed as keyword
                    arguments, and ``step=`` (the episode step of the observation) to a source with
                    ``accepts_step = True``. ``energy_gate`` also calls ``source.score(obs, chunks
                    (B, K, H, D)) -> (B, K)`` energies.
    mode:           sync only: "receding" executes the first ``n_action_steps`` actions of each
                    chunk, then requests a new one; "ensemble" requests a chunk every step and
                    averages, for the current step, every chunk that covers it with weights
                    ``exp(-ensemble_decay * age)`` (age in control steps since it was planned).
    horizon:        H, the chunk length (checks ``n_action_steps``; None: unchecked, taken from the
                    first chunk).
    strategy:       one of ``STRATEGIES`` (module docstring).
    timing:         when a request arrives (:mod:`vla_ebt_client.realtime`): default
                    ``RealTime(threaded=strategy != "sync")``; simulators pass ``SimulatedDelay(d)``
                    or ``MeasuredDelay(control_hz)``.
    request_remaining: async: send the next request when at most this many planned actions remain
                    (counting the current step's); None: ``H - n_action_steps`` (at delay 0 the
                    chunks then start exactly where the sync receding horizon's do).
    on_starve:      async: the plan ran out before the next chunk arrived: "hold" repeats the last
                    action (counted in ``starved``), "block" waits for the chunk (counted in
                    ``stalls``). The first chunk of an episode is always waited for (not counted).
    delay_ewma / delay_margin / initial_delay: the delay estimate (``delay``, a
                    :class:`~vla_ebt_client.realtime.DelayEstimator`): EWMA of each chunk's measured
                    delay in control periods, rounded up, plus the margin; it sets the prefix length
                    of ``rtc`` requests and persists across episodes.
    control_hz:     the control rate; with the real-time timing it turns round trips into control
                    periods (else the interval between ``act`` calls is measured).
    send_latency_budget: async: requests carry ``latency_budget_ms`` = the time until the plan runs out.

    ``act`` returns (B, D) (the padded action dim; slice to your embodiment's own dims).
    ``chunks`` / ``steps`` count requests and actions since construction (not reset per episode);
    ``counters`` (chunks, switches, stalls, starved, gate_rejections, discarded), ``chunk_log`` (one
    dict per arrived chunk) and ``last_switch`` (this step's action came from a newly arrived
    chunk) are per episode. Raises ValueError for an unknown mode / strategy / on_starve, a strategy
    the source cannot run (:func:`strategy_support`) or ``n_action_steps`` outside [1, horizon],
    TypeError for a source that is neither a client nor callable.
    """

    def __init__(
        self,
        source: Any,
        mode: str | None = None,
        n_action_steps: int | None = None,
        ensemble_decay: float | None = None,
        *,
        horizon: int | None = None,
        strategy: str = "sync",
        timing: Timing | None = None,
        request_remaining: int | None = None,
        on_starve: str = "hold",
        delay_ewma: float = 0.5,
        delay_margin: int = 0,
        initial_delay: float | None = None,
        control_hz: float | None = None,
        send_latency_budget: bool = False,
    ) -> None:
        self.client = source if callable(getattr(source, "infer", None)) else None
        if self.client is None and not callable(source):
            raise TypeError(f"source must have infer(obs) or be callable, got {type(source).__name__}")
        self.source = source
        self._source: Callable[..., Any] | None = None if self.client is not None else source
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
        if strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
        why = strategy_support(source)[strategy]
        if why is not None:
            raise ValueError(f"strategy {strategy!r} is not available: {why}")
        if on_starve not in ON_STARVE:
            raise ValueError(f"on_starve must be one of {ON_STARVE}, got {on_starve!r}")
        if request_remaining is not None and int(request_remaining) < 0:
            raise ValueError(f"request_remaining must be >= 0, got {request_remaining}")
        if control_hz is not None and not control_hz > 0:
            raise ValueError(f"control_hz must be > 0, got {control_hz}")
        self.strategy, self.on_starve = strategy, on_starve
        self.timing: Timing = timing if timing is not None else RealTime(threaded=strategy in ASYNC_STRATEGIES)
        self.request_remaining = None if request_remaining is None else int(request_remaining)
        self.delay = DelayEstimator(delay_ewma, initial_delay, delay_margin)
        self.control_hz = None if control_hz is None else float(control_hz)
        self.send_latency_budget = bool(send_latency_budget)
        self._accepts_step = bool(getattr(source, "accepts_step", False))
        self._cids = itertools.count()
        self._interval: float | None = None
        self._last_call: float | None = None
        self.chunks = 0
        self.steps = 0
        self.last_reply: dict[str, Any] | None = None
        self.reset()

    # ------------------------------------------------------------------ episode state
    def reset(self) -> None:
        """Forget the plan, queued actions, ensemble history and per-episode counters (call at
        episode start); a request still in flight is abandoned (its chunk is never used)."""
        self._queue: list[Any] = []  # sync receding: rows; async: (chunk id, row) for steps step, step+1, ...
        self._ensemble: list[Any] = []  # sync: (step planned, chunk); temporal_ensemble: (step, id, chunk)
        self._t = 0  # sync ensemble step counter
        self._step = 0  # actions returned this episode
        self._tick = 0  # control periods this episode: actions + periods spent waiting
        self._pending: Job | None = None
        self._gate: dict[str, Any] | None = None
        self._last_action: Any = None
        self._last_cids: frozenset[int] | None = None
        self._started = False
        self.last_switch = False
        self.counters = dict.fromkeys(COUNTERS, 0)
        self.chunk_log: list[dict[str, Any]] = []

    _EPISODE_ATTRS = ("_step", "_tick", "_pending", "_gate", "_last_action", "_last_cids", "_started", "last_switch")

    def state(self) -> dict[str, Any]:
        """The per-episode state ``reset()`` clears: ``queue`` (actions still to execute), ``ensemble``
        (chunks), ``t`` (ensemble step counter) and ``episode`` (the rest: step and tick counters,
        pending request, counters, chunk log); shallow copies, arrays shared."""
        ep = {k: getattr(self, k) for k in self._EPISODE_ATTRS}
        ep["counters"], ep["chunk_log"] = dict(self.counters), list(self.chunk_log)
        return {"queue": list(self._queue), "ensemble": list(self._ensemble), "t": self._t, "episode": ep}

    def load_state(self, state: Mapping[str, Any]) -> None:
        """Restore a state captured by :meth:`state` (to interleave several episodes)."""
        self._queue = list(state["queue"])
        self._ensemble = list(state["ensemble"])
        self._t = int(state["t"])
        ep = state.get("episode")
        if ep is not None:
            for k in self._EPISODE_ATTRS:
                setattr(self, k, ep[k])
            self.counters, self.chunk_log = dict(ep["counters"]), list(ep["chunk_log"])

    def close(self) -> None:
        """Stop the background thread of the real-time timing (if any), waiting for a request in
        flight. The source is used from that thread only: do not call it elsewhere before close()."""
        self.timing.close()

    # ------------------------------------------------------------------ requests
    def _call(self, obs: Any, fields: Mapping[str, Any], step: int) -> tuple[Any, dict[str, Any]]:
        kw = dict(fields)
        if self._accepts_step:
            kw["step"] = step
        if self.client is not None:
            reply = self.client.infer(obs, **kw)
            chunk = np.asarray(reply["actions"], np.float32)
        else:
            out = self._source(obs, **kw)  # type: ignore[misc]
            reply = dict(out) if isinstance(out, Mapping) else {"actions": out}
            chunk = reply["actions"]
        if len(chunk.shape) != 3:
            raise ValueError(f"a chunk must be (B, H, D), got shape {tuple(chunk.shape)}")
        return chunk, reply

    def _period(self) -> float | None:
        """Seconds per control period: 1 / control_hz, else the measured interval between acts."""
        return 1.0 / self.control_hz if self.control_hz else self._interval

    def _log_chunk(self, job: Job, reply: Mapping[str, Any], periods: float) -> dict[str, Any]:
        self.chunks += 1
        self.counters["chunks"] += 1
        self.last_reply = dict(reply)
        entry = {
            "id": next(self._cids),
            "sent_step": job.sent_step,
            "arrival_step": self._step,
            "delay_periods": periods,
            "latency_ms": job.rtt_s * 1e3,
            "infer_ms": reply.get("infer_ms"),
            "energy": _first(reply.get("energy")),
            "steps": _first(reply.get("steps")),
            "expected_delay": job.meta.get("expected_delay"),
            "prefix_len": int(job.meta.get("prefix_len", 0)),
            "accepted": True,
        }
        self.chunk_log.append(entry)
        return entry

    def _measure(self, job: Job) -> float:
        """The job's delay in control periods (and fold it into the estimate when it is known)."""
        periods = self.timing.delay_periods(job, self._period())
        if periods is None:
            periods = float(self._tick - job.sent_tick)
            if job.meta.get("blocked"):
                return periods  # a blocked wait says nothing about the latency here
        self.delay.update(periods)
        return periods

    # ------------------------------------------------------------------ sync
    def _request_sync(self, obs: Any) -> Any:
        job = Job("infer", partial(self._call, obs, {}, self._step), self._tick, self._step)
        self.timing.start(job, self._tick)
        waited = self.timing.wait(job, self._tick, self._period())
        if self._started:
            self.counters["stalls"] += waited
        self._tick += waited
        if job.error is not None:
            raise job.error
        chunk, reply = job.result
        self._log_chunk(job, reply, self._measure(job))
        self._started = True
        return chunk

    def _act_sync(self, obs: Any) -> tuple[Any, bool]:
        if self.mode == "receding":
            switched = False
            if not self._queue:
                switched = self._started
                chunk = self._request_sync(obs)
                self._queue = [chunk[:, i] for i in range(min(self.n_action_steps, chunk.shape[1]))]
            return self._queue.pop(0), switched
        switched = self._started
        chunk = self._request_sync(obs)
        self._ensemble.append((self._t, chunk))
        self._ensemble = [(t0, c) for t0, c in self._ensemble if self._t - t0 < c.shape[1]]
        rows = [c[:, self._t - t0] for t0, c in self._ensemble]
        weights = [math.exp(-self.ensemble_decay * (self._t - t0)) for t0, _ in self._ensemble]
        self._t += 1
        return _weighted_mean(rows, weights), switched

    # ------------------------------------------------------------------ async
    def _remaining(self) -> int:
        """Planned actions left, counting the current step's."""
        if self.strategy == "temporal_ensemble":
            return max([t0 + c.shape[1] - self._step for t0, _, c in self._ensemble] + [0])
        return len(self._queue)

    def _threshold(self) -> int:
        if self.request_remaining is not None:
            return self.request_remaining
        return max(0, (self.horizon or 0) - self.n_action_steps)

    def _planned_rows(self) -> list[Any]:
        """The actions the current plan executes from this step on (temporal_ensemble: the average)."""
        if self.strategy != "temporal_ensemble":
            return [row for _, row in self._queue]
        rows = []
        for u in range(self._step, self._step + self._remaining()):
            cover = [(t0, c) for t0, _, c in self._ensemble if t0 <= u < t0 + c.shape[1]]
            if cover:
                rows.append(_weighted_mean([c[:, u - t0] for t0, c in cover],
                                           [math.exp(-self.ensemble_decay * (u - t0)) for t0, _ in cover]))
        return rows

    def _send(self, obs: Any, blocked: bool = False) -> None:
        step, tick = self._step, self._tick
        remaining = self._remaining()
        fields: dict[str, Any] = {}
        meta: dict[str, Any] = {"prefix_len": 0, "blocked": blocked, "expected_delay": self.delay.steps}
        if self.strategy == "rtc" and self._started:
            rows = self._planned_rows()
            d = self.delay.steps
            if self.on_starve == "hold":  # the last action repeats once the plan runs out
                last = rows[-1] if rows else self._last_action
                rows = rows + [last] * max(0, d - len(rows)) if last is not None else rows
            h = self.horizon or len(rows)
            rows = rows[:h]
            d = min(d, len(rows))
            if rows:
                if d:
                    fields["prefix"] = np.stack(rows[:d], axis=1)
                fields["prefix_weights"] = rtc_prefix_weights(h, d, len(rows))
                fields["soft_target"] = np.stack(rows + [rows[-1]] * (h - len(rows)), axis=1)
            meta["prefix_len"] = d
            meta["prefix"] = fields.get("prefix")
        period = self._period()
        if self.send_latency_budget and period:
            fields["latency_budget_ms"] = remaining * period * 1e3
        job = Job("infer", partial(self._call, obs, fields, step), tick, step, meta)
        self._pending = job
        self.timing.start(job, tick)

    def _rows_from(self, chunk: np.ndarray, cid: int, offset: int) -> list[tuple[int, Any]]:
        return [(cid, chunk[:, i]) for i in range(offset, chunk.shape[1])]

    def _arrive(self, job: Job, obs: Any) -> None:
        chunk, reply = job.result
        chunk = _numpy(chunk)
        if self.horizon is None:
            self.horizon = int(chunk.shape[1])
        entry = self._log_chunk(job, reply, self._measure(job))
        self._started = True
        offset = self._step - job.sent_step
        if offset >= chunk.shape[1]:  # arrived after its last step: nothing left to execute
            self.counters["discarded"] += 1
            entry["accepted"] = False
            return
        cid = entry["id"]
        if self.strategy == "temporal_ensemble":
            self._ensemble.append((job.sent_step, cid, chunk))
            return
        if self.strategy == "energy_gate" and self._queue:
            gate = {"chunk": chunk, "id": cid, "sent_step": job.sent_step, "entry": entry}
            old, new = self._gate_plans(gate)
            h = chunk.shape[1]
            pad = lambda rows: rows[:h] + [rows[-1]] * (h - len(rows))  # noqa: E731
            cands = np.stack([np.stack(pad([r for _, r in old]), axis=1), np.stack(pad([r for _, r in new]), axis=1)], 1)
            score = self.source.score
            sjob = Job("score", partial(score, obs, cands), self._tick, self._step, {"gate": gate})
            self._gate = gate
            self._pending = sjob
            self.timing.start(sjob, self._tick)
            return
        self._queue = self._rows_from(chunk, cid, offset)

    def _gate_plans(self, gate: Mapping[str, Any]) -> tuple[list[Any], list[Any]]:
        """(old plan, new plan) from this step: the rest of the old plan followed by the new chunk's
        later actions, and the new chunk."""
        new = self._rows_from(gate["chunk"], gate["id"], self._step - gate["sent_step"])
        return self._queue + new[len(self._queue):], new

    def _decide(self, job: Job) -> None:
        gate = job.meta["gate"]
        self._gate = None
        e = np.asarray(_numpy(job.result), np.float64).reshape(-1, 2)
        e_old, e_new = float(e[:, 0].sum()), float(e[:, 1].sum())
        entry = gate["entry"]
        entry["energy_old"], entry["energy_new"] = e_old, e_new
        if self._step - gate["sent_step"] >= gate["chunk"].shape[1]:
            self.counters["discarded"] += 1
            entry["accepted"] = False
            return
        old, new = self._gate_plans(gate)
        if e_new <= e_old:
            self._queue = new
        else:
            self._queue = old
            self.counters["gate_rejections"] += 1
            entry["accepted"] = False

    def _collect(self, obs: Any) -> None:
        """Merge every request that has arrived by now."""
        while self._pending is not None and self.timing.ready(self._pending, self._tick):
            job, self._pending = self._pending, None
            if job.error is not None:
                raise job.error
            if job.kind == "infer":
                self._arrive(job, obs)
            else:
                self._decide(job)

    def _block(self, obs: Any) -> None:
        """Wait (the control loop stalls) until the plan has an action for this step."""
        while self._remaining() == 0:
            if self._pending is None:
                self._send(obs, blocked=True)
            job = self._pending
            job.meta["blocked"] = True  # type: ignore[union-attr]
            waited = self.timing.wait(job, self._tick, self._period())  # type: ignore[arg-type]
            if self._started:
                self.counters["stalls"] += waited
            self._tick += waited
            self._collect(obs)

    def _next_async(self) -> tuple[Any, bool]:
        if self.strategy == "temporal_ensemble":
            u = self._step
            self._ensemble = [(t0, i, c) for t0, i, c in self._ensemble if u < t0 + c.shape[1]]
            cover = [(t0, i, c) for t0, i, c in self._ensemble if t0 <= u]
            if not cover:
                return None, False
            action = _weighted_mean([c[:, u - t0] for t0, _, c in cover],
                                    [math.exp(-self.ensemble_decay * (u - t0)) for t0, _, _ in cover])
            cids = frozenset(i for _, i, _ in cover)
        else:
            if not self._queue:
                return None, False
            cid, action = self._queue.pop(0)
            cids = frozenset((cid,))
        switched = self._last_cids is not None and bool(cids - self._last_cids)
        self._last_cids = cids
        return action, switched

    def _act_async(self, obs: Any) -> tuple[Any, bool]:
        self._collect(obs)
        if self._pending is None and self._remaining() <= self._threshold():
            self._send(obs)
            self._collect(obs)
        if self._remaining() == 0:
            if self._gate is not None:  # the old plan ran out while the new chunk was being scored
                gate, self._gate, self._pending = self._gate, None, None
                self._queue = self._rows_from(gate["chunk"], gate["id"], self._step - gate["sent_step"])
            if self._remaining() == 0 and (self._last_action is None or self.on_starve == "block"):
                self._block(obs)
        action, switched = self._next_async()
        if action is None:  # starved: hold the last action
            self.counters["starved"] += 1
            return self._last_action, False
        return action, switched

    # ------------------------------------------------------------------ the control step
    def act(self, obs: Any) -> Any:
        """The action (B, D) for this control step. ``sync`` requests a chunk when needed and waits
        for it; the async strategies never wait except for an episode's first chunk and, with
        ``on_starve="block"``, when the plan has run out."""
        self.steps += 1
        if self.timing.realtime and self.control_hz is None:
            now = time.perf_counter()
            if self._last_call is not None:
                dt = now - self._last_call
                self._interval = dt if self._interval is None else 0.8 * self._interval + 0.2 * dt
            self._last_call = now
        if self.strategy == "sync":
            action, switched = self._act_sync(obs)
        else:
            action, switched = self._act_async(obs)
        self.last_switch = switched
        if switched:
            self.counters["switches"] += 1
        self._last_action = action
        self._step += 1
        self._tick += 1
        return action

    def latency_stats(self) -> dict[str, Any]:
        """The client's latency summary (if it has one) plus ``chunks``, ``steps``, the delay
        estimate (``delay_steps``) and this episode's ``counters``."""
        stats = self.client.latency_stats() if hasattr(self.client, "latency_stats") else {}
        return {**stats, "chunks": self.chunks, "steps": self.steps, "delay_steps": self.delay.steps,
                "counters": dict(self.counters)}
