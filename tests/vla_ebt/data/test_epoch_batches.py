"""vla_ebt.data.epoch_batches: a run resumed at batch N gets the batches an uninterrupted run sees
from N, loads none of the skipped ones, draws nothing from the global RNG; ranks read disjoint shares."""

import itertools

import pytest
import torch
from torch.utils.data import Dataset

from vla_ebt.data.episodes import MixtureSampler
from vla_ebt.data.epoch_batches import EpochShuffleSampler, epoch_batches


class CountingDataset(Dataset):
    def __init__(self, n: int) -> None:
        self.n, self.loads = n, 0

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> int:
        self.loads += 1
        return i


def _collate(xs):
    return torch.tensor(xs)


@pytest.mark.parametrize("mixture", [False, True])
def test_resume_matches_the_full_run_and_loads_only_what_it_yields(mixture):
    ds = CountingDataset(23)  # 5 full batches of 4 per epoch, a tail of 3 dropped
    make = (lambda: MixtureSampler(torch.full((23,), 1 / 23), 23, seed=7)) if mixture else \
        (lambda: EpochShuffleSampler(23, seed=7))
    full = list(itertools.islice(epoch_batches(ds, make(), batch_size=4, collate_fn=_collate), 13))
    assert all(b.shape == (4,) for b in full)
    epochs = [torch.cat(full[i:i + 5]) for i in (0, 5)]
    assert not torch.equal(epochs[0], epochs[1]), "every epoch has its own order"
    if not mixture:
        assert all(len(set(e.tolist())) == 20 for e in epochs), "a shuffle sees each sample at most once per epoch"

    again = CountingDataset(23)
    torch.manual_seed(123)
    before = torch.get_rng_state()
    resumed = list(itertools.islice(epoch_batches(again, make(), batch_size=4, collate_fn=_collate, start=7), 6))
    assert torch.equal(torch.get_rng_state(), before), "resuming drew from the global RNG"
    for a, b in zip(full[7:], resumed):
        assert torch.equal(a, b)
    assert again.loads == 6 * 4, f"loaded {again.loads} samples for 6 batches: skipped batches were replayed"


def test_ranks_read_disjoint_shares_of_each_epoch():
    shares = [EpochShuffleSampler(10, seed=1, rank=r, world=3) for r in range(3)]
    for s in shares:
        s.set_epoch(4)
    idx = [list(s) for s in shares]
    assert [len(i) for i in idx] == [3, 3, 3]
    assert len(set().union(*idx)) == 9


def test_bad_sizes_are_named():
    with pytest.raises(ValueError, match="fewer than one batch of 8"):
        next(epoch_batches(CountingDataset(5), EpochShuffleSampler(5), batch_size=8, collate_fn=_collate))
    with pytest.raises(ValueError, match="rank 3, world 2"):
        EpochShuffleSampler(5, rank=3, world=2)
