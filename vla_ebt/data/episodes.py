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
from torch.utils.data import Dataset, Sampler
from vla_ebt_client.history import camera_major, history_indices

from vla_ebt.normalize import DatasetStats, FeatureStats
from vla_ebt.normalize.normalizer import pad_last_dim

__all__ = ["Episode", "ChunkDataset", "MixtureDataset", "MixtureSampler", "collate", "dataset_stats", "episode_seed"]


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


class MixtureDataset(Dataset):
    """Several :class:`ChunkDataset` s, one embodiment each (their ``embodiment`` ids), as one dataset
    whose samples stack into one batch: ``action`` (H, D) and ``state`` (To, S) zero-padded to the
    policy's max dims with :func:`vla_ebt.normalize.pad_last_dim` (the normalizer masks the padded
    dims), and, when the datasets' frames differ in size, ``images`` resized to ``image_size`` the way
    the backbone resizes them (:func:`vla_ebt.backbones.preprocess.resize_images`). Index ``i`` runs
    through the datasets in order (``locate``)."""

    def __init__(self, datasets: Sequence[ChunkDataset], action_dim: int, state_dim: int,
                 image_size: int | None = None) -> None:
        if not datasets:
            raise ValueError("MixtureDataset: no datasets")
        self.datasets = list(datasets)
        self.action_dim, self.state_dim = int(action_dim), int(state_dim)
        sizes = {d.episodes[0].images.shape[-1] for d in self.datasets}
        self.image_size = int(image_size) if image_size is not None and len(sizes) > 1 else None
        if len(sizes) > 1 and image_size is None:
            raise ValueError(f"MixtureDataset: frames of {sorted(sizes)} px: give image_size to resize them to")
        self.sizes = np.array([len(d) for d in self.datasets])
        self._ends = np.cumsum(self.sizes)

    def __len__(self) -> int:
        return int(self._ends[-1])

    def locate(self, index: int) -> tuple[int, int]:
        """Mixture index -> (dataset index, index in that dataset)."""
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} samples")
        d = int(np.searchsorted(self._ends, index, side="right"))
        return d, int(index - (self._ends[d] - self.sizes[d]))

    def __getitem__(self, index: int) -> dict[str, Any]:
        d, i = self.locate(index)
        s = dict(self.datasets[d][i])
        s["action"] = pad_last_dim(s["action"], self.action_dim)
        s["state"] = pad_last_dim(s["state"], self.state_dim)
        if self.image_size is not None:
            from vla_ebt.backbones.preprocess import resize_images

            s["images"] = resize_images(s["images"], self.image_size)
        return s

    def sample_weights(self, dataset_probs: Sequence[float]) -> torch.Tensor:
        """Per-sample weights (float64, sum 1) giving dataset ``d`` probability ``dataset_probs[d]``."""
        p = np.asarray(dataset_probs, np.float64)
        if p.shape != (len(self.datasets),):
            raise ValueError(f"sample_weights: {len(p)} probabilities for {len(self.datasets)} datasets")
        return torch.from_numpy(np.repeat(p / p.sum() / self.sizes, self.sizes))


class MixtureSampler(Sampler[int]):
    """``num_samples`` indices per epoch drawn with replacement from per-sample ``weights``
    (:meth:`MixtureDataset.sample_weights`), from a generator seeded by (seed, epoch) only — so an
    epoch's order never depends on the global RNG and a resumed run replays it exactly. With
    ``world`` > 1, rank ``rank`` takes every ``world``-th draw (``num_samples`` per rank)."""

    def __init__(self, weights: torch.Tensor, num_samples: int, seed: int = 0, rank: int = 0, world: int = 1) -> None:
        if num_samples < 1 or world < 1 or not 0 <= rank < world:
            raise ValueError(f"MixtureSampler: num_samples {num_samples}, rank {rank}, world {world}")
        self.weights, self.num_samples = weights.double(), int(num_samples)
        self.seed, self.rank, self.world = int(seed), int(rank), int(world)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.num_samples

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        idx = torch.multinomial(self.weights, self.num_samples * self.world, replacement=True, generator=g)
        return iter(idx[self.rank::self.world].tolist())


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
