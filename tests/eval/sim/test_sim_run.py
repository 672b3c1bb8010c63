"""``python -m eval.sim.run``: end to end on reach2d with a tiny saved VLAPolicy and env workers,
the expert / random baselines, bad input, and VLAPolicy's rollout_state for interleaved episodes."""

from __future__ import annotations

import json

import imageio.v3 as iio
import numpy as np
import pytest
import torch

from eval.sim import make_suite
from vla_ebt.data.episodes import dataset_stats
from eval.sim.demos import collect_demos
from eval.sim.rollout import EvalConfig, evaluate, load_report
from eval.sim.run import main
from vla_ebt.backbones import BackboneConfig
from vla_ebt.bridge import BridgeConfig
from vla_ebt.heads.trunk import TrunkConfig
from vla_ebt.normalize import DatasetStats, FeatureStats, Normalizer
from vla_ebt.policy import ExecutionConfig, FinetuneConfig, PolicyConfig, VLAPolicy

IMG = 32
SUITE_ARGS = ["--suite-arg", f"image_size={IMG}", "--suite-arg", "max_episode_steps=10"]


def _tiny_policy(action_dim: int = 2) -> VLAPolicy:
    """A small untrained EBT policy for reach2d (normalizer key "reach2d", as recipes/finetune.py)."""
    eps = collect_demos(make_suite("reach2d", image_size=IMG), None, 2, seed=0, action_noise=0.01)
    stats = dataset_stats(eps)
    if action_dim != stats.action.dim:
        acts = np.concatenate([e.action for e in eps])[:, :action_dim]
        stats = DatasetStats(action=FeatureStats.from_array(acts), state=stats.state,
                             num_episodes=stats.num_episodes, num_steps=stats.num_steps)
    normalizer = Normalizer({"reach2d": stats}, max_action_dim=action_dim, max_state_dim=2)
    cfg = PolicyConfig(
        backbone=BackboneConfig(image_size=IMG),
        finetune=FinetuneConfig(mode="frozen"),
        bridge=BridgeConfig(max_prefix_tokens=8),
        head="ebt",
        trunk=TrunkConfig(width=32, depth=1, num_heads=2),
        horizon=4, action_dim=action_dim, state_dim=2,
        execution=ExecutionConfig(n_action_steps=2),
    )
    torch.manual_seed(0)
    return VLAPolicy(cfg, normalizer)


@pytest.fixture(scope="module")
def policy_dir(tmp_path_factory):
    return _tiny_policy().save_pretrained(tmp_path_factory.mktemp("policy") / "policy")


def _run_fails(capsys, argv) -> str:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    return capsys.readouterr().err


