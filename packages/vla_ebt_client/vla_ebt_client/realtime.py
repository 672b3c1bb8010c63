"""Real-time pieces of chunk execution (torch-free): when an inference "arrives", the delay
estimate, RTC's soft prefix weights, and the smoothness of an executed action sequence.

:class:`~vla_ebt_client.broker.ActionChunkBroker` runs every request through a *timing*:

* :class:`RealTime`     — the robot: requests run in one background thread (async strategies) or
  inline (``sync``); a request has arrived when its thread has finished.
* :class:`SimulatedDelay` — a simulator, deterministic, no threads: the source is called at once,
  its chunk counts as arrived ``steps`` control periods later.
* :class:`MeasuredDelay` — a simulator with the real latency: the source is called at once and its
  chunk counts as arrived ``ceil(latency * control_hz)`` control periods later.

A control period (tick) is one ``act()`` call or one period the control loop spent waiting
(blocked) for a chunk; see docs/realtime.md, "Asynchronous execution".
"""

from __future__ import annotations

import math
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

__all__ = [
    "STRATEGIES",
    "ASYNC_STRATEGIES",
    "ON_STARVE",
    "DelayEstimator",
    "Job",
    "Timing",
    "RealTime",
    "SimulatedDelay",
    "MeasuredDelay",
    "rtc_prefix_weights",
    "action_smoothness",
]

#: execution strategies of :class:`~vla_ebt_client.broker.ActionChunkBroker`
STRATEGIES = ("sync", "naive_async", "temporal_ensemble", "rtc", "energy_gate")
ASYNC_STRATEGIES = STRATEGIES[1:]
#: what an async broker does when its plan runs out before the next chunk has arrived
ON_STARVE = ("hold", "block")


class DelayEstimator:
    """EWMA of measured inference delays in control periods.

    ``update(periods)`` folds in one measurement (the first one replaces ``initial``); ``steps`` is
    the estimate rounded up, plus ``margin`` (just ``margin`` before any measurement without ``initial``).
    """

    def __init__(self, alpha: float = 0.5, initial: float | None = None, margin: int = 0) -> None:
        if not 0.0 < alpha <= 1.0:
            raise ValueError(f"DelayEstimator: alpha must be in (0, 1], got {alpha}")
        if int(margin) < 0:
            raise ValueError(f"DelayEstimator: margin must be >= 0, got {margin}")
        self.alpha, self.margin = float(alpha), int(margin)
        self.value: float | None = None if initial is None else float(initial)
        self.count = 0

    def update(self, periods: float) -> None:
        x = float(periods)
        if not math.isfinite(x) or x < 0:
            return
        # the first measurement replaces the initial guess
        self.value = x if self.count == 0 or self.value is None else self.alpha * x + (1.0 - self.alpha) * self.value
        self.count += 1

    @property
    def steps(self) -> int:
        if self.value is None:
            return self.margin
        return max(0, math.ceil(self.value - 1e-9)) + self.margin


@dataclass
class Job:
    """One request to the chunk source (``kind`` "infer") or to its scorer ("score").

    sent_tick / sent_step: control periods / executed actions of the episode when it was sent.
    result / error: what ``fn()`` returned or raised. rtt_s: how long ``fn()`` took.
    ready_tick: the tick it counts as arrived at (simulated timings). meta: the broker's notes.
    """

    kind: str
    fn: Callable[[], Any]
    sent_tick: int
    sent_step: int
    meta: dict[str, Any] = field(default_factory=dict)
    result: Any = None
    error: BaseException | None = None
    rtt_s: float = float("nan")
    ready_tick: int | None = None
    future: Future | None = None

    def run(self) -> None:
        t0 = time.perf_counter()
        try:
            self.result = self.fn()
        except BaseException as e:  # noqa: BLE001 - re-raised in the control loop
            self.error = e
        self.rtt_s = time.perf_counter() - t0


class Timing:
    """When a job counts as arrived. ``realtime``: measured on the wall clock (threads)."""

    realtime = False

    def start(self, job: Job, tick: int) -> None:
        raise NotImplementedError

    def ready(self, job: Job, tick: int) -> bool:
        raise NotImplementedError

    def wait(self, job: Job, tick: int, period_s: float | None) -> int:
        """Block until ``job`` has arrived; return the control periods the wait took."""
        raise NotImplementedError

    def delay_periods(self, job: Job, period_s: float | None) -> float | None:
        """The job's measured delay in control periods (None: unknown here)."""
        return None

    def close(self) -> None:
        pass


class SimulatedDelay(Timing):
    """Inference "takes" ``steps`` control periods (scoring ``score_steps``): deterministic, no
    threads. The source runs when the request is sent, on the observation of that step."""

    def __init__(self, steps: int, score_steps: int = 0) -> None:
        if int(steps) < 0 or int(score_steps) < 0:
            raise ValueError(f"SimulatedDelay: steps must be >= 0, got {steps}, {score_steps}")
        self.steps, self.score_steps = int(steps), int(score_steps)

    def start(self, job: Job, tick: int) -> None:
        job.run()
        job.ready_tick = tick + (self.steps if job.kind == "infer" else self.score_steps)

    def ready(self, job: Job, tick: int) -> bool:
        return tick >= job.ready_tick  # type: ignore[operator]

    def wait(self, job: Job, tick: int, period_s: float | None) -> int:
        return max(0, job.ready_tick - tick)  # type: ignore[operator]

    def delay_periods(self, job: Job, period_s: float | None) -> float | None:
        return float(job.ready_tick - job.sent_tick)  # type: ignore[operator]

    def __repr__(self) -> str:
        return f"SimulatedDelay(steps={self.steps})"


