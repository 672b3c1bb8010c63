"""Recorded episodes and the chunked training dataset in the schema of :mod:`vla_ebt.schema`.

::

    ds = ChunkDataset(episodes, horizon=8, obs_steps=1)
    loader = DataLoader(ds, batch_size=64, shuffle=True, collate_fn=collate)
    stats = dataset_stats(episodes)     # -> Normalizer.from_stats(...)

Seeds: episode ``i`` of ``task`` runs with env seed ``episode_seed(seed, task, i)`` (independent
of the task list's order); use different base seeds for demonstrations and evaluation.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset
from vla_ebt_client.history import camera_major, history_indices

from vla_ebt.normalize import DatasetStats, FeatureStats

__all__ = ["Episode", "ChunkDataset", "collate", "dataset_stats", "episode_seed"]


def episode_seed(seed: int, task: str, episode: int) -> int:
    """Deterministic env seed for (base seed, task, episode index), independent of task order."""
    ss = np.random.SeedSequence([int(seed) & 0xFFFFFFFF, zlib.crc32(task.encode()), int(episode)])
    return int(ss.generate_state(1, np.uint32)[0])


@dataclass
class Episode:
    """One recorded episode; row t holds the observation at step t and the action taken from it.

    images:      uint8 (T, V, 3, S, S)
    state:       float32 (T, state_dim)
    action:      float32 (T, action_dim), as executed (after clipping to the action box)
    instruction: the episode's instruction; task: the task name; success: reached the goal.
    seed:        the env seed the episode was reset with (-1 if unknown).
    """

    images: np.ndarray
    state: np.ndarray
    action: np.ndarray
    instruction: str
    task: str
    success: bool
    seed: int = -1

    def __len__(self) -> int:
        return int(self.action.shape[0])


class ChunkDataset(Dataset):
    """Per-timestep samples in the training schema (one sample per (episode, step)).

    Sample keys:
        images       float32 (V, 3, S, S) in [0, 1] — the current frame; with
                     ``image_history=True``, (V * To, 3, S, S): the last To frames per camera,
                     camera-major (as in :mod:`vla_ebt.schema`).
        instruction  str
        state        float32 (To, state_dim): steps t-To+1 .. t, before-start steps repeat step 0
        embodiment   long scalar (``embodiment``, default 0)
        action       float32 (H, action_dim): actions t .. t+H-1; past the end the last action repeats
        action_mask  bool (H,): False past the episode end
    """

    def __init__(
        self,
        episodes: Sequence[Episode],
        horizon: int,
        obs_steps: int = 1,
        image_history: bool = False,
        embodiment: int = 0,
    ) -> None:
        if horizon < 1 or obs_steps < 1:
            raise ValueError(f"horizon and obs_steps must be >= 1, got {horizon}, {obs_steps}")
        self.episodes = [e for e in episodes if len(e) > 0]
        if not self.episodes:
            raise ValueError("ChunkDataset: no non-empty episodes")
        self.horizon = int(horizon)
        self.obs_steps = int(obs_steps)
        self.image_history = bool(image_history)
        self.embodiment = int(embodiment)
        lengths = np.array([len(e) for e in self.episodes])
        self._ends = np.cumsum(lengths)
        self._starts = self._ends - lengths

    def __len__(self) -> int:
        return int(self._ends[-1])

    def locate(self, index: int) -> tuple[int, int]:
        """Dataset index -> (episode index, step)."""
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} samples")
        ep = int(np.searchsorted(self._ends, index, side="right"))
        return ep, int(index - self._starts[ep])

    def __getitem__(self, index: int) -> dict[str, Any]:
        ei, t = self.locate(index)
        ep = self.episodes[ei]
        n = len(ep)
        hist = history_indices(t, self.obs_steps)
        fut = np.arange(t, t + self.horizon)
        mask = fut < n
        if self.image_history:
            imgs = camera_major(ep.images[hist])  # (To, V, 3, S, S) -> (V * To, 3, S, S)
        else:
            imgs = ep.images[t]
        return {
            "images": torch.from_numpy(np.ascontiguousarray(imgs)).float().div_(255.0),
            "instruction": ep.instruction,
            "state": torch.from_numpy(np.ascontiguousarray(ep.state[hist], dtype=np.float32)),
            "embodiment": torch.tensor(self.embodiment, dtype=torch.long),
            "action": torch.from_numpy(np.ascontiguousarray(ep.action[np.minimum(fut, n - 1)], dtype=np.float32)),
            "action_mask": torch.from_numpy(mask),
        }


def collate(samples: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Stack ChunkDataset samples into a batch dict (instruction as a list of str)."""
    if not samples:
        raise ValueError("collate: empty list of samples")
    out: dict[str, Any] = {}
    for key in samples[0]:
        vals = [s[key] for s in samples]
        out[key] = list(vals) if key == "instruction" else torch.stack(vals)
    return out


def dataset_stats(episodes: Sequence[Episode]) -> DatasetStats:
    """Action and state statistics over every step of ``episodes`` (for the Normalizer)."""
    eps = [e for e in episodes if len(e) > 0]
    if not eps:
        raise ValueError("dataset_stats: no non-empty episodes")
    actions = np.concatenate([e.action for e in eps])
    states = np.concatenate([e.state for e in eps])
    return DatasetStats(
        action=FeatureStats.from_array(actions),
        state=FeatureStats.from_array(states),
        num_episodes=len(eps),
        num_steps=int(actions.shape[0]),
    )
