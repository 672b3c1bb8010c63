"""Evaluating one saved policy under one :class:`~recipes.compare.plan.Variant`: per-episode success on
the given seeds (through the studies' episode runner, i.e. the standard closed-loop evaluation) and
the cost of every planned chunk at batch 1 (network evaluations, head and whole-policy milliseconds)."""

from __future__ import annotations

import contextlib
import dataclasses
import statistics
from typing import Any, Iterator, Sequence

from recipes.studies.common import predict_overrides
from recipes.studies.episodes import run_study_episodes

from .plan import Variant

__all__ = ["warm_start", "record_chunks", "evaluate_variant"]


@contextlib.contextmanager
def warm_start(policy: Any, on: bool) -> Iterator[None]:
    """Within the block the policy's ``execution.warm_start`` is ``on`` (heads without the capability
    never warm start either way)."""
    old = policy.cfg.execution
    policy.cfg.execution = dataclasses.replace(old, warm_start=bool(on))
    try:
        yield
    finally:
        policy.cfg.execution = old


@contextlib.contextmanager
def record_chunks(policy: Any) -> Iterator[list[dict[str, float]]]:
    """Records ``{"nfe", "policy_ms", "head_ms"}`` of every ``predict_chunk`` call in the block (the
    closed loop plans each chunk through it at batch 1)."""
    rows: list[dict[str, float]] = []
    inner = policy.predict_chunk

    def predict_chunk(*args: Any, **kwargs: Any) -> Any:
        out = inner(*args, **kwargs)
        rows.append({"nfe": float(out.nfe), "policy_ms": float(out.latency_ms), "head_ms": float(out.head_ms),
                     "batch": int(out.actions.shape[0])})
        return out

    policy.predict_chunk = predict_chunk  # instance attribute; removed below
    try:
        yield rows
    finally:
        del policy.predict_chunk


def _median(xs: Sequence[float]) -> float:
    return float(statistics.median(xs)) if xs else float("nan")


def evaluate_variant(policy: Any, suite: Any, tasks: Sequence[str], eval_seeds: Sequence[int], episodes: int,
                     variant: Variant) -> dict[str, Any]:
    """Closed-loop episodes of every task x eval seed x ``episodes`` under ``variant``.

    Returns {"success": {task: rate, "mean": mean over tasks}, "outcomes": {task: [0/1 per episode,
    seed-major]}, "errors", "cost": {"nfe", "forward_equiv", "eval_cost", "head_ms", "policy_ms"
    (medians over chunks), "head_ms_mean", "policy_ms_mean", "chunks"}}; for a suite that declares
    ``episode_attrs`` also "episode_info": {task: {attr: [value per episode, same order as outcomes]}}.
    """
    seeds = [int(s) for s in eval_seeds]
    attrs = tuple(getattr(suite, "episode_attrs", ()))
    with warm_start(policy, variant.warm_start), predict_overrides(policy, **dict(variant.overrides)), \
            record_chunks(policy) as chunks:
        res = run_study_episodes(policy, suite, list(tasks), int(episodes), seeds[0], seeds=seeds, env_attrs=attrs)
    outcomes: dict[str, list[int]] = {t: [] for t in tasks}
    info: dict[str, dict[str, list[Any]]] = {t: {a: [] for a in attrs} for t in tasks}
    order = sorted(range(len(res.episodes)), key=lambda i: (
        seeds.index(int(res.episodes[i].base_seed if res.episodes[i].base_seed is not None else seeds[0])),
        res.episodes[i].index))
    for i in order:
        ep = res.episodes[i]
        outcomes[ep.task].append(int(bool(ep.success)))
        for a in attrs:
            info[ep.task][a].append(res.final[i].get(a))
    success = {t: sum(v) / len(v) if v else float("nan") for t, v in outcomes.items()}
    success["mean"] = sum(success[t] for t in tasks) / len(tasks)
    b1 = [c for c in chunks if c["batch"] == 1]
    nfe = sum(c["nfe"] for c in b1) / len(b1) if b1 else float("nan")
    eval_cost = float(policy.head.capabilities.eval_cost)
    cost = {"nfe": nfe, "eval_cost": eval_cost, "forward_equiv": nfe * eval_cost,
            "head_ms": _median([c["head_ms"] for c in b1]), "policy_ms": _median([c["policy_ms"] for c in b1]),
            "head_ms_mean": sum(c["head_ms"] for c in b1) / len(b1) if b1 else float("nan"),
            "policy_ms_mean": sum(c["policy_ms"] for c in b1) / len(b1) if b1 else float("nan"),
            "chunks": len(b1)}
    out = {"success": success, "outcomes": outcomes, "errors": sum(1 for e in res.episodes if e.error), "cost": cost}
    if attrs:
        out["episode_info"] = info
    return out
