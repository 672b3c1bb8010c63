"""Run a study's episodes through the standard closed-loop evaluation while recording per-chunk
signals and each episode's final env attributes (e.g. the detour suite's ``mode``)."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Sequence

from eval.sim.rollout import EpisodeResult, EvalConfig, EvalReport, evaluate

from .common import ChunkSignals, SignalRecorder

__all__ = ["StudyEpisodes", "run_study_episodes"]


@dataclass
class StudyEpisodes:
    """An evaluation report plus, per episode (same order as ``report.episodes``), the recorded
    chunk signals and the requested final env attributes."""

    report: EvalReport
    signals: list[ChunkSignals]
    final: list[dict[str, Any]]

    @property
    def episodes(self) -> list[EpisodeResult]:
        return self.report.episodes


def run_study_episodes(policy: Any, suite: Any, tasks: Sequence[str], episodes_per_task: int, seed: int, *,
                       split: str = "train", spread_candidates: int = 0, spread_dims: int | None = None,
                       env_attrs: Sequence[str] = (), **eval_kwargs: Any) -> StudyEpisodes:
    """``evaluate(policy, suite, ...)`` serially with a :class:`SignalRecorder` attached.

    Every ``select_action`` call counts one control step of the running episode
    (``ChunkSignals.acted``), so each chunk records the env step it was planned at
    (``ChunkSignals.plan_step``; the sync strategy plans through ``select_action``, the asynchronous
    ones do not and leave it at -1).
    spread_candidates, spread_dims: the N extra samples per chunk (:class:`SignalRecorder`).
    env_attrs: attributes of ``env.unwrapped`` read after each episode (missing ones are None).
    eval_kwargs: further :class:`~eval.sim.rollout.EvalConfig` fields.
    """
    recorder = (SignalRecorder(policy, spread_candidates=spread_candidates, spread_dims=spread_dims)
                if hasattr(policy, "head") else None)
    started: dict[tuple[str, int], tuple[Any, ChunkSignals | None]] = {}
    own_hook = policy.__dict__.get("begin_episode")  # an instance attribute to restore afterwards
    prev_hook = getattr(policy, "begin_episode", None)  # instance or class hook, still called

    def begin_episode(env: Any = None, task: str = "", seed: int = -1, **kw: Any) -> None:
        if recorder is not None:
            recorder.new_episode()
        started[(task, int(seed))] = (env, recorder.episodes[-1] if recorder is not None else None)
        if prev_hook is not None:
            prev_hook(env=env, task=task, seed=seed, **kw)

    policy.begin_episode = begin_episode  # run_episode calls it after env.reset and policy.reset
    own_select = policy.__dict__.get("select_action")
    inner_select = policy.select_action

    def select_action(*args: Any, **kwargs: Any) -> Any:
        sig = recorder.episodes[-1] if recorder is not None and recorder.episodes else None
        if sig is None:
            return inner_select(*args, **kwargs)
        recorder.step = sig.acted  # chunks planned during this call were planned at this env step
        try:
            return inner_select(*args, **kwargs)
        finally:
            sig.acted += 1

    if recorder is not None:
        policy.select_action = select_action  # an instance attribute; restored below
    try:
        with recorder if recorder is not None else contextlib.nullcontext():
            report = evaluate(policy, suite, EvalConfig(tasks=list(tasks), episodes_per_task=episodes_per_task,
                                                        seed=seed, split=split, num_workers=0, **eval_kwargs))
    finally:
        if own_hook is not None:
            policy.begin_episode = own_hook
        else:
            del policy.begin_episode
        if recorder is not None:
            if own_select is not None:
                policy.select_action = own_select
            else:
                del policy.select_action
    sigs, final = [], []
    for r in report.episodes:  # an episode whose env failed to build/reset never started: empty entries
        env, sig = started.get((r.task, int(r.seed)), (None, None))
        sigs.append(sig if sig is not None else ChunkSignals())
        final.append({a: getattr(getattr(env, "unwrapped", None), a, None) for a in env_attrs})
    return StudyEpisodes(report=report, signals=sigs, final=final)

