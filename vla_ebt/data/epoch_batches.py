"""Resumable training batches from a map-style dataset: every epoch's order is a function of
(seed, epoch) only, so a run resumed at batch N starts there without loading the N batches before it.

::

    sampler = EpochShuffleSampler(len(dataset), seed=0, rank=0, world=1)   # or a MixtureSampler
    batches = epoch_batches(dataset, sampler, batch_size=32, collate_fn=collate, start=N)

``sampler`` is any sampler with ``set_epoch(epoch)`` whose order for an epoch does not depend on
any other state (:class:`EpochShuffleSampler`, :class:`~vla_ebt.data.episodes.MixtureSampler`).
Batches are consecutive ``batch_size`` slices of an epoch's indices; the tail shorter than a batch
is dropped. Nothing here draws from the global torch RNG (a resumed run restores it from its
checkpoint; a draw here would shift every later random number).
"""

from __future__ import annotations

import itertools
from typing import Any, Callable, Iterator, Protocol, Sequence, Sized

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

__all__ = ["EpochShuffleSampler", "EpochSampler", "epoch_batches", "batches_per_epoch"]


class EpochSampler(Protocol):
    """A sampler whose order is fixed by ``set_epoch(epoch)`` (and its own seed)."""

    def set_epoch(self, epoch: int) -> None: ...

    def __iter__(self) -> Iterator[int]: ...

    def __len__(self) -> int: ...


class EpochShuffleSampler(Sampler[int]):
    """A random permutation of ``range(size)`` per epoch, from a generator seeded by (seed, epoch);
    with ``world`` > 1, rank ``rank`` takes every ``world``-th index of the permutation cut to a
    multiple of ``world`` (``size // world`` indices per rank, disjoint across ranks).
    ValueError if ``size < world`` or the rank is out of range."""

    def __init__(self, size: int, seed: int = 0, rank: int = 0, world: int = 1) -> None:
        if world < 1 or not 0 <= rank < world or size < world:
            raise ValueError(f"EpochShuffleSampler: size {size}, rank {rank}, world {world} "
                             "(expected world >= 1, 0 <= rank < world, size >= world)")
        self.size, self.seed, self.rank, self.world = int(size), int(seed), int(rank), int(world)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.size // self.world

    def __iter__(self) -> Iterator[int]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        perm = torch.randperm(self.size, generator=g)[: len(self) * self.world]
        return iter(perm[self.rank::self.world].tolist())


def batches_per_epoch(sampler: Sized, batch_size: int) -> int:
    """Full batches per epoch; ValueError if the sampler holds fewer indices than one batch."""
    n = len(sampler) // int(batch_size)
    if n < 1:
        raise ValueError(f"epoch_batches: {len(sampler)} samples per epoch, fewer than one batch of {batch_size}")
    return n


def epoch_batches(dataset: Dataset, sampler: EpochSampler, *, batch_size: int,
                  collate_fn: Callable[[Sequence[Any]], Any], num_workers: int = 0, start: int = 0,
                  seed: int = 0) -> Iterator[Any]:
    """An endless iterator of collated batches, beginning at batch ``start`` (0-based over all
    epochs). Skipped batches are never loaded: epoch ``start // per_epoch`` starts at its
    ``start % per_epoch``-th batch. Worker seeds (``num_workers`` > 0) come from (seed, epoch)."""
    if start < 0:
        raise ValueError(f"epoch_batches: start must be >= 0, got {start}")
    per_epoch = batches_per_epoch(sampler, batch_size)
    epoch, skip = divmod(int(start), per_epoch)
    for epoch in itertools.count(epoch):
        sampler.set_epoch(epoch)
        indices = list(sampler)[skip * batch_size: per_epoch * batch_size]
        skip = 0
        # the loader draws its workers' base seed from this generator (never from the global RNG)
        gen = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
        yield from DataLoader(dataset, batch_size=batch_size, sampler=indices, drop_last=True,
                              collate_fn=collate_fn, num_workers=num_workers, generator=gen)

