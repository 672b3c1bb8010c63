"""reach2d_detour: the bimodal expert, the fatal average, mode bookkeeping, and demo caching in
the shard schema (round trip through the cache and the streaming loader)."""

from __future__ import annotations

import collections

import numpy as np
import pytest

from eval.sim.demo_cache import DemoSpec, cached_demos, read_demo_shards
from vla_ebt.data.episodes import episode_seed
from eval.sim.suites import available_suites, make_suite
from eval.sim.suites.reach2d_detour import OBSTACLE_RADIUS


def _rollout(env, act, seed):
    obs, info = env.reset(seed=seed)
    while True:
        obs, _, term, trunc, info = env.step(act(obs, env))
        if term or trunc:
            return info


def test_registered_and_obstacle_is_visible():
    assert "reach2d_detour" in available_suites()
    suite = make_suite("reach2d_detour", image_size=64)
    env = suite.make_env("reach_red", seed=3)
    obs, _ = env.reset()
    e = env.unwrapped
    col = int((e.obstacle[0]) * 64)
    row = int((1 - e.obstacle[1]) * 64)
    assert (obs["image"][:, row, col] == 128).all()  # gray obstacle pixel at its center
    # the obstacle sits midway on the straight path
    assert np.allclose(e.obstacle, 0.5 * (e.start + e.goal))


def test_expert_is_bimodal_succeeds_and_straight_path_collides():
    suite = make_suite("reach2d_detour")
    modes, straight = collections.Counter(), collections.Counter()
    for task in suite.task_names():
        for i in range(20):
            s = episode_seed(0, task, i)
            ex = suite.expert(task, seed=s)
            info = _rollout(suite.make_env(task, seed=s), ex, s)
            assert info["is_success"], (task, i, info)
            assert info["mode"] == {1: "left", -1: "right"}[ex.side]
            assert abs(info["lateral"]) > OBSTACLE_RADIUS
            modes[info["mode"]] += 1

            def avg(obs, env):  # the mean of the two modes: straight to the target
                d = env.unwrapped.goal - obs["state"]
                return (d * min(1.0, 0.05 / np.abs(d).max())).astype(np.float32)

            info = _rollout(suite.make_env(task, seed=s), avg, s)
            straight[info["mode"]] += 1
            assert not info["is_success"] and info["collision"]
    assert 20 <= modes["left"] <= 40 and 20 <= modes["right"] <= 40, modes  # 60 episodes, ~50/50
    assert straight["collision"] == 60


def test_side_is_not_visible_in_the_observation():
    """Two expert instances on the same start state can pick different sides: the side depends only
    on the expert's own seed, never on the layout."""
    suite = make_suite("reach2d_detour")
    sides = {suite.expert("reach_blue", seed=k).side for k in range(16)}
    assert sides == {1, -1}
    env = suite.make_env("reach_blue", seed=5)
    o1, _ = env.reset(seed=5)
    o2, _ = suite.make_env("reach_blue", seed=5).reset(seed=5)
    assert np.array_equal(o1["image"], o2["image"])


def test_left_share_and_bad_value():
    suite = make_suite("reach2d_detour", left_share=1.0)
    assert all(suite.expert("reach_red", seed=k).side == 1 for k in range(10))
    with pytest.raises(ValueError, match="left_share"):
        make_suite("reach2d_detour", left_share=1.5)


def test_demo_cache_round_trips_bit_exact_and_streams(tmp_path):
    from vla_ebt.data.stream import EpisodeStream, StreamConfig, load_normalizer

    spec = DemoSpec(suite="reach2d_detour", tasks=("reach_red", "reach_green"), episodes_per_task=6, seed=1)
    eps, folder = cached_demos(spec, tmp_path, log=None)
    assert len(eps) == 12 and (folder / "stats.json").exists() and (folder / "spec.json").exists()
    again, folder2 = cached_demos(spec, tmp_path, log=None)
    assert folder2 == folder
    for a, b in zip(eps, again):
        assert (a.task, a.seed, a.instruction) == (b.task, b.seed, b.instruction)
        assert np.array_equal(a.images, b.images) and np.array_equal(a.action, b.action)
        assert np.array_equal(a.state, b.state)
    # a different spec is a different folder; a leftover temp folder is never read
    other, folder3 = cached_demos(DemoSpec(suite="reach2d_detour", tasks=("reach_red",), episodes_per_task=2),
                                  tmp_path, log=None)
    assert folder3 != folder and len(other) == 2
    assert len(read_demo_shards(folder)) == 12
    # the same folder streams through the training data loader
    norm = load_normalizer([folder], max_action_dim=2, max_state_dim=2)
    ds = EpisodeStream([folder], norm, StreamConfig(image_size=64, horizon=4, batch_size=8, train=False,
                                                    shuffle_buffer=10))
    b = next(iter(ds))
    assert b["images"].shape == (8, 1, 3, 64, 64) and b["action"].shape == (8, 4, 2)
    assert set(b["instruction"]) <= {e.instruction for e in eps}


def test_finetune_sim_data_uses_the_demo_cache(tmp_path, capsys):
    """recipes' sim data path writes demos once in the shard schema and reads them back after."""
    import dataclasses

    from recipes.configs import DataConfig
    from recipes.data import sim_data
    from tests.policy_fixtures import small_config

    pc = dataclasses.replace(small_config(), action_dim=2, state_dim=2)
    dc = DataConfig(suite="reach2d_detour", tasks=("reach_red",), episodes_per_task=3, demo_cache=str(tmp_path),
                    suite_args=("max_episode_steps=40",))
    a = sim_data(dc, pc, batch_size=4, seed=0, world=1, rank=0)
    first = capsys.readouterr().out
    b = sim_data(dc, pc, batch_size=4, seed=0, world=1, rank=0)
    second = capsys.readouterr().out
    assert "wrote 3 demo episodes" in first and "3 cached demo episodes" in second
    assert a.num_samples == b.num_samples and a.suite.max_episode_steps == 40
    folders = [p for p in tmp_path.iterdir() if p.is_dir()]
    assert len(folders) == 1 and (folders[0] / "stats.json").exists()
    with pytest.raises(SystemExit, match="suite_args"):
        sim_data(dataclasses.replace(dc, suite_args=("novalue",)), pc, 4, 0, 1, 0)
