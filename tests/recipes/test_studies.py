"""The study building blocks: AUROC math, head overrides, per-chunk signal recording, perturbation
wrappers, and each study command end to end on a tiny (untrained) policy."""

from __future__ import annotations

import json

import numpy as np
import pytest

from eval.sim.perturb import ActionBurst, DisplaceObject, ForceGripperOpen, ImageNoise, ImageShift, PerturbedSuite, make_perturbation
from eval.sim.rollout import EvalConfig, ExpertPolicy, evaluate
from eval.sim.suites import make_suite
from recipes.studies.common import auroc, predict_overrides
from recipes.studies.episodes import run_study_episodes
from tests.policy_fixtures import make_policy


# ---------------------------------------------------------------------------------------- AUROC
def test_auroc_known_values():
    assert auroc([0.1, 0.2, 0.8, 0.9], [0, 0, 1, 1]) == 1.0
    assert auroc([0.9, 0.8, 0.2, 0.1], [0, 0, 1, 1]) == 0.0
    assert auroc([0.5, 0.5, 0.5, 0.5], [0, 1, 0, 1]) == 0.5  # ties count one half
    # hand-computed: positives {0.4, 0.8}, negatives {0.2, 0.6, 0.8}: pairs won 1 + 2.5 of 6
    assert auroc([0.4, 0.8, 0.2, 0.6, 0.8], [1, 1, 0, 0, 0]) == pytest.approx(3.5 / 6)
    assert np.isnan(auroc([0.1, 0.2], [1, 1]))
    with pytest.raises(ValueError, match="labels"):
        auroc([0.1, 0.2], [1])


def test_auroc_matches_pair_counting_on_random_data():
    rng = np.random.default_rng(0)
    s = rng.integers(0, 5, 60).astype(float)  # many ties
    y = rng.random(60) < 0.4
    pos, neg = s[y], s[~y]
    ref = np.mean([(p > n) + 0.5 * (p == n) for p in pos for n in neg])
    assert auroc(s, y) == pytest.approx(ref)


# --------------------------------------------------------------------------------- perturbations
def test_perturbation_wrappers_change_what_they_should():
    suite = make_suite("reach2d")
    env = suite.make_env("reach_red", seed=1)
    o0, _ = env.reset(seed=1)
    noisy = ImageNoise(suite.make_env("reach_red", seed=1), sigma=30)
    o1, _ = noisy.reset(seed=1)
    assert o1["image"].dtype == np.uint8 and np.abs(o1["image"].astype(int) - o0["image"]).mean() > 10
    assert np.array_equal(o1["state"], o0["state"])
    o1b, _ = ImageNoise(suite.make_env("reach_red", seed=1), sigma=30).reset(seed=1)
    assert np.array_equal(o1["image"], o1b["image"])  # seeded from the reset seed
    shifted, _ = ImageShift(suite.make_env("reach_red", seed=1), dy=5, dx=3).reset(seed=1)
    assert np.array_equal(shifted["image"][:, 5:, 3:], o0["image"][:, :-5, :-3])

    burst = ActionBurst(suite.make_env("reach_red", seed=1), start=0, length=3)
    burst.reset(seed=1)
    p0 = burst.unwrapped.agent.copy()
    burst.step(np.zeros(2, np.float32))
    assert not np.allclose(burst.unwrapped.agent, p0)  # a zero action moved the agent: replaced
    for _ in range(2):
        burst.step(np.zeros(2, np.float32))
    p3 = burst.unwrapped.agent.copy()
    burst.step(np.zeros(2, np.float32))
    assert np.allclose(burst.unwrapped.agent, p3)  # burst over: the policy's action again

    disp = DisplaceObject(suite.make_env("reach_red", seed=1), at=2, scale=0.3)
    disp.reset(seed=1)
    g0 = disp.unwrapped.goal.copy()
    disp.step(np.zeros(2, np.float32))
    disp.step(np.zeros(2, np.float32))
    assert np.allclose(disp.unwrapped.goal, g0)
    disp.step(np.zeros(2, np.float32))
    assert np.linalg.norm(disp.unwrapped.goal - g0) > 0.05
    with pytest.raises(ValueError, match="outside"):
        ForceGripperOpen(suite.make_env("reach_red"), dim=3)
    with pytest.raises(ValueError, match="unknown perturbation"):
        make_perturbation("earthquake")


