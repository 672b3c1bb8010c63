"""Scripted-expert demonstrations in the schema of :mod:`vla_ebt.data.episodes`.

::

    suite = make_suite("reach2d")
    eps = collect_demos(suite, suite.task_names(), episodes_per_task=50, seed=0)

Episode ``i`` of ``task`` runs with env seed ``episode_seed(seed, task, i)``.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from vla_ebt.data.episodes import Episode, episode_seed

__all__ = ["collect_demos"]


def _image_views(image: np.ndarray) -> np.ndarray:
    """obs["image"] (3, S, S) or (V, 3, S, S) -> (V, 3, S, S)."""
    return image[None] if image.ndim == 3 else image


def collect_demos(
    suite: Any,
    tasks: Sequence[str] | None,
    episodes_per_task: int,
    seed: int,
    action_noise: float = 0.0,
    split: str = "train",
    only_success: bool = False,
) -> list[Episode]:
    """Roll out ``suite.expert(task, noise=action_noise)`` for each task and episode.

    tasks None means all of the suite's tasks. ``split`` selects the instruction paraphrases
    ("train" by default). ``only_success`` drops failed episodes (the count may then be lower).
    """
    tasks = list(suite.task_names() if tasks is None else tasks)
    lo, hi = suite.action_bounds()
    out: list[Episode] = []
    for task in tasks:
        for i in range(episodes_per_task):
            s = episode_seed(seed, task, i)
            env = suite.make_env(task, seed=s, split=split)
            expert = suite.expert(task, noise=action_noise, seed=s)
            try:
                obs, info = env.reset(seed=s)
                images, states, actions = [], [], []
                success = False
                while True:
                    a = np.clip(np.asarray(expert(obs, env), np.float32), lo, hi)
                    images.append(_image_views(obs["image"]))
                    states.append(np.asarray(obs["state"], np.float32))
                    actions.append(a)
                    obs, _, terminated, truncated, info = env.step(a)
                    success = bool(info.get("is_success", False))
                    if terminated or truncated:
                        break
                instruction = obs["instruction"]
            finally:
                env.close()
            if only_success and not success:
                continue
            out.append(
                Episode(
                    images=np.stack(images).astype(np.uint8),
                    state=np.stack(states).astype(np.float32),
                    action=np.stack(actions).astype(np.float32),
                    instruction=instruction,
                    task=task,
                    success=success,
                    seed=s,
                )
            )
    return out


