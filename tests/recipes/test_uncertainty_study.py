"""The uncertainty study: chunk-level scores before the outcome (first chunk, chunk at step k among
episodes still running), within-task AUROC with bootstrap intervals, spreads of N samples for every
stochastic head, shift detection, warm start off, and the command end to end on tiny policies."""

from __future__ import annotations

import json

import gymnasium as gym
import numpy as np
import pytest

from eval.sim.perturb import PerturbedSuite
from eval.sim.suites import make_suite
from recipes.studies import uncertainty as unc
from tests.policy_fixtures import make_policy, save_seed_policy


# ------------------------------------------------------------------------------- synthetic episodes
def _ep(task: str, success: bool, length: int, values: list[float], every: int = 4, signal: str = "energy") -> dict:
    """A recorded episode: one chunk every ``every`` steps over ``length`` steps, signal values in order."""
    steps = list(range(0, length, every))
    vals = (values * len(steps))[: len(steps)]
    return {"task": task, "success": success, "error": None, "length": length, "acted": length,
            "chunks": {"step": steps, signal: vals}}


def test_step_k_scores_only_use_episodes_still_running():
    eps = [_ep("a", True, 6, [1.0, 2.0]),  # chunks at 0, 4: ended at step 6
           _ep("a", False, 20, [3.0, 4.0, 5.0, 6.0, 7.0]),  # chunks at 0, 4, 8, 12, 16
           _ep("a", True, 9, [8.0, 9.0, 10.0])]  # chunks at 0, 4, 8
    assert [unc.chunk_score(e, "energy", 0) for e in eps] == [1.0, 3.0, 8.0]  # the first chunk of every episode
    assert [unc.chunk_score(e, "energy", 8) for e in eps] == [None, 5.0, 10.0]  # the first has ended
    assert [unc.chunk_score(e, "energy", 6) for e in eps] == [None, 5.0, 10.0]  # first chunk planned at or after 6
    assert [unc.chunk_score(e, "energy", 16) for e in eps] == [None, 7.0, None]
    assert unc.chunk_score(eps[0], "sample_spread", 0) is None  # a signal the episode did not record
    est = unc.failure_estimate([eps], "energy", 8, ["a"], n_boot=50)
    assert est["episodes"] == 2 and est["positives"] == 1  # only the two episodes running at step 8
    est = unc.failure_estimate([eps], "energy", 16, ["a"], n_boot=50)
    assert est["episodes"] == 1 and est["value"] is None and est["groups"] == 0  # one class left: undefined
    assert unc.episode_mean(eps[1], "energy") == 5.0 and unc.episode_mean(eps[1], unc.LENGTH_SIGNAL) == 20.0