def test_expert_recovers_from_injected_failures_through_perturbed_suite():
    suite = make_suite("reach2d")
    for spec in ("burst:start=2,length=5", "displace:at=3,scale=0.3"):
        rep = evaluate(ExpertPolicy(suite), PerturbedSuite(suite, [make_perturbation(spec)], tag=spec),
                       EvalConfig(tasks=["reach_red", "reach_blue"], episodes_per_task=4, seed=3))
        assert rep.success_rate == 1.0, spec  # the closed-loop expert re-plans from wherever it is
    # a blind open-loop replay of the unperturbed expert's actions does not recover from the burst
    env = suite.make_env("reach_red", seed=5)
    obs, _ = env.reset(seed=5)
    ex = suite.expert("reach_red")
    acts = []
    while True:
        a = ex(obs, env)
        acts.append(a)
        obs, _, term, trunc, info = env.step(a)
        if term or trunc:
            break
    penv = make_perturbation("burst:start=1,length=6")(suite.make_env("reach_red", seed=5))
    penv.reset(seed=5)
    for a in acts:
        _, _, term, trunc, info = penv.step(a)
        if term or trunc:
            break
    assert not info["is_success"]


# ------------------------------------------------------------------------- overrides and signals
@pytest.fixture(scope="module")
def ebt_policy():
    p = make_policy("ebt")
    p.eval()
    return p


def test_predict_overrides_and_signal_recorder(ebt_policy):
    suite = make_suite("reach2d", max_episode_steps=9)
    with predict_overrides(ebt_policy, num_steps=3):
        res = run_study_episodes(ebt_policy, suite, ["reach_red"], 2, seed=0, spread_candidates=4,
                                 env_attrs=("agent",))
    assert not ebt_policy.head._predict_hooks and "begin_episode" not in vars(ebt_policy)  # detached
    assert "select_action" not in vars(ebt_policy)  # the step counter is removed too
    assert ebt_policy.head.active_overrides() == {}  # restored
    assert len(res.signals) == 2 and all(f["agent"] is not None for f in res.final)
    for ep, sig in zip(res.episodes, res.signals):
        n = len(ep.chunk_latency_ms)
        assert n == 3  # 9 steps, 3 executed per chunk
        assert len(sig.energy) == len(sig.energy_drop) == len(sig.grad_norm) == len(sig.candidate_spread) == n
        assert len(sig.sample_spread) == n and all(s > 0 for s in sig.sample_spread)  # 4 chains from noise differ
        assert sig.plan_step == [0, 3, 6] and sig.acted == 9  # planned at these env steps; 9 control steps
        assert sig.steps == [3.0] * n and sig.nfe == [3.0] * n  # 3 steps (the energy is the last step's)
        assert all(np.isfinite(sig.energy)) and all(s >= 0 for s in sig.candidate_spread)
        assert ep.energy == pytest.approx(sig.energy)  # the executed chunk's energy, unchanged


def test_detour_modes_are_read_back_per_episode():
    suite = make_suite("reach2d_detour")
    pol = ExpertPolicy(suite)
    res = run_study_episodes(pol, suite, ["reach_red"], 6, seed=0, env_attrs=("mode",))
    assert [f["mode"] for f in res.final].count("left") + [f["mode"] for f in res.final].count("right") == 6


# --------------------------------------------------------------------------------- study commands
@pytest.fixture(scope="module")
def saved_policies(tmp_path_factory):
    d = tmp_path_factory.mktemp("study_policies")
    out = {}
    for head in ("ebt", "regression"):
        p = make_policy(head)
        p.save_pretrained(d / head)
        out[head] = d / head
    return out


@pytest.mark.slow
def test_recovery_and_language_commands(saved_policies, tmp_path):
    from recipes.studies import language, recovery

    pols = [f"ebt={saved_policies['ebt']}", f"reg={saved_policies['regression']}"]
    rows = recovery.main(["--policies", *pols, "--tasks", "reach_red", "--episodes", "2", "--n-boot", "50",
                          "--perturbations", "burst:start=2,length=3", "--out", str(tmp_path)])["rows"]
    assert [(r["label"], r["perturbation"]) for r in rows] == [
        ("ebt", "none"), ("ebt", "burst:start=2,length=3"), ("reg", "none"), ("reg", "burst:start=2,length=3")]
    assert all(r["episodes"] == 2 for r in rows) and (tmp_path / "recovery.png").exists()
    rows = language.main(["--policies", pols[0], "--tasks", "reach_red", "--episodes", "2", "--out", str(tmp_path)])
    assert [r["perturbation"] for r in rows] == ["train paraphrases", "held-out paraphrases"]
    assert (tmp_path / "language.md").exists()
    with pytest.raises(ValueError, match="duplicate"):
        language.parse_policies(["a=x", "a=y"])


