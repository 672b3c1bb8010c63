"""LIBERO suite: worker protocol, env proxy (reset determinism, spaces, steps), evaluate(), errors.

Needs the LIBERO venv (``.venv-libero``, built by setup.sh); skipped with the reason otherwise.
Rendering is on the CPU (MUJOCO_GL=egl, Mesa llvmpipe): each rendered camera costs ~0.1 s a step.
"""

from __future__ import annotations

import os
import sys
import time

import numpy as np
import pytest

from eval.sim import available_suites, make_suite
from eval.sim.libero_worker import quat_to_axis_angle
from eval.sim.rollout import EvalConfig, RandomPolicy, evaluate
from vla_ebt_client import wire
from eval.sim.suites.libero import (
    DEFAULT_PYTHON,
    LiberoUnavailableError,
    LiberoWorkerError,
    default_max_episode_steps,
    heldout_paraphrases,
    resolve_python,
)


def _libero_python() -> str | None:
    try:
        return str(resolve_python(None))
    except LiberoUnavailableError:
        return None


needs_libero = pytest.mark.skipif(
    _libero_python() is None,
    reason=f"LIBERO venv missing ({DEFAULT_PYTHON}); `bash setup.sh --install-only` builds it",
)
BENCH = "libero_spatial"
SIZE = 32


def _gone(pid: int, timeout: float = 10.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.05)
    return False


@pytest.fixture(scope="module")
def suite():
    s = make_suite("libero", benchmark=BENCH, image_size=SIZE, python=_libero_python())
    yield s
    s.close()


# ------------------------------------------------------------------ no worker needed


def test_protocol_roundtrip_and_helpers():
    msg = {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "b": [np.uint8(3), "x", {"c": np.zeros((0, 2), bool)}]}
    frame = wire.encode_frame(msg)
    assert int.from_bytes(frame[:4], "big") == len(frame) - 4
    back = wire.unpackb(frame[4:])
    assert back["a"].dtype == np.float32 and np.array_equal(back["a"], msg["a"]) and back["a"].flags.writeable
    assert back["b"][0] == 3 and back["b"][2]["c"].shape == (0, 2)
    # axis-angle of a 90 degree rotation about z, (x, y, z, w) quaternion
    aa = quat_to_axis_angle(np.array([0.0, 0.0, np.sin(np.pi / 4), np.cos(np.pi / 4)]))
    assert np.allclose(aa, [0.0, 0.0, np.pi / 2]) and np.allclose(quat_to_axis_angle(np.array([0, 0, 0, 1.0])), 0)
    assert default_max_episode_steps("libero_spatial") == 220 and default_max_episode_steps("libero_10_lan") == 520
    assert default_max_episode_steps("libero_goal_swap") == 300 and default_max_episode_steps("libero_90") == 400
    para = heldout_paraphrases("pick up the bowl and place it on the plate")
    assert len(para) >= 5 and "pick up the bowl and place it on the plate" not in para
    assert "grab the bowl and place it on the plate" in para


def test_missing_or_broken_python_gives_clear_errors(tmp_path):
    assert "libero" in available_suites()
    with pytest.raises(LiberoUnavailableError, match=r"not found .*setup\.sh"):
        make_suite("libero", python=str(tmp_path / "no-venv" / "bin" / "python"))
    # an interpreter without LIBERO (this one): the worker reports the import error and exits
    with pytest.raises(LiberoUnavailableError, match=r"could not load LIBERO: ModuleNotFoundError.*libero"):
        make_suite("libero", python=sys.executable)
    # not a Python at all: it exits before the start-up message
    fake = tmp_path / "python"
    fake.write_text("#!/bin/sh\necho 'broken interpreter' >&2\nexit 3\n")
    fake.chmod(0o755)
    with pytest.raises(LiberoUnavailableError, match=r"exited with code 3 during start-up(.|\n)*broken interpreter"):
        make_suite("libero", python=str(fake))
    # a hung worker: the call times out and the process is killed
    fake.write_text("#!/bin/sh\nexec sleep 30\n")
    t0 = time.monotonic()
    with pytest.raises(LiberoUnavailableError, match=r"timed out during start-up"):
        make_suite("libero", python=str(fake), timeout_s=0.5)
    assert time.monotonic() - t0 < 5


# ------------------------------------------------------------------ real LIBERO


