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
                       split: str = "train", spread_candidates: int = 0,
                       env_attrs: Sequence[str] = (), **eval_kwargs: Any) -> StudyEpisodes:
    """``evaluate(policy, suite, ...)`` serially with a :class:`SignalRecorder` attached.

    env_attrs: attributes of ``env.unwrapped`` read after each episode (missing ones are None).
    eval_kwargs: further :class:`~eval.sim.rollout.EvalConfig` fields.
    """
    recorder = SignalRecorder(policy, spread_candidates=spread_candidates) if hasattr(policy, "head") else None
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
    try:
        with recorder if recorder is not None else contextlib.nullcontext():
            report = evaluate(policy, suite, EvalConfig(tasks=list(tasks), episodes_per_task=episodes_per_task,
                                                        seed=seed, split=split, num_workers=0, **eval_kwargs))
    finally:
        if own_hook is not None:
            policy.begin_episode = own_hook
        else:
            del policy.begin_episode
    sigs, final = [], []
    for r in report.episodes:  # an episode whose env failed to build/reset never started: empty entries
        env, sig = started.get((r.task, int(r.seed)), (None, None))
        sigs.append(sig if sig is not None else ChunkSignals())
        final.append({a: getattr(getattr(env, "unwrapped", None), a, None) for a in env_attrs})
    return StudyEpisodes(report=report, signals=sigs, final=final)

