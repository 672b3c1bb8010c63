"""recipes.data: a resumed process (data built anew) starting at step N gets the batches an
uninterrupted run sees from step N, and skipping the consumed batches leaves the global RNG (which
the resumed run restores from its checkpoint) untouched, for one process and for a rank of a
2-process run."""

import dataclasses
import itertools

import pytest
import torch

from recipes.configs import DataConfig
from recipes.data import sim_data
from tests.policy_fixtures import small_config


@pytest.mark.parametrize("world,rank", [(1, 0), (2, 1)])
def test_resumed_batches_continue_the_run_without_touching_the_global_rng(tmp_path, world, rank):
    pc = dataclasses.replace(small_config(), action_dim=2, state_dim=2)
    dc = DataConfig(suite="reach2d_detour", tasks=("reach_red",), episodes_per_task=2, demo_cache=str(tmp_path),
                    suite_args=("max_episode_steps=20",))
    data = sim_data(dc, pc, batch_size=4, seed=3, world=world, rank=rank)
    per_epoch = data.num_samples // (4 * world)
    start = per_epoch + 2  # past an epoch boundary: the loader builds a new iterator on the way
    full = list(itertools.islice(data.make_batches(0), start + 3))

    again = sim_data(dc, pc, batch_size=4, seed=3, world=world, rank=rank)  # the resumed process builds it anew
    torch.manual_seed(123)
    before = torch.get_rng_state()
    resumed = list(itertools.islice(again.make_batches(start), 3))
    assert torch.equal(torch.get_rng_state(), before), "skipping consumed batches drew from the global RNG"
    for a, b in zip(full[start:], resumed):
        assert torch.equal(a["action"], b["action"]) and torch.equal(a["state"], b["state"])
