"""Env worker processes: parallel == serial evaluation, and surviving workers that crash or hang.

The ``faulty_reach2d`` suite below is reach2d whose env misbehaves at step ``FAULT_STEP`` of an
episode with a chosen env seed: it raises, calls ``os._exit(3)``, segfaults or sleeps forever.
Env workers import this module (``import_modules=[__name__]``) to register it, so the module
keeps its top-level imports light (no torch: each worker start would pay for it).
"""

from __future__ import annotations

import ctypes
import os
import time
from typing import Any

import numpy as np
import pytest

from eval.sim.suites import available_suites, register_suite
from eval.sim.suites.reach2d import Reach2DEnv, Reach2DSuite
from eval.sim.workers import EnvWorkerPool, RemoteError, WorkerConfig, WorkerCrashed, WorkerStartError, WorkerTimeout

FAULT_STEP = 3
THIS_MODULE = __name__  # "tests.eval.sim.test_env_workers" under pytest


class FaultyEnv(Reach2DEnv):
    """reach2d env that misbehaves at step FAULT_STEP (mode: raise / exit / segv / hang / None)."""

    def __init__(self, *args: Any, fault: str | None = None, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.fault = fault

    def step(self, action):
        if self._steps + 1 == FAULT_STEP and self.fault:
            if self.fault == "raise":
                raise RuntimeError("injected env fault")
            if self.fault == "exit":
                os._exit(3)
            if self.fault == "segv":
                ctypes.string_at(0)  # SIGSEGV
            if self.fault == "hang":
                time.sleep(3600)
        return super().step(action)


class FaultySuite(Reach2DSuite):
    """reach2d with ``faults``: {str(env seed): mode}."""

    name = "faulty_reach2d"

    def __init__(self, image_size: int = 32, max_episode_steps: int = 40, faults: dict[str, str] | None = None) -> None:
        super().__init__(image_size=image_size, max_episode_steps=max_episode_steps)
        self.faults = dict(faults or {})

    def make_env(self, task: str, seed: int | None = None, split: str = "train") -> FaultyEnv:
        self.check_task(task)
        return FaultyEnv(
            self._color(task), image_size=self.image_size, max_episode_steps=self.max_episode_steps,
            instructions=self.instructions(task, split), seed=seed, fault=self.faults.get(str(seed)),
        )


if "faulty_reach2d" not in available_suites():
    register_suite("faulty_reach2d")(FaultySuite)


def _key(e: Any) -> tuple:
    """Everything of an EpisodeResult except timings."""
    return (e.task, e.index, e.seed, e.base_seed, e.instruction, e.success, e.length, len(e.chunk_latency_ms),
            e.energy, e.steps, e.error)


def _toward_center(obs: dict) -> np.ndarray:
    """Deterministic policy of the observation only: head for the brightest-red pixel's column/row
    sign, else the center (fails most tasks, exercises long episodes)."""
    s = obs["state"][0, -1].numpy()
    img = obs["images"][0, 0].numpy()
    r, c = np.unravel_index(np.argmax(img[0] - img[1] - img[2]), img.shape[1:])
    goal = np.array([(c + 0.5) / img.shape[2], 1 - (r + 0.5) / img.shape[1]])
    return np.clip(goal - s, -0.05, 0.05)


class CountingPolicy:
    """Hidden per-episode state and no rollout_state(): must run one episode at a time."""

    def __init__(self) -> None:
        self.last_output = None
        self.k = 0

    def reset(self) -> None:
        self.k = 0

    def select_action(self, obs: dict) -> np.ndarray:
        self.k += 1
        return np.array([0.01 * np.sin(self.k), 0.01 * np.cos(self.k)], np.float32)


@pytest.mark.slow
def test_parallel_equals_serial():
    from eval.sim.rollout import CallablePolicy, EvalConfig, ExpertPolicy, RandomPolicy, evaluate
    from eval.sim.suites import make_suite

    suite = make_suite("reach2d", image_size=32, max_episode_steps=30)
    tasks = ["reach_red", "reach_blue"]
    for policy in (ExpertPolicy(suite, noise=0.03), RandomPolicy(suite, seed=4), CallablePolicy(_toward_center),
                   CountingPolicy()):
        serial = evaluate(policy, suite, EvalConfig(tasks=tasks, episodes_per_task=3, seeds=[0, 1]))
        if isinstance(policy, CountingPolicy):
            with pytest.warns(UserWarning, match="run one at a time"):
                par = evaluate(policy, suite, EvalConfig(tasks=tasks, episodes_per_task=3, seeds=[0, 1], num_workers=2))
        else:
            par = evaluate(policy, suite, EvalConfig(tasks=tasks, episodes_per_task=3, seeds=[0, 1], num_workers=2))
        assert par.num_workers == 2 and serial.num_workers == 0 and par.worker_restarts == 0
        assert [_key(e) for e in par.episodes] == [_key(e) for e in serial.episodes], type(policy).__name__
        assert len(par.episodes) == 12 and {e.base_seed for e in par.episodes} == {0, 1}
        assert par.to_dict()["tasks"]["reach_red"]["successes"] == serial.tasks["reach_red"].successes
    # the baselines behave as baselines through the workers
    cfg = EvalConfig(tasks=tasks, episodes_per_task=3, seed=2, num_workers=2)
    assert evaluate(ExpertPolicy(suite), suite, cfg).overall.success_rate == 1.0


def test_crash_hang_and_env_errors_are_survived():
    from vla_ebt.data.episodes import episode_seed
    from eval.sim.rollout import EvalConfig, ExpertPolicy, evaluate
    from eval.sim.suites import make_suite

    faults = {
        episode_seed(0, "reach_red", 1): "exit",
        episode_seed(0, "reach_red", 2): "segv",
        episode_seed(0, "reach_blue", 0): "hang",
        episode_seed(0, "reach_blue", 2): "raise",
    }
    kw = {"faults": {str(k): v for k, v in faults.items()}}
    suite = make_suite("faulty_reach2d", **kw)  # never stepped in this process
    t0 = time.perf_counter()
    rep = evaluate(ExpertPolicy(suite), "faulty_reach2d", EvalConfig(
        tasks=["reach_red", "reach_blue"], episodes_per_task=4, seed=0, num_workers=2, suite_kwargs=kw,
        import_modules=[THIS_MODULE], step_timeout_s=1.0))
    wall = time.perf_counter() - t0
    errors = {(e.task, e.index): e.error for e in rep.episodes if e.error}
    assert errors.keys() == {("reach_red", 1), ("reach_red", 2), ("reach_blue", 0), ("reach_blue", 2)}
    assert errors[("reach_red", 1)] == "env worker crashed (exit code 3) during env.step"
    assert errors[("reach_red", 2)] == "env worker crashed (exit code -11) during env.step"
    assert errors[("reach_blue", 0)] == "env worker timed out after 1 s during env.step"
    assert errors[("reach_blue", 2)].startswith("env.step: RuntimeError: injected env fault (at test_env_workers.py:")
    # every other episode ran to success; the failed ones stopped at the faulty step
    assert all(e.success for e in rep.episodes if not e.error)
    assert all(e.length == FAULT_STEP - 1 and not e.success for e in rep.episodes if e.error)
    assert rep.tasks["reach_red"].errors == 2 and rep.tasks["reach_blue"].errors == 2
    assert rep.tasks["reach_red"].successes == 2 and rep.overall.errors == 4
    assert rep.worker_restarts == 3  # the env exception did not cost a worker
    md = rep.to_markdown()
    assert "4 episode(s) ended with an error" in md and "exit code -11" in md and "(3 replaced)" in md
    assert wall < 30
    # the same env exception reads the same in a serial run (in this process: only the raising fault)
    raising = make_suite("faulty_reach2d", faults={str(episode_seed(0, "reach_blue", 2)): "raise"})
    serial = evaluate(ExpertPolicy(raising), raising, EvalConfig(tasks=["reach_blue"], episodes_per_task=3, seed=0))
    assert serial.episodes[2].error == errors[("reach_blue", 2)]


def test_worker_replaced_after_crash_and_timeout():
    from vla_ebt.data.episodes import episode_seed

    bad = episode_seed(0, "reach_green", 0)
    cfg = WorkerConfig("faulty_reach2d", {"faults": {str(bad): "exit", "7": "hang"}}, import_modules=[THIS_MODULE])
    with EnvWorkerPool(cfg, 1) as pool:
        assert pool.info.tasks == ["reach_red", "reach_green", "reach_blue"] and pool.info.image_size == 32
        assert pool.call(0, "ping") == "pong"
        pid = pool.workers[0].proc.pid
        r = pool.call(0, "open", {"task": "reach_green", "seed": bad, "render": True, "expert": {"noise": 0.0}})
        assert r["obs"]["image"].shape == (3, 32, 32) and r["frame"].shape == (32, 32, 3)
        assert r["expert_action"].shape == (2,) and r["obs"]["instruction"]
        with pytest.raises(RemoteError, match="env.step: ValueError: reach2d: action must have shape"):
            pool.call(0, "step", {"action": np.zeros(3, np.float32)})  # an env error: same worker goes on
        assert pool.workers[0].proc.pid == pid
        for _ in range(FAULT_STEP - 1):
            pool.call(0, "step", {"action": np.zeros(2, np.float32)})
        with pytest.raises(WorkerCrashed, match=r"exit code 3\) during env.step") as crash:
            pool.call(0, "step", {"action": np.zeros(2, np.float32)})
        assert crash.value.exit_code == 3 and pool.restarts == 1
        while not pool.idle_workers():  # the replacement starts in the background
            pool.poll(timeout_s=0.5)
        assert pool.workers[0].proc.pid != pid and pool.call(0, "ping") == "pong"
        pool.call(0, "open", {"task": "reach_red", "seed": 7})
        for _ in range(FAULT_STEP - 1):
            pool.call(0, "step", {"action": np.zeros(2, np.float32)})
        t0 = time.perf_counter()
        with pytest.raises(WorkerTimeout, match="timed out after 0.5 s during env.step"):
            pool.call(0, "step", {"action": np.zeros(2, np.float32)}, timeout_s=0.5)
        assert 0.5 <= time.perf_counter() - t0 < 5 and pool.restarts == 2
        assert pool.failures[0].startswith("env worker crashed") and pool.failures[1].startswith("env worker timed out")
        while not pool.idle_workers():
            pool.poll(timeout_s=0.5)
        r = pool.call(0, "open", {"task": "reach_red", "seed": 8})
        assert r["info"]["is_success"] is False
        # a worker that dies while idle is replaced before it is given work
        pool.workers[0].proc.kill()
        pool.workers[0].proc.wait()
        assert pool.idle_workers() == [] and pool.restarts == 3
        assert pool.failures[-1] == "env worker crashed (exit code -9) during idle time between episodes"
        while not pool.idle_workers():
            pool.poll(timeout_s=0.5)
        assert pool.call(0, "ping") == "pong"


def test_worker_start_errors_are_clear():
    with pytest.raises(WorkerStartError, match="unknown suite 'no_such_suite'.*reach2d"):
        EnvWorkerPool(WorkerConfig("no_such_suite"), 1)
    with pytest.raises(WorkerStartError, match="ModuleNotFoundError"):
        EnvWorkerPool(WorkerConfig("reach2d", import_modules=["tests.no_such_module"]), 1)
    with pytest.raises(WorkerStartError, match="cannot start env worker"):
        EnvWorkerPool(WorkerConfig("reach2d", python="/nonexistent/python"), 1)


def test_suite_object_and_mismatched_kwargs():
    from eval.sim.rollout import EvalConfig, ExpertPolicy, evaluate
    from eval.sim.suites import make_suite

    suite = make_suite("reach2d", image_size=24, max_episode_steps=25)  # kwargs inferred for the workers
    rep = evaluate(ExpertPolicy(suite), suite, EvalConfig(tasks=["reach_green"], episodes_per_task=2, num_workers=2))
    assert rep.overall.success_rate == 1.0
    with pytest.raises(ValueError, match=r"differs from the given suite in \['image_size'\]"):
        evaluate(ExpertPolicy(suite), suite, EvalConfig(tasks=["reach_green"], episodes_per_task=2, num_workers=1,
                                                        suite_kwargs={"max_episode_steps": 25}))
