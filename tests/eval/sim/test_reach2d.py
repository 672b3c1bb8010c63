"""reach2d suite, demonstrations / ChunkDataset, and the closed-loop evaluator."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from eval.sim import available_suites, make_suite
from vla_ebt.data.episodes import ChunkDataset, Episode, collate, dataset_stats
from eval.sim.demos import collect_demos
from eval.sim.rollout import (
    CallablePolicy,
    EvalConfig,
    ExpertPolicy,
    RandomPolicy,
    evaluate,
    load_report,
    wilson_interval,
)
from eval.sim.suites.reach2d import MAX_DELTA, SUCCESS_RADIUS


@pytest.fixture(scope="module")
def suite():
    return make_suite("reach2d", image_size=32)


def _rollout(env, actions):
    obs, _ = env.reset()
    out = [obs]
    for a in actions:
        obs, *_ = env.step(a)
        out.append(obs)
    return out


def test_registry():
    assert "reach2d" in available_suites()
    with pytest.raises(ValueError, match="reach2d"):
        make_suite("nope")


def test_env_spaces_and_determinism(suite):
    acts = np.random.default_rng(0).uniform(-0.1, 0.1, (15, 2)).astype(np.float32)
    a = _rollout(suite.make_env("reach_red", seed=7), acts)
    b = _rollout(suite.make_env("reach_red", seed=7), acts)
    c = _rollout(suite.make_env("reach_red", seed=8), acts)
    for x, y in zip(a, b):
        assert np.array_equal(x["image"], y["image"]) and np.array_equal(x["state"], y["state"])
        assert x["instruction"] == y["instruction"]
    assert not np.array_equal(a[0]["image"], c[0]["image"])
    env = suite.make_env("reach_blue", seed=0)
    obs, info = env.reset(seed=3)
    assert obs["image"].shape == (3, 32, 32) and obs["image"].dtype == np.uint8
    assert obs["state"].shape == (suite.state_dim,) and obs["state"].dtype == np.float32
    assert obs["instruction"] in suite.instructions("reach_blue")
    assert env.observation_space.contains(obs) and not info["is_success"]
    # actions are clipped per component to MAX_DELTA
    s0 = obs["state"].copy()
    obs, *_ = env.step(np.array([1.0, -1.0], np.float32))
    np.testing.assert_allclose(np.abs(obs["state"] - s0), [MAX_DELTA, MAX_DELTA], atol=1e-6)
    # reseeding reproduces
    o1, _ = env.reset(seed=3)
    o2, _ = env.reset(seed=3)
    assert np.array_equal(o1["image"], o2["image"])


def test_instructions(suite):
    for t in suite.task_names():
        tr, ho = suite.instructions(t, "train"), suite.instructions(t, "heldout")
        assert len(tr) >= 3 and len(ho) >= 1 and not set(tr) & set(ho)
        assert all(t.split("_")[1] in s for s in tr + ho)
    env = suite.make_env("reach_green", seed=0, split="heldout")
    assert env.reset()[0]["instruction"] in suite.instructions("reach_green", "heldout")
    with pytest.raises(ValueError):
        suite.instructions("reach_green", "test")
    with pytest.raises(ValueError, match="reach_red"):
        suite.make_env("reach_purple", seed=0)


def test_expert_and_random_success(suite):
    expert = evaluate(ExpertPolicy(suite), suite, EvalConfig(episodes_per_task=7, seed=1))  # 21 episodes
    assert expert.overall.success_rate >= 0.95
    rand = evaluate(RandomPolicy(suite, seed=0), suite, EvalConfig(episodes_per_task=7, seed=1))
    assert rand.overall.success_rate <= 0.3


def test_evaluate_matches_direct_count(suite, tmp_path):
    rep = evaluate(ExpertPolicy(suite, noise=0.03), suite,
                   EvalConfig(tasks=["reach_red", "reach_blue"], episodes_per_task=6, seed=5))
    for task in ("reach_red", "reach_blue"):
        eps = [e for e in rep.episodes if e.task == task]
        tr = rep.tasks[task]
        assert tr.episodes == len(eps) == 6
        assert tr.successes == sum(e.success for e in eps)
        assert tr.success_rate == pytest.approx(tr.successes / 6)
        assert tr.mean_length == pytest.approx(np.mean([e.length for e in eps]))
        assert all(e.num_chunks == e.length for e in eps)  # adapters plan every step
    # direct count with a hand-written loop over the same seeds
    from vla_ebt.data.episodes import episode_seed

    direct = 0
    for i in range(6):
        s = episode_seed(5, "reach_red", i)
        env, fn = suite.make_env("reach_red", seed=s), suite.expert("reach_red", noise=0.03, seed=s)
        obs, info = env.reset(seed=s)
        for _ in range(suite.max_episode_steps):
            obs, _, term, trunc, info = env.step(fn(obs, env))
            if term or trunc:
                break
        direct += info["is_success"]
    assert rep.tasks["reach_red"].successes == direct
    path = rep.to_json(tmp_path / "r" / "report.json")
    d = json.loads(path.read_text())
    assert d["tasks"]["reach_red"]["successes"] == direct and len(d["episodes"]) == 12
    assert load_report(path).tasks["reach_blue"].successes == rep.tasks["reach_blue"].successes
    md = rep.to_markdown()
    assert "reach_red" in md and "overall" in md


def test_wilson():
    lo, hi = wilson_interval(8, 10)
    assert lo == pytest.approx(0.490, abs=1e-3) and hi == pytest.approx(0.943, abs=1e-3)
    assert wilson_interval(0, 0) == (0.0, 1.0)
    lo, hi = wilson_interval(10, 10)
    assert hi == 1.0 and lo == pytest.approx(0.722, abs=1e-3)


def test_crashing_policy_recorded(suite):
    calls = {"n": 0}

    def bad(obs):
        calls["n"] += 1
        if calls["n"] % 2 == 0:
            raise RuntimeError("boom")
        return np.zeros(2, np.float32)

    rep = evaluate(CallablePolicy(bad), suite, EvalConfig(tasks=["reach_red"], episodes_per_task=3, seed=0))
    assert rep.tasks["reach_red"].episodes == 3 and rep.tasks["reach_red"].successes == 0
    assert rep.tasks["reach_red"].errors == 3
    assert all("RuntimeError: boom" in e.error and "select_action" in e.error for e in rep.episodes)
    nan = evaluate(CallablePolicy(lambda o: np.full(2, np.nan)), suite,
                   EvalConfig(tasks=["reach_red"], episodes_per_task=1, seed=0))
    assert "non-finite" in nan.episodes[0].error
    assert "non-finite" in nan.to_markdown()


def test_demos_dataset_and_stats(suite):
    eps = collect_demos(suite, ["reach_red", "reach_green"], episodes_per_task=3, seed=0, action_noise=0.01)
    assert len(eps) == 6 and all(isinstance(e, Episode) for e in eps)
    e = eps[0]
    t = len(e)
    assert e.images.shape == (t, 1, 3, 32, 32) and e.images.dtype == np.uint8
    assert e.state.shape == (t, 2) and e.state.dtype == np.float32
    assert e.action.shape == (t, 2) and e.action.dtype == np.float32
    assert np.abs(e.action).max() <= MAX_DELTA + 1e-7
    assert all(x.success for x in eps)
    # final state is within the success radius of the goal after the last action
    assert e.instruction in suite.instructions(e.task) and e.task == "reach_red"

    h, to = 5, 2
    ds = ChunkDataset(eps, horizon=h, obs_steps=to)
    assert len(ds) == sum(len(x) for x in eps)
    s0 = ds[0]
    assert s0["images"].shape == (1, 3, 32, 32) and s0["images"].dtype == torch.float32
    assert 0.0 <= float(s0["images"].min()) and float(s0["images"].max()) <= 1.0
    torch.testing.assert_close(s0["images"], torch.from_numpy(e.images[0]).float() / 255)
    assert s0["state"].shape == (to, 2)
    torch.testing.assert_close(s0["state"][0], s0["state"][1])  # history padded with step 0
    assert s0["embodiment"].dtype == torch.long and int(s0["embodiment"]) == 0
    assert s0["action"].shape == (h, 2) and s0["action_mask"].dtype == torch.bool

    last = ds[t - 1]  # last step of episode 0
    assert last["action_mask"].tolist() == [True] + [False] * (h - 1)
    for k in range(h):
        torch.testing.assert_close(last["action"][k], torch.from_numpy(e.action[t - 1]))
    mid = ds[t - 3]
    assert mid["action_mask"].tolist() == [True] * 3 + [False] * (h - 3)
    torch.testing.assert_close(mid["action"][:3], torch.from_numpy(e.action[t - 3 :]))
    torch.testing.assert_close(mid["state"], torch.from_numpy(e.state[t - 4 : t - 2]))
    assert ds[t]["instruction"] == eps[1].instruction  # first sample of episode 1

    batch = collate([ds[i] for i in range(4)])
    assert batch["images"].shape == (4, 1, 3, 32, 32) and batch["action"].shape == (4, h, 2)
    assert batch["state"].shape == (4, to, 2) and batch["embodiment"].shape == (4,)
    assert batch["action_mask"].shape == (4, h) and isinstance(batch["instruction"], list)

    hist = ChunkDataset(eps, horizon=h, obs_steps=3, image_history=True)[2]
    assert hist["images"].shape == (3, 3, 32, 32)
    torch.testing.assert_close(hist["images"][0], torch.from_numpy(e.images[0, 0]).float() / 255)

    stats = dataset_stats(eps)
    acts = np.concatenate([x.action for x in eps]).astype(np.float64)
    states = np.concatenate([x.state for x in eps]).astype(np.float64)
    np.testing.assert_allclose(stats.action.mean, acts.mean(0), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(stats.action.std, acts.std(0), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(stats.state.q99, np.quantile(states, 0.99, axis=0), rtol=1e-12)
    np.testing.assert_allclose(stats.state.min, states.min(0))
    assert stats.num_episodes == 6 and stats.num_steps == len(ds) == stats.action.count


def test_demo_success_radius(suite):
    eps = collect_demos(suite, None, episodes_per_task=1, seed=3)
    assert [e.task for e in eps] == suite.task_names()
    for e in eps:
        env = suite.make_env(e.task, seed=e.seed)
        env.reset(seed=e.seed)
        pos = e.state[-1].astype(np.float64) + e.action[-1]
        assert np.linalg.norm(pos - env.unwrapped.goal) <= SUCCESS_RADIUS + 1e-6


def test_video(suite, tmp_path):
    rep = evaluate(ExpertPolicy(suite), suite, EvalConfig(tasks=["reach_green"], episodes_per_task=2, seed=0,
                                                         video_dir=tmp_path, max_videos_per_task=1))
    assert rep.episodes[0].video and (tmp_path / "reach_green_ep000_success.gif").exists()
    assert rep.episodes[1].video is None
