"""Declared contracts (eval.sim.contracts): which policies the evaluator accepts, the EvalConfig
options, and the one Displacement type every perturbable suite returns."""

from __future__ import annotations

import dataclasses

import gymnasium as gym
import numpy as np
import pytest

from eval.sim.contracts import (
    DisplaceableEnv,
    Displacement,
    EpisodeAware,
    InterleavablePolicy,
    PerturbableSuite,
    RolloutPolicy,
    WorkerSideExpert,
)
from eval.sim.perturb import DisplaceObject, PerturbedSuite
from eval.sim.rollout import CallablePolicy, EvalConfig, ExpertPolicy, RandomPolicy, evaluate, evaluate_callable
from eval.sim.suites import make_suite
from tests.policy_fixtures import make_policy


@pytest.fixture(scope="module")
def suite():
    return make_suite("reach2d", image_size=16, max_episode_steps=20)


# ---------------------------------------------------------------------------------------- policies


def test_builtin_policies_satisfy_the_rollout_protocol(suite):
    vla = make_policy(head="regression")
    for pol in (ExpertPolicy(suite), RandomPolicy(suite), CallablePolicy(lambda o: np.zeros(2)), vla):
        assert isinstance(pol, RolloutPolicy), type(pol).__name__
        assert isinstance(pol, InterleavablePolicy), type(pol).__name__  # env workers can interleave episodes
    assert isinstance(ExpertPolicy(suite), WorkerSideExpert) and isinstance(ExpertPolicy(suite), EpisodeAware)
    assert not isinstance(vla, WorkerSideExpert) and not isinstance(RandomPolicy(suite), WorkerSideExpert)


class _NoSelectAction:
    last_output = None

    def reset(self) -> None:
        pass


class _NoLastOutput:
    def reset(self) -> None:
        pass

    def select_action(self, obs):
        return np.zeros(2)


def test_evaluate_refuses_a_policy_lacking_a_member(suite):
    cfg = EvalConfig(tasks=["reach_red"], episodes_per_task=1)
    assert not isinstance(_NoSelectAction(), RolloutPolicy)
    with pytest.raises(TypeError, match=r"_NoSelectAction is not a rollout policy: it lacks select_action"):
        evaluate(_NoSelectAction(), suite, cfg)
    with pytest.raises(TypeError, match=r"_NoLastOutput is not a rollout policy: it lacks last_output"):
        evaluate(_NoLastOutput(), suite, cfg)
    with pytest.raises(TypeError, match="EvalConfig"):  # the old positional form
        evaluate(ExpertPolicy(suite), suite, ["reach_red"])  # type: ignore[arg-type]


def test_a_minimal_policy_runs(suite):
    class Still:
        last_output = None

        def reset(self) -> None:
            pass

        def select_action(self, obs):
            return np.zeros((1, 2), np.float32)

    rep = evaluate(Still(), suite, EvalConfig(tasks=["reach_red"], episodes_per_task=2, seed=0))
    assert [e.length for e in rep.episodes] == [20, 20] and not any(e.error for e in rep.episodes)


# ---------------------------------------------------------------------------------------- EvalConfig


def test_eval_config_defaults_validation_and_callable(suite):
    cfg = EvalConfig()
    assert (cfg.tasks, cfg.episodes_per_task, cfg.seed, cfg.num_workers, cfg.split) == (None, 10, 0, 0, "train")
    assert cfg.base_seeds() == [0] and EvalConfig(seed=3, seeds=[5, 6]).base_seeds() == [5, 6]
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.seed = 1  # type: ignore[misc]
    with pytest.raises(ValueError, match="seeds must not be empty"):
        EvalConfig(seeds=[])
    with pytest.raises(ValueError, match="video_format"):
        EvalConfig(video_format="avi")
    with pytest.raises(ValueError, match="sequence of task names"):
        EvalConfig(tasks="reach_red")
    a = evaluate_callable(lambda o: np.full(2, 0.05), suite, EvalConfig(tasks=["reach_red"], episodes_per_task=2))
    b = evaluate(CallablePolicy(lambda o: np.full(2, 0.05)), suite, EvalConfig(tasks=["reach_red"], episodes_per_task=2))
    assert [(e.seed, e.length, e.success) for e in a.episodes] == [(e.seed, e.length, e.success) for e in b.episodes]


# ---------------------------------------------------------------------------------------- displacement


@pytest.mark.parametrize("name", ["reach2d", "reach2d_detour"])
def test_reach_suites_return_a_displacement(name):
    s = make_suite(name, image_size=16)
    assert isinstance(s, PerturbableSuite)
    env = s.make_env("reach_green", seed=0)
    env.reset()
    assert isinstance(env.unwrapped, DisplaceableEnv)
    goal = env.unwrapped.goal.copy()
    d = env.unwrapped.displace_object(np.random.default_rng(0), 0.2)
    assert isinstance(d, Displacement)
    np.testing.assert_array_equal(d.before, goal)
    np.testing.assert_array_equal(d.after, env.unwrapped.goal)
    np.testing.assert_allclose(d.delta, d.after - d.before)
    assert 0.0 < np.linalg.norm(d.delta) <= 0.2 + 1e-9


def test_displace_wrapper_records_the_displacement_and_checks_the_hook(suite):
    env = DisplaceObject(suite.make_env("reach_red", seed=1), at=1, scale=0.3)
    env.reset(seed=1)
    assert env.displacement is None
    env.step(np.zeros(2, np.float32))
    env.step(np.zeros(2, np.float32))
    assert isinstance(env.displacement, Displacement)
    np.testing.assert_array_equal(env.displacement.after, env.unwrapped.goal)
    env.reset(seed=1)
    assert env.displacement is None

    class NoHook(gym.Env):
        action_space = gym.spaces.Box(-1, 1, (2,))

    with pytest.raises(ValueError, match="NoHook has no displace_object"):
        DisplaceObject(NoHook())

    class OldHook(NoHook):
        def displace_object(self, rng, scale=1.0):
            return np.zeros(2)  # a bare array: not the contract

        def step(self, action):
            return {}, 0.0, False, False, {}

        def reset(self, *, seed=None, options=None):
            return {}, {}

    bad = DisplaceObject(OldHook(), at=0)
    bad.reset(seed=0)
    with pytest.raises(TypeError, match="OldHook.displace_object returned ndarray, expected .*Displacement"):
        bad.step(np.zeros(2))
    with pytest.raises(TypeError, match="not a suite"):
        PerturbedSuite(object(), [])