class MeasuredDelay(Timing):
    """The source runs when the request is sent; its measured wall time ``L`` makes it arrive
    ``ceil(L * control_hz)`` control periods later (the real latency, modelled in steps)."""

    def __init__(self, control_hz: float) -> None:
        if not control_hz > 0:
            raise ValueError(f"MeasuredDelay: control_hz must be > 0, got {control_hz}")
        self.control_hz = float(control_hz)

    def start(self, job: Job, tick: int) -> None:
        job.run()
        job.ready_tick = tick + max(0, math.ceil(job.rtt_s * self.control_hz - 1e-9))

    def ready(self, job: Job, tick: int) -> bool:
        return tick >= job.ready_tick  # type: ignore[operator]

    def wait(self, job: Job, tick: int, period_s: float | None) -> int:
        return max(0, job.ready_tick - tick)  # type: ignore[operator]

    def delay_periods(self, job: Job, period_s: float | None) -> float | None:
        return job.rtt_s * self.control_hz

    def __repr__(self) -> str:
        return f"MeasuredDelay(control_hz={self.control_hz:g})"


class RealTime(Timing):
    """Wall-clock timing. ``threaded``: jobs run in one background thread (created on first use)
    and have arrived when it has finished them; else they run inline in ``start`` (the caller
    blocks). A wait costs ``ceil(waited_s / period_s)`` control periods (at least 1) when the
    control period is known, else 1."""

    realtime = True

    def __init__(self, threaded: bool = True) -> None:
        self.threaded = bool(threaded)
        self._executor: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()

    def start(self, job: Job, tick: int) -> None:
        if not self.threaded:
            job.run()
            return
        with self._lock:
            if self._executor is None:
                self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="vla-ebt-broker")
            job.future = self._executor.submit(job.run)

    def ready(self, job: Job, tick: int) -> bool:
        return job.future is None or job.future.done()

    def wait(self, job: Job, tick: int, period_s: float | None) -> int:
        if job.future is None:
            waited = job.rtt_s  # ran inline: the caller waited all of it
        else:
            t0 = time.perf_counter()
            job.future.result()
            waited = time.perf_counter() - t0
        if period_s and period_s > 0 and math.isfinite(waited):
            return max(1, math.ceil(waited / period_s - 1e-9))
        return 1

    def delay_periods(self, job: Job, period_s: float | None) -> float | None:
        if period_s and period_s > 0 and math.isfinite(job.rtt_s):
            return job.rtt_s / period_s
        return None

    def __getstate__(self) -> dict[str, Any]:
        # copies and pickles (e.g. a policy deep-copied for EMA weights) get no thread and a new lock
        return {"threaded": self.threaded}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(threaded=state["threaded"])  # type: ignore[misc]

    def close(self) -> None:
        """Stop the thread: queued jobs are cancelled, a running one is waited for (the source, e.g.
        a PolicyClient, may then be used by another thread)."""
        with self._lock:
            if self._executor is not None:
                self._executor.shutdown(wait=True, cancel_futures=True)
                self._executor = None

    def __repr__(self) -> str:
        return f"RealTime(threaded={self.threaded})"


def rtc_prefix_weights(horizon: int, delay: int, overlap: int) -> np.ndarray:
    """RTC's soft mask (Black et al. 2025, arXiv 2506.07339) over the new chunk's H steps, float32 (H,):
    1 on the ``delay`` committed steps, then ``c * (exp(c) - 1) / (e - 1)`` with
    ``c = (overlap - i) / (overlap - delay + 1)`` over the rest of the overlap with the previous plan
    (steps ``delay <= i < overlap``), and 0 from ``overlap`` on (nothing to stay close to)."""
    h, d = int(horizon), max(0, int(delay))
    r = min(h, max(int(overlap), d))
    w = np.zeros(h, np.float32)
    w[: min(d, h)] = 1.0
    for i in range(min(d, h), r):
        c = (r - i) / (r - d + 1)
        w[i] = c * math.expm1(c) / math.expm1(1.0)
    return w


def action_smoothness(actions: Any, switch_steps: Sequence[int]) -> dict[str, float | int]:
    """Smoothness of an executed action sequence (T, D) (or (T,)):

    * ``max_switch_jump`` / ``mean_switch_jump``: the largest / mean ``||a_t - a_{t-1}||_2`` over the
      switch steps t (the steps whose action came from a newly arrived chunk; t = 0 and steps
      outside [1, T) are ignored); NaN without such a step.
    * ``mean_sq_second_diff``: mean over t = 1 .. T-2 of ``||a_{t+1} - 2 a_t + a_{t-1}||_2^2``; NaN for T < 3.
    * ``switches``: the switch steps counted.
    """
    a = np.asarray(actions, np.float64)
    a = a.reshape(a.shape[0], -1) if a.ndim else a.reshape(0, 1)
    n = a.shape[0]
    jumps = [float(np.linalg.norm(a[t] - a[t - 1])) for t in sorted(set(int(s) for s in switch_steps)) if 1 <= t < n]
    sd = a[2:] - 2.0 * a[1:-1] + a[:-2] if n >= 3 else np.zeros((0, a.shape[1]))
    return {
        "max_switch_jump": max(jumps) if jumps else float("nan"),
        "mean_switch_jump": float(np.mean(jumps)) if jumps else float("nan"),
        "mean_sq_second_diff": float(np.mean(np.sum(sd * sd, axis=1))) if len(sd) else float("nan"),
        "switches": len(jumps),
    }
