"""Baseline policies behind the rollout policy interface (:class:`eval.sim.contracts.RolloutPolicy`):
the suite's scripted expert, uniform random actions, and any function of the observation batch.
Each ``select_action`` is one planned chunk of length 1 whose ``last_output`` is a :class:`ChunkInfo`."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch

from .suites import Suite
from .workers import RemoteEnvHandle

__all__ = ["ChunkInfo", "ExpertPolicy", "RandomPolicy", "CallablePolicy"]


@dataclass
class ChunkInfo:
    """Minimal ``last_output`` of the adapters (one single-step "chunk" per control step)."""

    latency_ms: float
    energy: torch.Tensor | None = None
    steps: torch.Tensor | None = None


class _AdapterBase:
    """Each select_action is one planned chunk of length 1 with a measured latency.

    ``rollout_state`` / ``load_rollout_state`` capture / restore the per-episode state (``last_output``
    plus the attributes named in ``_episode_attrs``) so episodes can be interleaved."""

    _episode_attrs: tuple[str, ...] = ()

    def __init__(self) -> None:
        self.last_output: ChunkInfo | None = None

    def reset(self) -> None:
        self.last_output = None

    def rollout_state(self) -> dict[str, Any]:
        return {"last_output": self.last_output, **{k: getattr(self, k) for k in self._episode_attrs}}

    def load_rollout_state(self, state: dict[str, Any]) -> None:
        self.last_output = state["last_output"]
        for k in self._episode_attrs:
            setattr(self, k, state[k])

    def begin_episode(self, env: Any, task: str, seed: int, suite: Suite) -> None:  # noqa: ARG002
        pass

    def _act(self, obs: dict[str, Any]) -> np.ndarray:
        raise NotImplementedError

    def select_action(self, obs: dict[str, Any]) -> torch.Tensor:
        t0 = time.perf_counter()
        a = np.asarray(self._act(obs), np.float32)
        if a.ndim == 1:
            a = a[None]
        self.last_output = ChunkInfo(latency_ms=(time.perf_counter() - t0) * 1e3)
        return torch.from_numpy(a)


class ExpertPolicy(_AdapterBase):
    """The suite's scripted expert (privileged: reads the env) behind the policy interface.

    With env workers the env lives in another process: the evaluator asks the worker to run
    ``suite.expert(task, noise, seed)`` there (``worker_expert_args``) and ``begin_episode``
    receives a :class:`~eval.sim.workers.RemoteEnvHandle` whose ``expert_fn`` returns the action
    the worker computed for the same observation."""

    _episode_attrs = ("_fn", "_env")

    def __init__(self, suite: Suite, noise: float = 0.0) -> None:
        super().__init__()
        self.suite, self.noise = suite, float(noise)
        self._fn: Callable | None = None
        self._env: Any = None

    def worker_expert_args(self) -> dict[str, Any]:
        """What an env worker needs to run this expert next to the env."""
        return {"noise": self.noise}

    def begin_episode(self, env: Any, task: str, seed: int, suite: Suite) -> None:
        self._env = env
        if isinstance(env, RemoteEnvHandle):
            self._fn = env.expert_fn
        else:
            self._fn = self.suite.expert(task, noise=self.noise, seed=seed)

    def _act(self, obs: dict[str, Any]) -> np.ndarray:
        if self._fn is None:
            raise RuntimeError("ExpertPolicy: begin_episode() was not called (it needs the env)")
        raw = {"state": obs["state"][0, -1].cpu().numpy(), "instruction": obs["instruction"][0]}
        return self._fn(raw, self._env)


class RandomPolicy(_AdapterBase):
    """Uniform random actions in the suite's action box, seeded per episode."""

    _episode_attrs = ("_rng",)

    def __init__(self, suite: Suite, seed: int = 0) -> None:
        super().__init__()
        self.low, self.high = suite.action_bounds()
        self.seed = int(seed)
        self._rng = np.random.default_rng(self.seed)

    def begin_episode(self, env: Any, task: str, seed: int, suite: Suite) -> None:
        self._rng = np.random.default_rng([self.seed, seed])

    def _act(self, obs: dict[str, Any]) -> np.ndarray:
        return self._rng.uniform(self.low, self.high).astype(np.float32)


class CallablePolicy(_AdapterBase):
    """Wrap ``fn(obs_batch) -> (1, D) or (D,)`` array-like as a policy.

    With env workers, calls for different episodes interleave: ``fn`` must not keep per-episode
    state (wrap such a policy in a class without ``rollout_state`` to run one episode at a time)."""

    def __init__(self, fn: Callable[[dict[str, Any]], Any], name: str | None = None) -> None:
        super().__init__()
        self.fn = fn
        self.name = name or getattr(fn, "__name__", "callable")

    def _act(self, obs: dict[str, Any]) -> np.ndarray:
        a = self.fn(obs)
        if isinstance(a, torch.Tensor):
            a = a.detach().cpu().float().numpy()
        return np.asarray(a, np.float32)
