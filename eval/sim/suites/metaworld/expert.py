"""Meta-World's own scripted policies as the suite's expert."""

from __future__ import annotations

import warnings
from typing import Any, Callable

import numpy as np

from .env import ACTION_DIM
from .render import configure_gl

__all__ = ["make_expert"]


def make_expert(task: str, noise: float = 0.0, seed: int | None = None) -> Callable[[dict, Any], np.ndarray]:
    """``fn(obs, env) -> float32 (4,)``: ``metaworld.policies.ENV_POLICY_MAP[task]`` on the env's raw
    39-dim observation ``env.unwrapped.raw_obs``, plus N(0, noise^2) per action dim (seeded by
    ``seed``), clipped to [-1, 1]."""
    configure_gl()
    from metaworld.policies import ENV_POLICY_MAP

    policy = ENV_POLICY_MAP[task]()
    rng = np.random.default_rng(seed)
    noise = float(noise)

    def act(obs: dict, env: Any) -> np.ndarray:
        raw = env.unwrapped.raw_obs
        with warnings.catch_warnings():  # the policies warn about their own large gains
            warnings.simplefilter("ignore")
            a = np.asarray(policy.get_action(raw), np.float64)
        if noise > 0:
            a = a + rng.normal(0.0, noise, size=ACTION_DIM)
        return np.clip(a, -1.0, 1.0).astype(np.float32)

    return act