@pytest.mark.slow
def test_cli_end_to_end_with_workers(policy_dir, tmp_path):
    out = tmp_path / "eval"
    d = main(["--policy", str(policy_dir), "--suite", "reach2d", "--tasks", "reach_red", "reach_blue", "--episodes",
              "2", "--workers", "2", "--videos", "1", *SUITE_ARGS, "--out", str(out), "--quiet"])
    rep = json.loads((out / "report.json").read_text())
    assert rep == json.loads(json.dumps(d)) and rep["num_workers"] == 2 and rep["worker_restarts"] == 0
    assert list(rep["tasks"]) == ["reach_red", "reach_blue"] and len(rep["episodes"]) == 4
    for task, tr in rep["tasks"].items():
        eps = [e for e in rep["episodes"] if e["task"] == task]
        assert tr["episodes"] == len(eps) == 2 and tr["errors"] == 0
        assert tr["successes"] == sum(e["success"] for e in eps)
        assert tr["success_rate"] == pytest.approx(tr["successes"] / tr["episodes"])
        assert tr["ci_low"] <= tr["success_rate"] <= tr["ci_high"]
        assert tr["mean_length"] == pytest.approx(np.mean([e["length"] for e in eps]))
        assert tr["mean_chunk_latency_ms"] > 0 and tr["mean_steps"] >= 1 and tr["mean_energy"] is not None
    for e in rep["episodes"]:  # receding horizon: one chunk per 2 steps, an EBT energy per chunk
        assert 1 <= e["length"] <= 10 and len(e["chunk_latency_ms"]) == (e["length"] + 1) // 2 == len(e["energy"])
    assert rep["run"]["suite_kwargs"] == {"image_size": IMG, "max_episode_steps": 10}
    loaded = load_report(out / "report.json")
    assert loaded.tasks["reach_blue"].successes == rep["tasks"]["reach_blue"]["successes"] and loaded.seeds == [0]
    md = (out / "report.md").read_text()
    assert "reach_blue" in md and "overall" in md and "report.png" in md
    assert (out / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    videos = sorted((out / "videos").glob("*.mp4"))
    assert [v.name.split("_ep")[0] for v in videos] == ["reach_blue", "reach_red"]
    by_task = {e["task"]: e for e in rep["episodes"] if e["video"]}
    for v in videos:
        frames = iio.imread(v, plugin="pyav")
        assert frames.shape[1:] == (128, 128, 3) and len(frames) == by_task[v.name.split("_ep")[0]]["length"] + 1

    # the same policy evaluated serially in this process: identical episodes (rollout_state swapping)
    policy = VLAPolicy.from_pretrained(policy_dir)
    serial = evaluate(policy, make_suite("reach2d", image_size=IMG, max_episode_steps=10),
                      EvalConfig(tasks=["reach_red", "reach_blue"], episodes_per_task=2, seed=0))
    key = ("task", "index", "seed", "instruction", "success", "length", "energy", "steps", "error")
    assert [tuple(e[k] for k in key) for e in rep["episodes"]] == \
        [tuple(getattr(e, k) for k in key) for e in serial.episodes]


def test_cli_baselines(tmp_path):
    d = main(["--policy", "expert", "--suite", "reach2d", "--episodes", "3", "--workers", "2", "--seeds", "0", "1",
              "--out", str(tmp_path / "expert"), "--quiet"])
    assert d["success_rate"] == 1.0 and d["overall"]["episodes"] == 18 and d["seeds"] == [0, 1]
    assert all(t["success_rate"] == 1.0 for t in d["tasks"].values())
    assert set(d["run"]["per_seed"]["reach_red"]) == {"0", "1"}
    r = main(["--policy", "random", "--suite", "reach2d", "--episodes", "3", "--out", str(tmp_path / "random"),
              "--quiet"])
    assert r["overall"]["episodes"] == 9 and r["success_rate"] <= 0.5 and r["num_workers"] == 0


def test_cli_bad_input(policy_dir, tmp_path, capsys):
    out = tmp_path / "never"
    common = ["--out", str(out), "--quiet"]
    err = _run_fails(capsys, ["--policy", "expert", "--suite", "nope", *common])
    assert "unknown suite 'nope'" in err and "reach2d" in err
    err = _run_fails(capsys, ["--policy", "expert", "--suite", "reach2d", "--tasks", "reach_red", "reach_purple",
                              *common])
    assert "no task(s) ['reach_purple']" in err and "reach_green" in err
    err = _run_fails(capsys, ["--policy", "expert", "--suite", "reach2d", "--suite-arg", "colour=red", *common])
    assert "does not accept --suite-arg ['colour']" in err
    err = _run_fails(capsys, ["--policy", str(tmp_path / "missing"), "--suite", "reach2d", *common])
    assert f"policy directory not found: {tmp_path / 'missing'}" in err
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / "config.json").write_text("{not json")
    err = _run_fails(capsys, ["--policy", str(corrupt), "--suite", "reach2d", *common])
    assert f"cannot load policy from {corrupt}" in err and "config.json" in err
    # a policy saved for 32 px images on the suite's default 64 px
    err = _run_fails(capsys, ["--policy", str(policy_dir), "--suite", "reach2d", *common])
    assert "backbone.image_size 32 does not match the suite's image_size 64" in err and "image_size=32" in err
    small = _tiny_policy(action_dim=1).save_pretrained(tmp_path / "one_dim")
    err = _run_fails(capsys, ["--policy", str(small), "--suite", "reach2d", *SUITE_ARGS, *common])
    assert f"policy {small} does not fit suite 'reach2d'" in err
    assert "action_dim 1 is smaller than the suite's action_dim 2" in err
    assert not out.exists()  # nothing ran, nothing written


def test_rollout_state_interleaves_episodes(policy_dir):
    policy = VLAPolicy.from_pretrained(policy_dir)
    g = torch.Generator().manual_seed(0)

    def obs(k: int) -> dict:
        return {"images": torch.rand(1, 1, 3, IMG, IMG, generator=g), "instruction": [f"go to the dot {k}"],
                "state": torch.rand(1, 1, 2, generator=g), "embodiment": torch.zeros(1, dtype=torch.long)}

    a_obs, b_obs = [obs(0) for _ in range(5)], [obs(1) for _ in range(5)]

    def alone(stream: list) -> list:
        policy.reset()
        torch.manual_seed(1)
        return [policy.select_action(o) for o in stream]

    ref_a, ref_b = alone(a_obs), alone(b_obs)
    policy.reset()
    torch.manual_seed(1)
    state_a = policy.rollout_state()
    policy.reset()
    state_b = policy.rollout_state()
    got_a, got_b = [], []
    for oa, ob in zip(a_obs, b_obs):
        policy.load_rollout_state(state_a)
        got_a.append(policy.select_action(oa))
        state_a = policy.rollout_state()
        policy.load_rollout_state(state_b)
        got_b.append(policy.select_action(ob))
        state_b = policy.rollout_state()
    assert state_a["t"] == 0 and len(state_a["queue"]) == 1 and state_a["last_output"] is not None
    for x, y in zip(got_a + got_b, ref_a + ref_b):
        torch.testing.assert_close(x, y)


def test_mp4_video_and_gif_fallback(tmp_path, monkeypatch):
    from eval.sim import videos

    frames = [np.full((25, 25, 3), 40 * i, np.uint8) for i in range(5)]  # odd size: upscaled x5, padded to even
    p = videos.write_video(frames, tmp_path / "a.mp4")
    assert p == str(tmp_path / "a.mp4") and iio.imread(p, plugin="pyav").shape == (5, 126, 126, 3)

    def broken(*a, **k):
        raise RuntimeError("no encoder")

    monkeypatch.setattr(videos, "_write_mp4", broken)
    with pytest.warns(UserWarning, match="mp4 encoding failed .*no encoder.*writing a GIF instead"):
        p = videos.write_video(frames, tmp_path / "b.mp4")
    assert p == str(tmp_path / "b.gif") and len(iio.imread(p)) == 5
    assert sorted(f.name for f in tmp_path.iterdir()) == ["a.mp4", "b.gif"]  # no temp files left