def _synthetic_seeds(signal_of, n_seeds=2, n=24, seed=0):
    """Per training seed, episodes of tasks a / b with random outcomes; the chunk signal from
    ``signal_of(failed, task, rng)``; failed episodes run longer."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n_seeds):
        eps = []
        for i in range(n):
            task = "a" if i % 2 else "b"
            failed = bool(i % 3 == 0) if task == "a" else bool(i % 4 == 0)
            length = 40 if failed else int(rng.integers(5, 30))
            eps.append(_ep(task, not failed, length, [float(signal_of(failed, task, rng))]))
        out.append(eps)
    return out


def test_auroc_direction_and_first_chunk_on_synthetic_data():
    seeds = _synthetic_seeds(lambda failed, task, rng: float(failed))  # the signal is the failure label
    est = unc.failure_estimate(seeds, "energy", 0, ["a", "b"], n_boot=200)
    assert est["value"] == 1.0 and est["lo"] == 1.0 and est["hi"] == 1.0
    assert est["episodes"] == sum(len(s) for s in seeds)  # the first chunk scores every episode
    assert est["n_seeds"] == 2 and est["groups"] == 4  # 2 seeds x 2 tasks, both with both outcomes
    inverted = _synthetic_seeds(lambda failed, task, rng: -float(failed))
    assert unc.failure_estimate(inverted, "energy", 0, ["a", "b"], n_boot=50)["value"] == 0.0
    # a signal that only tells the tasks apart (one task fails more often) predicts nothing within task
    noise = _synthetic_seeds(lambda failed, task, rng: (5.0 if task == "a" else 0.0) + rng.normal())
    est = unc.failure_estimate(noise, "energy", 0, ["a", "b"], n_boot=300)
    assert est["lo"] < 0.5 < est["hi"]
    # the episode-length reference separates the outcomes perfectly here (failed episodes run longer)
    assert unc.failure_estimate(noise, unc.LENGTH_SIGNAL, None, ["a", "b"], n_boot=50)["value"] == 1.0


def test_shift_estimate_and_onset():
    rng = np.random.default_rng(1)
    base = [[_ep(t, True, 8, [float(rng.normal())]) for t in "abab"] for _ in range(2)]
    shifted = [[_ep(t, False, 8, [float(rng.normal() + 10)]) for t in "abab"] for _ in range(2)]
    est = unc.shift_estimate(base, shifted, "energy", 0, ["a", "b"], n_boot=100)
    assert est["value"] == 1.0 and est["lo"] == 1.0 and est["positives"] == 8 and est["episodes"] == 16
    assert unc.shift_estimate(shifted, base, "energy", 0, ["a", "b"], n_boot=20)["value"] == 0.0
    assert unc.shift_onset("noise:sigma=25") == 0 and unc.shift_onset("heldout") == 0
    # acting inside env step k: the observation of step k + 1 is the first that differs
    assert unc.shift_onset("displace:at=6,scale=0.3") == 7 and unc.shift_onset("burst:start=10,length=8") == 11
    # what the onset says, in the env: the observation of step `at` is unchanged, the next one differs
    from eval.sim.perturb import make_perturbation

    suite = make_suite("reach2d", max_episode_steps=10)
    plain = suite.make_env("reach_red", seed=5)
    moved = PerturbedSuite(suite, [make_perturbation("displace:at=2,scale=0.3")], tag="d").make_env("reach_red", seed=5)
    obs = [plain.reset()[0]], [moved.reset()[0]]
    for _ in range(3):
        for o, env in zip(obs, (plain, moved)):
            o.append(env.step(np.zeros(2, np.float32))[0])
    same = [np.array_equal(a["image"], b["image"]) for a, b in zip(*obs)]
    assert same == [True, True, True, False]  # steps 0-2 identical; the obs of step 3 = onset 2 + 1 differs


def test_signal_rows_by_head_capabilities():
    ebt, flow, reg = (make_policy(h).head.capabilities for h in ("ebt", "flow", "regression"))
    rec = [{"chunks": {"step": [0], "energy": [1.0], "small_drop": [0.2], "sample_spread": [0.3], "energy_spread": [0.1]}}]
    assert unc.signals_of(ebt, rec)[0] == ["energy", "small_drop", "sample_spread", "energy_spread"]
    have, why = unc.signals_of(flow, [{"chunks": {"step": [0], "sample_spread": [0.3]}}])
    assert have == ["sample_spread"] and set(why) == {"energy", "small_drop", "energy_spread"}
    have, why = unc.signals_of(reg, [{"chunks": {"step": [0, 4], "sample_spread": [0.0, 0.0]}}])
    assert have == [] and "deterministic" in why["sample_spread"]


def test_policy_settings_use_the_first_preset_and_the_returned_chunks_own_energy():
    assert unc.policy_settings(make_policy("ebt")) == {"preset": "ebt-2", "overrides": {"final_eval": True}}
    diff = make_policy("diffusion")
    assert unc.policy_settings(diff)["overrides"] == {"sampler": "ddpm", "num_steps": 100}
    assert unc.policy_settings(diff, "ddim-10") == {"preset": "ddim-10", "overrides": {"sampler": "ddim", "num_steps": 10}}
    with pytest.raises(ValueError, match="no preset"):
        unc.policy_settings(diff, "ddpm-7")
    assert unc.parse_policies(["ebt=a,b", "flow=c"]) == {"ebt": ["a", "b"], "flow": ["c"]}
    with pytest.raises(ValueError, match="duplicate"):
        unc.parse_policies(["ebt=a", "ebt=b"])


# --------------------------------------------------------------------------------- closed loop
def test_episodes_run_with_warm_start_off_and_record_steps_and_spreads():
    policy = make_policy("ebt")  # its execution config has warm start on
    policy.eval()
    assert policy.cfg.execution.warm_start
    inits = []
    handle = policy.head.register_predict_hook(lambda head, ctx, init, knobs, pred: inits.append((init, dict(knobs))))
    suite = make_suite("reach2d", max_episode_steps=7)
    try:
        eps = unc.run_policy_episodes(policy, suite, ["reach_red"], [5], 2, unc.IN_DIST, {"final_eval": True}, samples=3)
    finally:
        handle.remove()
    assert len(inits) == 2 * 3  # 2 episodes x chunks planned at steps 0, 3, 6
    assert all(init is None for init, _ in inits)  # no chunk was warm started
    assert all(k == {"final_eval": True} for _, k in inits)
    assert policy.cfg.execution.warm_start and policy.head.active_overrides() == {}  # restored
    for e in eps:
        c = e["chunks"]
        assert c["step"] == [0, 3, 6] and e["acted"] == 7
        assert len(c["energy"]) == len(c["small_drop"]) == len(c["sample_spread"]) == len(c["energy_spread"]) == 3
        assert all(s > 0 for s in c["sample_spread"])


class _SucceedEarly(gym.Wrapper):
    """Test wrapper: episodes whose reset seed is 1 mod 4 succeed after 4 steps (mixed outcomes, and the
    failed episodes run longer, as in a real suite)."""

    def reset(self, *, seed=None, options=None):
        self._win = seed is not None and int(seed) % 4 == 1  # eval seed 0: 1 of 3 / 2 of 3 per task
        self._t = 0
        return super().reset(seed=seed, options=options)

    def step(self, action):
        obs, r, term, trunc, info = super().step(action)
        self._t += 1
        if self._win and self._t >= 4:
            info = {**info, "is_success": True}
            term = True
        return obs, r, term, trunc, info


def test_study_end_to_end_two_heads(tmp_path):
    """ebt (2 training seeds) and flow (1) on reach2d: JSON + MD with intervals, first-chunk scores
    for every episode, no energy rows for flow but a spread row, shift rows at step 0 and onset,
    and a rerun reuses the cached episodes."""
    dirs = {}
    for head, n in (("ebt", 2), ("flow", 1)):
        dirs[head] = []
        for s in range(n):
            dirs[head].append(save_seed_policy(tmp_path / "pol" / head / f"seed{s}", head, s))
    suite = PerturbedSuite(make_suite("reach2d", max_episode_steps=10), [_SucceedEarly], tag="mixed")
    kw = dict(steps=[0, 6], shifts=["noise:sigma=40", "displace:at=2,scale=0.3"], samples=3, n_boot=100,
              meta={"suite": "reach2d", "suite_args": ["max_episode_steps=10"]})
    out = tmp_path / "out"
    res = unc.run_uncertainty(dirs, suite, ["reach_red", "reach_blue"], [0], 3, out, **kw)

    saved = json.loads((out / "uncertainty.json").read_text())
    assert saved == res and saved["schema"] == unc.SCHEMA
    meta = saved["meta"]
    assert meta["warm_start"] is False and meta["eval_seeds"] == [0] and meta["git_commit"]
    assert meta["cpu_seconds"] > 0 and meta["cpu_unrecorded_parts"] == 0  # every part ran (and was timed) here
    assert [s["train_seed"] for s in saved["policies"]["ebt"]["seeds"]] == [0, 1]
    assert saved["policies"]["ebt"]["overrides"] == {"final_eval": True}
    fail = saved["tables"]["failure"]
    sigs = {(r["label"], r["signal"]) for r in fail}
    assert ("flow", "energy") not in sigs and ("flow", "small_drop") not in sigs and ("flow", "sample_spread") in sigs
    assert {("ebt", s) for s in ("energy", "small_drop", "sample_spread", "energy_spread")} <= sigs
    n_eps = {"ebt": 2 * 2 * 3, "flow": 1 * 2 * 3}
    for r in fail:
        if r["score"] == "step 0":  # the first chunk scores every episode, with an interval
            assert r["episodes"] == n_eps[r["label"]] and r["groups"] > 0
            assert r["lo"] <= r["value"] <= r["hi"]
        if r["score"] == "step 6":
            assert r["episodes"] < n_eps[r["label"]]  # the early successes have ended
    length = [r for r in fail if r["signal"] == unc.LENGTH_SIGNAL]
    assert len(length) == 2 and all(r["value"] == 1.0 and r["score"] == unc.MEAN_SCORE for r in length)
    shift = saved["tables"]["shift"]
    assert {(r["shift"], r["step"]) for r in shift} == {("noise:sigma=40", 0), ("displace:at=2,scale=0.3", 0),
                                                        ("displace:at=2,scale=0.3", 3)}
    disp0 = [r for r in shift if r["shift"].startswith("displace") and r["step"] == 0]
    assert all(r["value"] == 0.5 for r in disp0)  # before the onset both conditions see the same inputs
    md = (out / "uncertainty.md").read_text()
    assert "episode mean (confounded by length)" in md and "step 0" in md and "[" in md
    assert "flow energy (the head reports no energy)" in md
    assert (out / "uncertainty.png").exists()

    calls = []
    again = unc.run_uncertainty(dirs, suite, ["reach_red", "reach_blue"], [0], 3, out, log=calls.append, **kw)
    assert sum("(cached)" in c for c in calls) == 3 * 3  # 3 policies x 3 conditions
    assert again["tables"] == res["tables"]
    # the summary python -m recipes.results renders once it is published (recipes.compare.study_summaries)
    from recipes.compare.study_summaries import render_study

    summary = "\n".join(render_study(out / "uncertainty.json", "uncertainty.md", ("reach2d", "frozen")))
    assert "| head | signal | first chunk | step 6 |" in summary and "| ebt | energy | " in summary
    assert "| flow | energy |" not in summary and "displace:at=2,scale=0.3 @ step 3" in summary


# --------------------------------------------------------------------------------- compare grid
def test_find_compare_policies_takes_the_last_checkpoint_of_finished_finals(tmp_path):
    root = tmp_path / "metaworld" / "frozen" / "final"

    def run(head, hp, seed, steps=(10, 20), done=True):
        d = root / head / hp / f"seed{seed}"
        for s in steps:
            (d / "checkpoints" / f"step_{s:08d}" / "policy").mkdir(parents=True)
            (d / "checkpoints" / f"step_{s:08d}" / "policy" / "config.json").write_text("{}")
        if done:
            (d / "done.json").write_text("{}")
        return d

    run("ebt", "lr0.001_ema0.99", 1)
    run("ebt", "lr0.001_ema0.99", 0)
    run("ebt", "lr0.001_ema0.99", 2, done=False)  # unfinished: left out
    run("flow", "lr0.0003_ema0.99", 0)
    run("flow", "lr0.001_ema0.99", 0)  # two hyperparameter folders: tuning.json picks
    (tmp_path / "metaworld" / "frozen" / "tuning.json").write_text(json.dumps(
        {"heads": {"flow": {"chosen": {"run": "metaworld/frozen/tune/flow/lr0.0003_ema0.99/seed0"}}}}))
    found = unc.find_compare_policies(tmp_path, "metaworld", "frozen")
    assert found["ebt"] == [str(root / "ebt/lr0.001_ema0.99" / f"seed{s}/checkpoints/step_00000020/policy") for s in (0, 1)]
    assert found["flow"] == [str(root / "flow/lr0.0003_ema0.99/seed0/checkpoints/step_00000020/policy")]
    assert list(unc.find_compare_policies(tmp_path, "metaworld", "frozen", ["flow"])) == ["flow"]
    with pytest.raises(FileNotFoundError, match="diffusion"):
        unc.find_compare_policies(tmp_path, "metaworld", "frozen", ["diffusion"])
    seed_dir = root / "ebt/lr0.001_ema0.99/seed1"
    (seed_dir / "result.json").write_text(json.dumps({"train_seed": 1, "git_commit": "abc", "eval_seeds": [10000],
                                                      "tasks": ["t"], "config": {"data": {"suite_args": ["x=1"]}}}))
    info = unc._run_info(found["ebt"][1])
    assert info["train_seed"] == 1 and info["eval_seeds"] == [10000] and info["suite_args"] == ["x=1"]
    assert unc._run_info(found["ebt"][0])["train_seed"] == 0  # from the folder name


def test_command_on_a_compare_grid_uses_its_seeds_tasks_and_suite_args(tmp_path):
    """``--compare OUT --suite S --protocol P``: the final policies are found, and the grid's eval
    seeds, tasks and suite arguments are the defaults; the comparison's own success on the same
    episodes is reported beside the study's."""
    seed_dir = tmp_path / "grid" / "reach2d" / "frozen" / "final" / "ebt" / "lr0.001_ema0.99" / "seed3"
    make_policy("ebt").save_pretrained(seed_dir / "checkpoints" / "step_00000004" / "policy")
    (seed_dir / "done.json").write_text("{}")
    (seed_dir / "result.json").write_text(json.dumps({
        "train_seed": 3, "git_commit": "abc123", "eval_seeds": [7], "tasks": ["reach_red"], "steps": 4,
        "config": {"data": {"suite_args": ["max_episode_steps=6"]}},
        "rows": [{"preset": "ebt-2", "warm_start": False, "curve": [{"step": 4, "outcomes": {"reach_red": [1, 0, 0]}}]}]}))
    res = unc.main(["--compare", str(tmp_path / "grid"), "--suite", "reach2d", "--protocol", "frozen",
                    "--episodes", "2", "--shifts", "--samples", "2", "--steps", "3", "--n-boot", "20",
                    "--out", str(tmp_path / "out")])
    meta, pol = res["meta"], res["policies"]["ebt"]
    assert meta["eval_seeds"] == [7] and meta["tasks"] == ["reach_red"] and meta["suite_args"] == ["max_episode_steps=6"]
    assert meta["steps"] == [0, 3] and meta["compare"] == str(tmp_path / "grid") and meta["protocol"] == "frozen"
    assert pol["seeds"][0]["train_seed"] == 3 and pol["seeds"][0]["train_git_commit"] == "abc123"
    ind = [r for r in res["tables"]["success"] if r["condition"] == unc.IN_DIST][0]
    assert ind["episodes"] == 2 and pol["compare_success"] == 0.5  # the grid's first 2 of its 3 episodes