def _tiny_reach2d_recipe(tmp_path):
    """reach2d_ebt shrunk to a 2-step, 2-demo run with a tiny trunk (demo cache under tmp_path)."""
    import dataclasses

    from recipes.configs import recipes
    from vla_ebt.heads.trunk import TrunkConfig

    cfg = recipes()["reach2d_ebt"]
    return dataclasses.replace(
        cfg,
        policy=dataclasses.replace(cfg.policy, trunk=TrunkConfig(width=32, depth=1, num_heads=2), horizon=4),
        data=dataclasses.replace(cfg.data, tasks=("reach_red",), episodes_per_task=2, demo_cache=str(tmp_path / "cache")),
        optim=dataclasses.replace(cfg.optim, steps=2, batch_size=4, warmup_steps=1),
    )


@pytest.mark.slow
def test_head_to_head_trains_evaluates_and_reuses_runs(tmp_path):
    """Equal-steps and equal-wall-clock runs per head on the multimodal suite, mode shares per row,
    and a second call reuses the trained runs instead of training again."""
    from recipes.studies.head_to_head import run_head_to_head

    cfg = _tiny_reach2d_recipe(tmp_path)
    sps = {"ebt": 100.0, "regression": 50.0}  # regression twice as fast: twice the steps at equal wall-clock
    rows = run_head_to_head(cfg, ["reach2d_detour"], ["ebt", "regression"], 2, 1, 0, tmp_path / "h2h", True, sps)
    assert [(r["budget"], r["head"]) for r in rows] == [
        ("equal steps", "ebt-2"), ("equal steps", "ebt-4"), ("equal steps", "regression"),
        ("equal wall-clock", "ebt-2"), ("equal wall-clock", "ebt-4"), ("equal wall-clock", "regression")]
    assert rows[2]["train_steps"] == 2 and rows[5]["train_steps"] == 4
    for r in rows:  # EBT's presets: its configured 2 steps and 4 steps, from the same training
        assert r["episodes"] == 1 and r["nfe"] == {"ebt-2": 2.0, "ebt-4": 4.0}.get(r["head"], 1.0)
        assert r["mode_left"] + r["mode_right"] + r["mode_collision"] + r["mode_none"] == pytest.approx(1.0)
    summary = tmp_path / "h2h" / "reach2d_detour" / "ebt_steps2" / "summary.json"
    before = summary.stat().st_mtime_ns
    again = run_head_to_head(cfg, ["reach2d_detour"], ["ebt", "regression"], 2, 1, 0, tmp_path / "h2h", True, sps)
    assert summary.stat().st_mtime_ns == before and len(again) == 6


@pytest.mark.slow
def test_head_to_head_variants_train_with_their_config_fields(tmp_path):
    from recipes.studies.head_to_head import HeadVariant, main, parse_variant, run_head_to_head

    v = parse_variant("ebt-path:ebt:objective=path,infer_steps=3")
    assert v == HeadVariant("ebt-path", "ebt", (("infer_steps", 3), ("objective", "path")))
    with pytest.raises(ValueError, match="NAME:HEAD"):
        parse_variant("ebt-path:transformer:objective=path")
    with pytest.raises(SystemExit, match="unknown ebt config field"):
        main(["--recipe", "reach2d_ebt", "--variant", "x:ebt:objectiv=path", "--out", str(tmp_path / "bad")])
    cfg = _tiny_reach2d_recipe(tmp_path)
    rows = run_head_to_head(cfg, ["reach2d"], [v], 2, 1, 0, tmp_path / "h2h", equal_wall_clock=False)
    assert [(r["head"], r["train_steps"]) for r in rows] == [("ebt-path/ebt-2", 2), ("ebt-path/ebt-4", 2)]
    # the first preset keeps the configured 3 inference steps (the energy is the last step's); ebt-4 sets 4
    assert rows[0]["nfe"] == 3.0 and rows[1]["nfe"] == 4.0
    saved = json.loads((tmp_path / "h2h" / "reach2d" / "ebt-path_steps2" / "policy" / "config.json").read_text())
    assert saved["ebt"]["objective"] == "path" and saved["head"] == "ebt"