@pytest.mark.slow
@needs_libero
def test_smoke_rollout(suite):
    tasks = suite.task_names()
    assert len(tasks) >= 10 and suite.max_episode_steps == 220
    task = tasks[0]
    (instr,) = suite.instructions(task)
    assert instr.startswith("pick up the black bowl") and instr not in suite.instructions(task, "heldout")
    with pytest.raises(NotImplementedError, match="no scripted expert"):
        suite.expert(task)
    with pytest.raises(ValueError, match="unknown task"):
        suite.make_env("nope")

    env = suite.make_env(task, seed=0)
    pid = env.worker_pid
    obs_a, info = env.reset(seed=3)
    assert info["init_state_index"] == 3 and not info["is_success"] and obs_a["instruction"] == instr
    assert obs_a["image"].shape == (2, 3, SIZE, SIZE) and obs_a["image"].dtype == np.uint8
    assert obs_a["state"].shape == (8,) and obs_a["state"].dtype == np.float32
    assert env.observation_space.contains(obs_a)
    obs_b, _ = env.reset(seed=4)
    obs_c, _ = env.reset(seed=3)
    assert not np.allclose(obs_a["state"], obs_b["state"])  # other init state: robot elsewhere
    assert np.array_equal(obs_a["state"], obs_c["state"]) and np.array_equal(obs_a["image"], obs_c["image"])
    # gripper fingers open and symmetric after the settle steps; eef above the table
    assert obs_a["state"][6] > 0.03 and abs(obs_a["state"][6] + obs_a["state"][7]) < 1e-2 and obs_a["state"][2] > 0.9

    rng = np.random.default_rng(0)
    for t in range(1, 11):
        obs, reward, terminated, truncated, info = env.step(rng.uniform(-1, 1, 7).astype(np.float32))
        assert obs["image"].shape == (2, 3, SIZE, SIZE) and obs["image"].dtype == np.uint8
        assert obs["state"].dtype == np.float32 and np.isfinite(obs["state"]).all()
        assert set(info) >= {"is_success", "task", "step", "init_state_index"} and info["step"] == t
        assert reward == 0.0 and not terminated and not truncated
    assert not np.array_equal(obs["state"], obs_c["state"])  # the arm moved
    assert env.render().shape == (SIZE, SIZE, 3)
    with pytest.raises(ValueError, match="shape"):
        env.step(np.zeros(3))
    # a command error comes back as a message; the worker keeps serving
    with pytest.raises(LiberoWorkerError, match="camera must be one of"):
        env.render_camera("top")
    assert env.render_camera("wrist", 48).shape == (48, 48, 3)
    env.close()
    with pytest.raises(RuntimeError, match="closed"):
        env.reset()

    # the pooled worker is reused (its simulation too)
    assert suite.worker_pids() == [pid]
    env2 = suite.make_env(task, seed=1, split="heldout")
    assert env2.worker_pid == pid
    obs, info = env2.reset()
    assert obs["instruction"] in suite.instructions(task, "heldout") and info["init_state_index"] == 1
    # a dead worker is reported with its exit code, not a hang
    os.kill(pid, 9)
    with pytest.raises(LiberoWorkerError, match=r"exited with code -9 during step"):
        env2.step(np.zeros(7, np.float32))
    env2.close()
    assert suite.worker_pids() == []


@needs_libero
def test_suite_close_stops_workers():
    s = make_suite("libero", benchmark="libero_goal", image_size=SIZE)
    assert len(s.task_names()) == 10 and s.max_episode_steps == 300
    (pid,) = s.worker_pids()  # the worker that listed the tasks waits for the first env
    s.close()
    assert _gone(pid) and s.worker_pids() == []


@pytest.mark.slow
@needs_libero
def test_evaluate_one_camera_and_worker_exit_on_close():
    with make_suite("libero", benchmark=BENCH, image_size=SIZE, cameras=("agentview",), max_episode_steps=4) as s:
        task = s.task_names()[2]
        report = evaluate(RandomPolicy(s), s, EvalConfig(tasks=[task], episodes_per_task=1, seed=0))
        (ep,) = report.episodes
        assert ep.error is None, ep.error
        assert ep.success is False and ep.length == 4 and ep.instruction == s.instructions(task)[0]
        assert report.tasks[task].success_rate == 0.0 and report.tasks[task].errors == 0

        env = s.make_env(task, seed=5)  # the evaluated episode's worker and simulation, reused
        obs, _ = env.reset()
        assert obs["image"].shape == (3, SIZE, SIZE) and env.observation_space.contains(obs)
        *_, truncated, info = [env.step(np.zeros(7, np.float32)) for _ in range(4)][-1]
        assert truncated and not info["is_success"]  # max_episode_steps=4
        pid = env.worker_pid
        s.max_idle_workers = 0
        env.close()  # no idle slot: the worker ends with its env
        assert _gone(pid), "LIBERO worker still running after env.close() with max_idle_workers=0"
