"""Meta-World suite: tasks / instructions, seeding, observations, upright cameras, the scripted
expert, perturbation hooks, and the demos / evaluation loops on it."""

from __future__ import annotations

import numpy as np
import pytest

from eval.sim import available_suites, make_suite
from vla_ebt.data.episodes import episode_seed
from eval.sim.demos import collect_demos
from eval.sim.contracts import DisplaceableEnv, Displacement
from eval.sim.rollout import EvalConfig, ExpertPolicy, evaluate
from eval.sim.suites.metaworld import HELDOUT_TASKS, INSTRUCTIONS, STATE_MODES
from eval.sim.suites.metaworld.instructions import InstructionsError, load_instructions

MT10 = [
    "reach-v3", "push-v3", "pick-place-v3", "door-open-v3", "drawer-open-v3", "drawer-close-v3",
    "button-press-topdown-v3", "peg-insert-side-v3", "window-open-v3", "window-close-v3",
]


@pytest.fixture(scope="module")
def suite():
    s = make_suite("metaworld", image_size=32)
    yield s
    s.close()


def _run_expert(suite, task: str, seed: int, noise: float = 0.0):
    env = suite.make_env(task, seed=seed)
    expert = suite.expert(task, noise=noise, seed=seed)
    try:
        obs, info = env.reset()
        steps, terminated, truncated = 0, False, False
        while not (terminated or truncated):
            obs, _, terminated, truncated, info = env.step(expert(obs, env))
            steps += 1
        return bool(info["is_success"]), steps, terminated, truncated
    finally:
        env.close()


# ------------------------------------------------------------------------------ tasks / language


def test_benchmarks_tasks_and_errors(suite):
    assert "metaworld" in available_suites()
    assert suite.task_names() == MT10
    assert (suite.action_dim, suite.state_dim, suite.num_views, suite.max_episode_steps) == (4, 4, 1, 200)
    # make_suite cannot overwrite the read-only make_kwargs property: the suite's full kwargs stay
    assert suite.make_kwargs["image_size"] == 32 and suite.make_kwargs["cameras"] == ["corner2"]
    lo, hi = suite.action_bounds()
    assert lo.dtype == np.float32 and np.all(lo == -1) and np.all(hi == 1) and lo.shape == (4,)
    mt50 = make_suite("metaworld", benchmark="MT50")
    assert len(mt50.task_names()) == 50 and set(MT10) < set(mt50.task_names())
    assert set(mt50.train_tasks()) == set(mt50.task_names()) - set(HELDOUT_TASKS)
    with pytest.raises(ValueError, match="MT10"):
        make_suite("metaworld", benchmark="MT7")
    with pytest.raises(ValueError, match="reach-v3"):  # lists the known tasks
        suite.make_env("fly-v3", seed=0)
    with pytest.raises(ValueError, match="proprio"):
        make_suite("metaworld", state_mode="everything")
    with pytest.raises(ValueError, match="corner2"):  # lists the model's cameras
        make_suite("metaworld", cameras=("nope",)).make_env("reach-v3", seed=0)


def test_instructions_and_heldout_tasks(suite):
    mt50 = make_suite("metaworld", benchmark="MT50")
    assert set(INSTRUCTIONS) == set(mt50.task_names())
    seen: dict[str, str] = {}
    for task in mt50.task_names():
        tr, ho = mt50.instructions(task, "train"), mt50.instructions(task, "heldout")
        assert len(tr) >= 5 and len(ho) >= 2 and not set(tr) & set(ho)
        for s in tr + ho:
            assert s == s.strip() and 3 <= len(s.split()) <= 14, s
            assert seen.setdefault(s, task) == task, f"{s!r} used by {seen[s]} and {task}"
    held = suite.heldout_tasks()
    assert len(held) >= 3 and not set(held) & set(MT10) and set(held) <= set(mt50.task_names())
    # held-out tasks can be made (e.g. for generalization evals) even in the MT10 suite
    env = suite.make_env(held[0], seed=0, split="heldout")
    try:
        obs, _ = env.reset()
        assert obs["instruction"] in suite.instructions(held[0], "heldout")
    finally:
        env.close()
    with pytest.raises(ValueError):
        suite.instructions("reach-v3", "test")


