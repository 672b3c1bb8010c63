"""Declared contracts between the closed-loop evaluator, policies, suites and perturbations.

* :class:`RolloutPolicy`: what :func:`eval.sim.rollout.evaluate` needs from a policy, plus the
  optional capabilities it uses when present (:class:`EpisodeAware`, :class:`InterleavablePolicy`,
  :class:`WorkerSideExpert`).
* :class:`ChunkReport`: what the evaluator reads from ``policy.last_output``.
* :class:`DisplaceableEnv` / :class:`PerturbableSuite`: what :mod:`eval.sim.perturb` needs from a
  suite and its envs; ``displace_object`` returns a :class:`Displacement` in every suite.

Protocols are structural: a class satisfies one by having the members, without inheriting.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np

__all__ = [
    "RolloutPolicy",
    "EpisodeAware",
    "InterleavablePolicy",
    "WorkerSideExpert",
    "ChunkReport",
    "Displacement",
    "DisplaceableEnv",
    "PerturbableSuite",
    "missing_members",
    "check_rollout_policy",
]


@runtime_checkable
class RolloutPolicy(Protocol):
    """A policy the evaluator can run.

    ``reset()`` starts an episode; ``select_action(obs)`` maps a B = 1 observation batch in the
    schema of :mod:`vla_ebt.schema` to an action, array-like (1, >= D) or (>= D,) (dims past the
    suite's ``action_dim`` are dropped); ``last_output`` is None or a :class:`ChunkReport`, and a new
    object after ``select_action`` counts as a new chunk.
    """

    last_output: Any

    def reset(self) -> None: ...

    def select_action(self, obs: dict[str, Any]) -> Any: ...


@runtime_checkable
class ChunkReport(Protocol):
    """``policy.last_output``: ``latency_ms`` of the chunk; optional ``energy`` / ``steps``
    (tensor, array or number; the first element is recorded)."""

    latency_ms: float


@runtime_checkable
class EpisodeAware(Protocol):
    """Optional: called after ``reset()`` with the episode's env (or a
    :class:`eval.sim.workers.RemoteEnvHandle` in parallel runs), task, seed and suite."""

    def begin_episode(self, env: Any, task: str, seed: int, suite: Any) -> None: ...


@runtime_checkable
class InterleavablePolicy(Protocol):
    """Optional: per-episode state capture / restore, so env workers can interleave episodes.
    A policy without it runs one episode at a time."""

    def rollout_state(self) -> dict[str, Any]: ...

    def load_rollout_state(self, state: dict[str, Any]) -> None: ...


@runtime_checkable
class WorkerSideExpert(Protocol):
    """Optional: the keyword arguments of ``suite.expert`` an env worker runs next to its env
    (the privileged scripted expert); the worker then returns its action with every observation."""

    def worker_expert_args(self) -> dict[str, Any]: ...


def missing_members(obj: Any, protocol: type) -> list[str]:
    """Members of ``protocol`` that ``obj`` lacks (methods must also be callable)."""
    out = []
    for name in sorted(getattr(protocol, "__protocol_attrs__", None) or _protocol_members(protocol)):
        if not hasattr(obj, name):
            out.append(name)
        elif callable(getattr(protocol, name, None)) and not callable(getattr(obj, name)):
            out.append(name)
    return out


def _protocol_members(protocol: type) -> set[str]:
    names: set[str] = set()
    for base in protocol.__mro__:
        if base in (object, Protocol) or base.__name__ in ("Protocol", "Generic"):
            continue
        names |= set(getattr(base, "__annotations__", {}))
        names |= {k for k, v in vars(base).items() if callable(v) and not k.startswith("_")}
    return names


def check_rollout_policy(policy: Any, where: str = "evaluate") -> None:
    """Raise TypeError naming the missing members when ``policy`` is not a :class:`RolloutPolicy`."""
    if isinstance(policy, RolloutPolicy):
        return
    missing = missing_members(policy, RolloutPolicy)
    raise TypeError(
        f"{where}: {type(policy).__name__} is not a rollout policy: it lacks {', '.join(missing) or '?'} "
        f"(needs reset(), select_action(obs) and a last_output attribute; see eval.sim.contracts.RolloutPolicy)"
    )


@dataclass(frozen=True)
class Displacement:
    """What ``displace_object`` moved: the position of the displaced thing before and after, in
    the suite's units (reach2d: target (x, y); Meta-World: object or goal xyz in m; PushT: block
    pose (x, y, angle) in pixels / radians)."""

    before: np.ndarray
    after: np.ndarray

    @property
    def delta(self) -> np.ndarray:
        return self.after - self.before


@runtime_checkable
class DisplaceableEnv(Protocol):
    """An env (``env.unwrapped``) supporting the object-displacement perturbation: move the task
    object / target mid-episode by about ``scale`` (suite units; omitted: the suite's default),
    drawing randomness only from ``rng``. The next ``step`` continues from the new state."""

    def displace_object(self, rng: np.random.Generator, scale: float = ...) -> Displacement: ...


@runtime_checkable
class PerturbableSuite(Protocol):
    """What :class:`eval.sim.perturb.PerturbedSuite` wraps: a named suite that makes gymnasium envs.
    Displacement additionally needs its envs to be :class:`DisplaceableEnv`; action bursts and
    forced gripper values need a Box ``action_space``."""

    name: str

    def make_env(self, task: str, seed: int | None = None, split: str = "train") -> Any: ...
