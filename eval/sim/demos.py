"""Scripted-expert demonstrations in the schema of :mod:`vla_ebt.data.episodes`.

::

    suite = make_suite("reach2d")
    eps = collect_demos(suite, suite.task_names(), episodes_per_task=50, seed=0)
    eps = collect_demos(suite, suite.task_names(), episodes_per_task=50, seed=0, num_workers=2)  # same bytes

Episode ``i`` of ``task`` runs with env seed ``episode_seed(seed, task, i)``, so an episode does not
depend on which episodes ran before it or where. Serial and parallel collection run the same code on
both sides — :class:`eval.sim.workers.EnvSession` (make_env + reset + the suite's expert, in this
process or in an env worker) and :class:`_DemoEpisode` (recording + clipping, here) — and return
byte-identical episodes in the same (task, index) order.
"""

from __future__ import annotations

from collections import deque
from typing import Any, Sequence

import numpy as np

from vla_ebt.data.episodes import Episode, episode_seed

from .workers import EnvSession, EnvWorkerPool, RemoteError, SuiteInfo, WorkerConfig

__all__ = ["collect_demos"]


def _image_views(image: np.ndarray) -> np.ndarray:
    """obs["image"] (3, S, S) or (V, 3, S, S) -> (V, 3, S, S)."""
    return image[None] if image.ndim == 3 else image


class _DemoEpisode:
    """One expert episode recorded from :class:`EnvSession` results (``open`` with an expert, then
    ``step``); ``advance`` returns the next (clipped) action or None once the episode has ended."""

    def __init__(self, task: str, index: int, seed: int, low: np.ndarray, high: np.ndarray) -> None:
        self.task, self.index, self.seed = task, index, seed
        self.low, self.high = low, high
        self.images: list[np.ndarray] = []
        self.states: list[np.ndarray] = []
        self.actions: list[np.ndarray] = []
        self.success = False
        self.instruction = ""

    def advance(self, reply: dict[str, Any]) -> np.ndarray | None:
        obs = reply["obs"]
        if "terminated" in reply:  # a step result
            self.success = bool((reply.get("info") or {}).get("is_success", False))
            if reply["terminated"] or reply["truncated"]:
                self.instruction = obs["instruction"]
                return None
        if reply.get("expert_error"):
            raise RemoteError("expert", reply["expert_error"])
        a = np.clip(np.asarray(reply["expert_action"], np.float32), self.low, self.high)
        self.images.append(_image_views(np.asarray(obs["image"])))
        self.states.append(np.asarray(obs["state"], np.float32))
        self.actions.append(a)
        return a

    def episode(self) -> Episode:
        return Episode(
            images=np.stack(self.images).astype(np.uint8),
            state=np.stack(self.states).astype(np.float32),
            action=np.stack(self.actions).astype(np.float32),
            instruction=self.instruction,
            task=self.task,
            success=self.success,
            seed=self.seed,
        )


def _open_args(ep: _DemoEpisode, split: str, action_noise: float) -> dict[str, Any]:
    return {"task": ep.task, "seed": ep.seed, "split": split, "expert": {"noise": float(action_noise)}}


def _collect_serial(suite: Any, eps: list[_DemoEpisode], split: str, action_noise: float) -> None:
    session = EnvSession(suite)
    try:
        for ep in eps:
            a = ep.advance(session.open(**_open_args(ep, split, action_noise)))
            while a is not None:
                a = ep.advance(session.step(a))
    finally:
        session.close()


def _collect_parallel(suite: Any, eps: list[_DemoEpisode], split: str, action_noise: float, num_workers: int,
                      suite_kwargs: dict[str, Any] | None, step_timeout_s: float, reset_timeout_s: float) -> None:
    name = str(getattr(suite, "name", "") or type(suite).__name__)
    kw = dict(suite_kwargs if suite_kwargs is not None else getattr(suite, "make_kwargs", None) or {})
    with EnvWorkerPool(WorkerConfig(suite=name, suite_kwargs=kw), num_workers) as pool:
        diff = pool.info.compatible_with(SuiteInfo.from_suite(suite))
        if diff:
            raise ValueError(f"collect_demos: the env workers' suite {name!r} built with {kw} differs from the given "
                             f"suite in {diff}; pass suite_kwargs= with the arguments the suite was made with")
        queue = deque(eps)
        running: dict[int, _DemoEpisode] = {}
        while queue or running:
            for w in pool.idle_workers():
                if not queue:
                    break
                ep = queue.popleft()
                pool.submit(w, "open", _open_args(ep, split, action_noise), timeout_s=reset_timeout_s)
                running[w] = ep
            for ev in pool.poll():
                if ev.kind == "ready" or ev.worker not in running:
                    continue
                ep = running[ev.worker]
                if ev.error is not None:
                    raise RuntimeError(f"collect_demos: {ep.task} episode {ep.index} (seed {ep.seed}): "
                                       f"{ev.error}") from ev.error
                a = ep.advance(ev.result)
                if a is None:
                    del running[ev.worker]
                else:
                    pool.submit(ev.worker, "step", {"action": a, "render": False}, timeout_s=step_timeout_s)


def collect_demos(
    suite: Any,
    tasks: Sequence[str] | None,
    episodes_per_task: int,
    seed: int,
    action_noise: float = 0.0,
    split: str = "train",
    only_success: bool = False,
    num_workers: int = 0,
    suite_kwargs: dict[str, Any] | None = None,
    step_timeout_s: float = 30.0,
    reset_timeout_s: float = 120.0,
) -> list[Episode]:
    """Roll out ``suite.expert(task, noise=action_noise, seed=s)`` for each task and episode, in
    (task, index) order.

    tasks None means all of the suite's tasks. ``split`` selects the instruction paraphrases
    ("train" by default). ``only_success`` drops failed episodes (the count may then be lower).
    ``num_workers`` > 0: episodes run in that many env worker processes (at most one per episode),
    each building ``make_suite(suite.name, **suite_kwargs)`` (default: ``suite.make_kwargs``, set by
    ``make_suite``; a worker suite that differs from ``suite`` raises ValueError); the result is
    byte-identical to ``num_workers=0``. An env or expert error raises (an EnvOpError / RemoteError,
    or RuntimeError naming the episode for a worker that failed).
    """
    tasks = list(suite.task_names() if tasks is None else tasks)
    lo, hi = (np.asarray(b, np.float32) for b in suite.action_bounds())
    eps = [_DemoEpisode(t, i, episode_seed(seed, t, i), lo, hi) for t in tasks for i in range(episodes_per_task)]
    n = min(int(num_workers or 0), len(eps))
    if n > 0:
        _collect_parallel(suite, eps, split, action_noise, n, suite_kwargs, step_timeout_s, reset_timeout_s)
    else:
        _collect_serial(suite, eps, split, action_noise)
    out = [ep.episode() for ep in eps]
    return [e for e in out if e.success] if only_success else out