def test_instruction_table_errors_name_the_file(tmp_path):
    with pytest.raises(InstructionsError, match="cannot read .*nope.json"):
        load_instructions(tmp_path / "nope.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(InstructionsError, match="bad.json is not valid JSON"):
        load_instructions(bad)
    bad.write_text('{"reach-v3": {"train": ["reach the goal"]}}')
    with pytest.raises(InstructionsError, match="'reach-v3' needs exactly the keys"):
        load_instructions(bad)
    bad.write_text('{"reach-v3": {"train": ["reach the goal"], "heldout": []}}')
    with pytest.raises(InstructionsError, match="'heldout' must be a non-empty list"):
        load_instructions(bad)
    good = tmp_path / "good.json"
    good.write_text('{"reach-v3": {"train": ["reach the goal"], "heldout": ["touch the goal"]}}')
    assert load_instructions(good) == {"reach-v3": (("reach the goal",), ("touch the goal",))}


# ------------------------------------------------------------------------------ env


def test_observation_spaces_and_actions(suite):
    env = suite.make_env("push-v3", seed=3)
    try:
        obs, info = env.reset()
        assert obs["image"].shape == (3, 32, 32) and obs["image"].dtype == np.uint8
        assert obs["state"].shape == (4,) and obs["state"].dtype == np.float32
        assert obs["instruction"] in suite.instructions("push-v3")
        assert env.observation_space.contains(obs) and info["is_success"] is False
        np.testing.assert_allclose(obs["state"], env.raw_obs[:4].astype(np.float32))
        frame = env.render()
        assert frame.shape == (32, 32, 3) and frame.dtype == np.uint8
        np.testing.assert_array_equal(frame, obs["image"].transpose(1, 2, 0))
        assert obs["image"].std() > 5  # a real scene, not a blank frame
        obs, r, term, trunc, info = env.step(np.array([5.0, 0, 0, -3.0]))
        assert "success" in info and info["step"] == 1 and isinstance(r, float)
        ref = suite.make_env("push-v3", seed=3)  # the same action inside the box
        try:
            ref.reset()
            ref_obs = ref.step(np.array([1.0, 0, 0, -1.0]))[0]
            assert np.array_equal(ref_obs["state"], obs["state"]) and ref.raw_obs[0] > ref.raw_obs[18]
        finally:
            ref.close()
        with pytest.raises(ValueError, match="shape"):
            env.step(np.zeros(3))
        with pytest.raises(ValueError, match="non-finite"):
            env.step(np.array([np.nan, 0, 0, 0]))
    finally:
        env.close()
    # other state modes / several cameras
    s = make_suite("metaworld", image_size=16, cameras=("corner2", "topview"), state_mode="full")
    env = s.make_env("push-v3", seed=3)
    try:
        obs, _ = env.reset()
        assert s.state_dim == STATE_MODES["full"] == 39 and obs["state"].shape == (39,)
        assert obs["image"].shape == (2, 3, 16, 16) and env.observation_space.contains(obs)
        np.testing.assert_allclose(obs["state"][-3:], env.mw._target_pos, atol=1e-5)  # MT: goal present
        assert env.render().shape == (16, 16, 3)
    finally:
        env.close()
        s.close()


def test_seeding(suite):
    a, b, c = (suite.make_env("push-v3", seed=s) for s in (7, 7, 8))
    try:
        oa, ob, oc = a.reset()[0], b.reset()[0], c.reset()[0]
        assert np.array_equal(oa["image"], ob["image"]) and np.array_equal(oa["state"], ob["state"])
        assert oa["instruction"] == ob["instruction"] and np.array_equal(a.raw_obs, b.raw_obs)
        assert not np.array_equal(oa["image"], oc["image"])
        # object (raw[4:7]) and goal (raw[-3:]) positions differ between seeds
        objs = []
        for s in range(4):
            c.reset(seed=s)
            objs.append(np.concatenate([c.raw_obs[4:7], c.raw_obs[-3:]]))
        objs = np.stack(objs)
        assert np.all(np.abs(objs[:, None, [0, 1, 3, 4]] - objs[None, :, [0, 1, 3, 4]]).max(-1) + np.eye(4) > 1e-3)
        # reset(seed) after a few steps reproduces the first observation exactly
        for _ in range(5):
            a.step(np.array([0.5, -0.5, 0.2, 1.0]))
        oa2, _ = a.reset(seed=7)
        assert np.array_equal(oa2["image"], oa["image"]) and np.array_equal(a.raw_obs, b.raw_obs)
    finally:
        for e in (a, b, c):
            e.close()
    # a reused (pooled) simulator gives the same episode as a fresh one
    fresh_suite = make_suite("metaworld", image_size=32, reuse_envs=False)
    f = fresh_suite.make_env("push-v3", seed=7)
    try:
        of, _ = f.reset()
        assert np.array_equal(of["image"], oa["image"]) and np.array_equal(f.raw_obs, b.raw_obs)
    finally:
        f.close()


def test_corner_cameras_are_upright():
    """Moving the hand up in the world moves the wrist up in the image, and moving it along world +x
    moves it the way a (non-mirrored) pinhole camera at the model's camera pose predicts."""
    s = make_suite("metaworld", image_size=64, cameras=("corner2", "corner", "corner3"))
    env = s.make_env("reach-v3", seed=0)
    try:
        env.reset()
        import mujoco  # imported by the suite already (after MUJOCO_GL was chosen)

        m, d = env.mw.model, env.mw.data
        root = m.body("right_l5").id

        def in_wrist(b: int) -> bool:
            while b:
                if b == root:
                    return True
                b = int(m.body_parentid[b])
            return False

        wrist = [g for g in range(m.ngeom) if in_wrist(int(m.geom_bodyid[g]))]

        def centroids() -> np.ndarray:  # (V, 2) mean (row, col) of the wrist's pixels
            seg = env.render_views(segmentation=True)
            out = []
            for v in seg:
                mask = np.isin(v[..., 0], wrist) & (v[..., 1] == int(mujoco.mjtObj.mjOBJ_GEOM))
                assert mask.sum() >= 10
                out.append(np.argwhere(mask).mean(0))
            return np.stack(out)

        c0 = centroids()
        for _ in range(20):
            env.step(np.array([0, 0, 1, 0], np.float32))
        c1 = centroids()
        assert np.all(c1[:, 0] < c0[:, 0] - 3), (c0, c1)  # up in the world = up in the image
        for _ in range(20):
            env.step(np.array([1, 0, 0, 0], np.float32))
        c2 = centroids()
        for k, cid in enumerate(env.core.cam_ids):
            xmat = d.cam_xmat[cid].reshape(3, 3)
            up = xmat[:, 1] * np.sign(xmat[2, 1])  # the image's up axis once upright
            right = np.cross(up, xmat[:, 2])  # right = up x backward for an unmirrored image
            assert np.sign(c2[k, 1] - c1[k, 1]) == np.sign(right[0]) and abs(c2[k, 1] - c1[k, 1]) > 2
        # the raw frames are what the observation shows
        obs = env.step(np.zeros(4, np.float32))[0]
        np.testing.assert_array_equal(env.render_views()[0], obs["image"][0].transpose(1, 2, 0))
    finally:
        env.close()
        s.close()


# ------------------------------------------------------------------------------ expert


@pytest.mark.parametrize("task", ["reach-v3", "push-v3", "drawer-close-v3"])
def test_expert_succeeds(suite, task):
    results = [_run_expert(suite, task, episode_seed(0, task, i)) for i in range(5)]
    succ = [r[0] for r in results]
    assert np.mean(succ) >= 0.8, results
    for ok, steps, terminated, truncated in results:
        assert steps <= suite.max_episode_steps
        assert terminated == ok and truncated == (not ok)  # terminated on success


def test_expert_noise_is_seeded(suite):
    env = suite.make_env("push-v3", seed=1)
    try:
        obs, _ = env.reset()
        a0 = suite.expert("push-v3")(obs, env)
        a1, a2, a3 = (suite.expert("push-v3", noise=0.2, seed=s)(obs, env) for s in (5, 5, 6))
        assert a0.shape == (4,) and a0.dtype == np.float32 and np.all(np.abs(a1) <= 1)
        assert np.array_equal(a1, a2) and not np.array_equal(a1, a3) and not np.array_equal(a0, a1)
    finally:
        env.close()


# ------------------------------------------------------------------------------ perturbations


def test_displace_object_and_camera_offset(suite):
    rng = np.random.default_rng(0)
    env = suite.make_env("push-v3", seed=2)
    try:
        obs, _ = env.reset()
        expert = suite.expert("push-v3", seed=2)
        for _ in range(10):
            obs, *_ = env.step(expert(obs, env))
        before = env.raw_obs[4:7].copy()
        disp = env.displace_object(rng, 0.06)
        assert isinstance(disp, Displacement) and isinstance(env, DisplaceableEnv)
        new = disp.after
        np.testing.assert_allclose(disp.before, before)
        np.testing.assert_allclose(np.linalg.norm(new[:2] - before[:2]), 0.06, atol=2e-3)
        np.testing.assert_allclose(env.raw_obs[4:7], new)
        obs, *_ = env.step(np.zeros(4, np.float32))
        assert np.linalg.norm(env.raw_obs[4:6] - new[:2]) < 0.01  # it stays where it was put
        # the expert recovers (closed loop)
        done, info = False, {}
        while not done:
            obs, _, term, trunc, info = env.step(expert(obs, env))
            done = term or trunc
        assert info["is_success"]
        # camera offset changes the image; None restores it
        img0 = env.render_views()
        env.set_camera_offset([0.0, 0.0, 0.1])
        assert not np.array_equal(env.render_views(), img0)
        env.set_camera_offset(None)
        assert np.array_equal(env.render_views(), img0)
    finally:
        env.close()
    # articulated object (drawer joint) and reach (goal) variants
    for task in ("drawer-close-v3", "reach-v3"):
        env = suite.make_env(task, seed=0)
        try:
            env.reset()
            goal0, obj0 = env.raw_obs[-3:].copy(), env.raw_obs[4:7].copy()
            disp = env.displace_object(rng, 0.05)
            np.testing.assert_allclose(disp.before, goal0 if task == "reach-v3" else obj0)
            moved = np.linalg.norm(disp.after - (goal0 if task == "reach-v3" else obj0))
            assert 0.03 < moved < 0.06, (task, moved)
        finally:
            env.close()
    # automatic displacement inside the env (suite option)
    s = make_suite("metaworld", image_size=16, displace_at_step=3, displace_scale=0.05)
    env = s.make_env("push-v3", seed=0)
    try:
        env.reset()
        infos = [env.step(np.zeros(4, np.float32))[-1] for _ in range(4)]
        assert [("displacement" in i) for i in infos] == [False, False, True, False]
    finally:
        env.close()
        s.close()


# ------------------------------------------------------------------------------ loops


def test_collect_demos_and_evaluate(suite):
    eps = collect_demos(suite, ["reach-v3"], episodes_per_task=2, seed=0, action_noise=0.05)
    assert len(eps) == 2
    for ep in eps:
        n = len(ep)
        assert ep.images.shape == (n, 1, 3, 32, 32) and ep.images.dtype == np.uint8
        assert ep.state.shape == (n, 4) and ep.action.shape == (n, 4) and np.all(np.abs(ep.action) <= 1)
        assert ep.success and n < suite.max_episode_steps
        assert ep.instruction in suite.instructions("reach-v3")
    assert not np.array_equal(eps[0].images[0], eps[1].images[0])  # different episode seeds
    report = evaluate(ExpertPolicy(suite), suite, EvalConfig(tasks=["push-v3"], episodes_per_task=2, seed=0))
    res = report.tasks["push-v3"]
    assert res.episodes == 2 and res.errors == 0 and res.success_rate == 1.0
    assert all(0 < e.length < suite.max_episode_steps for e in report.episodes)


@pytest.mark.slow
def test_rendering_then_loading_triton_does_not_crash():
    """Regression: Mesa's LLVM (software rendering) followed by Triton's bundled LLVM segfaulted the
    process (e.g. collect Meta-World demos, then build a diffusion policy); the suite preloads Triton."""
    import subprocess
    import sys

    code = (
        "from eval.sim.suites import make_suite\n"
        "s = make_suite('metaworld'); e = s.make_env('reach-v3', seed=0); o, _ = e.reset()\n"
        "assert o['image'].shape == (3, 64, 64)\n"
        "import diffusers.utils.torch_utils\n"
        "print('survived')\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=240)
    assert r.returncode == 0 and "survived" in r.stdout, (r.returncode, r.stderr[-2000:])
