"""The studies on the comparison protocol's policies (recipes/studies/protocol_policies.py): seed
pooling and intervals on synthetic episode outcomes (a perturbed / clean ratio with a known answer),
the one policy finder and command line shared by uncertainty, realtime, recovery and dynamic compute, and the realtime
and recovery studies end to end on reach2d with two tiny training seeds of one head (resumed)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from recipes.studies import protocol_policies as pp
from recipes.studies import dynamic_compute, realtime, recovery, uncertainty
from tests.policy_fixtures import make_policy, save_seed_policy


def _eps(outcomes, tasks=None, **extra):
    """Episode records of one seed: ``outcomes`` 0/1 (or None: an env error), tasks "a" by default."""
    tasks = tasks or ["a"] * len(outcomes)
    return [{"task": t, "eval_seed": 0, "index": i, "env_seed": 100 + i, "success": bool(o), "error": None if o is not None else "boom",
             **{k: v[i] for k, v in extra.items()}} for i, (o, t) in enumerate(zip(outcomes, tasks))]


# ------------------------------------------------------------------------------------------ pooling
def test_ratio_is_the_ratio_of_pooled_means_with_paired_replicates():
    clean = [_eps([1, 1, 1, 1]), _eps([1, 1, 0, 0])]
    pert = [_eps([1, 0, 1, 0]), _eps([0, 0, 0, 0])]
    est = pp.ratio_estimate(clean, pert, ["a"], n_boot=500)
    # pooled means: clean (1 + 0.5) / 2 = 0.75, perturbed (0.5 + 0) / 2 = 0.25 -> 1/3 (the mean of the
    # per-seed ratios would be (0.5 + 0) / 2 = 0.25)
    assert est["value"] == pytest.approx(1 / 3)
    assert est["lo"] <= est["value"] <= est["hi"] and est["n_seeds"] == 2 and est["episodes"] == 8
    # perturbed == clean episode by episode: every replicate draws the pairs together, so the ratio is 1
    # in every replicate (independent draws for the two conditions would spread it)
    same = pp.ratio_estimate(clean, [list(c) for c in clean], ["a"], n_boot=300)
    assert (same["value"], same["lo"], same["hi"]) == (1.0, 1.0, 1.0)
    # replicates with no clean success are undefined: left out and counted
    sparse = pp.ratio_estimate([_eps([1, 0, 0, 0])], [_eps([1, 0, 0, 0])], ["a"], n_boot=300)
    assert sparse["value"] == 1.0 and sparse["undefined_replicates"] > 0
    assert pp.ratio_estimate([_eps([0, 0])], [_eps([1, 0])], ["a"], n_boot=20)["value"] is None
    with pytest.raises(ValueError, match="paired"):
        pp.ratio_estimate([_eps([1, 1])], [_eps([1, 1])[::-1]], ["a"], n_boot=10)


def test_success_and_metric_means_pool_training_seeds():
    seeds = [_eps([1, 1, None, 0], tasks=list("abab")), _eps([1, 0, 0, 0], tasks=list("abab"))]
    est = pp.success_estimate(seeds, ["a", "b"], n_boot=300)
    assert est["per_seed"] == [0.5, 0.25] and est["value"] == pytest.approx(0.375)  # the env error failed
    assert est["errors"] == 1 and est["episodes"] == 8 and est["lo"] <= 0.375 <= est["hi"]
    # a metric undefined on some episodes: each seed's mean over its defined episodes, then over seeds
    m = pp.mean_estimate([_eps([1, 1, 1], jump=[1.0, None, 3.0]), _eps([1, 1], jump=[float("nan"), 4.0])], "jump",
                         ["a"], n_boot=300)
    assert m["value"] == pytest.approx(3.0) and m["episodes"] == 3 and m["lo"] <= 3.0 <= m["hi"]
    assert pp.mean_estimate([_eps([1, 1], jump=[None, None])], "jump", ["a"], n_boot=10)["value"] is None
    assert pp.estimate_cell({"value": 0.5, "lo": 0.25, "hi": 0.75}) == "0.50 [0.25, 0.75]"
    assert pp.estimate_cell({"value": None}) == "-"


# ------------------------------------------------------------------------------- the shared finder
def _grid(tmp_path, seeds=(0, 1), head="ebt", real=False, outcomes=None):
    """A comparison grid with finished final runs of ``head`` (real tiny policies with ``real``)."""
    dirs = []
    for s in seeds:
        seed_dir = tmp_path / "grid" / "reach2d" / "frozen" / "final" / head / "lr0.001_ema0.99" / f"seed{s}"
        pol = seed_dir / "checkpoints" / "step_00000004" / "policy"
        if real:
            save_seed_policy(pol, head, s)
        else:
            pol.mkdir(parents=True)
            (pol / "config.json").write_text("{}")
        (seed_dir / "done.json").write_text("{}")
        rows = [] if outcomes is None else [{"preset": f"{head}-2", "warm_start": False,
                                              "curve": [{"step": 4, "outcomes": outcomes[s]}]}]
        (seed_dir / "result.json").write_text(json.dumps({
            "train_seed": s, "git_commit": f"abc{s}", "eval_seeds": [7], "tasks": ["reach_red"], "steps": 4,
            "episodes_per_task": 3, "config": {"data": {"suite_args": ["max_episode_steps=6"]}}, "rows": rows}))
        dirs.append(str(pol))
    return tmp_path / "grid", dirs


def test_the_protocol_studies_find_policies_through_the_one_shared_module(tmp_path):
    grid, dirs = _grid(tmp_path)
    for mod in (uncertainty, realtime, recovery, dynamic_compute):
        assert mod.resolve_policy_arguments is pp.resolve_policy_arguments
        assert getattr(mod, "find_compare_policies", pp.find_compare_policies) is pp.find_compare_policies
        assert getattr(mod, "parse_policies", pp.parse_policies) is pp.parse_policies
        a = mod.build_parser().parse_args(["--compare", str(grid), "--suite", "reach2d", "--protocol", "frozen",
                                           "--out", str(tmp_path / "o")])
        inp = pp.resolve_policy_arguments(a)
        assert inp.policies == {"ebt": dirs}
        assert (inp.eval_seeds, inp.tasks, inp.suite_args) == ([7], ["reach_red"], ["max_episode_steps=6"])
        assert inp.meta() == {"suite": "reach2d", "suite_args": ["max_episode_steps=6"], "compare": str(grid),
                              "protocol": "frozen"}
        a = mod.build_parser().parse_args(["--policies", "ebt=x,y", "flow=z", "--seed", "5", "--preset", "flow=flow-10",
                                           "--out", str(tmp_path / "o")])
        inp = pp.resolve_policy_arguments(a)
        assert inp.policies == {"ebt": ["x", "y"], "flow": ["z"]} and inp.eval_seeds == [5]
        assert inp.presets == {"flow": "flow-10"} and inp.tasks == []
    assert pp.run_info(dirs[1])["train_seed"] == 1 and pp.run_info(dirs[1])["episodes_per_task"] == 3
    with pytest.raises(ValueError, match="unknown label"):
        pp.resolve_policy_arguments(realtime.build_parser().parse_args(
            ["--policies", "ebt=x", "--preset", "flow=flow-10", "--out", "o"]))
    with pytest.raises(ValueError, match="duplicate"):
        pp.parse_policies(["ebt=a", "ebt=b"])
    diff = make_policy("diffusion")
    assert pp.policy_settings(diff, final_eval=False) == {"preset": "ddpm-100",
                                                          "overrides": {"sampler": "ddpm", "num_steps": 100}}
    assert pp.policy_settings(make_policy("ebt"), final_eval=False) == {"preset": "ebt-2", "overrides": {}}


# ------------------------------------------------------------------------------------ end to end
def _seed_policies(tmp_path, head="ebt", n=2):
    return [save_seed_policy(tmp_path / "pol" / head / f"seed{s}", head, s) for s in range(n)]


def test_realtime_pools_two_training_seeds_warm_start_off_and_resumes(tmp_path, monkeypatch):
    from recipes.studies.common import load_policy

    dirs = _seed_policies(tmp_path)
    inits = []

    def load(d):
        policy = load_policy(d)
        assert policy.cfg.execution.warm_start  # the fixture's config has it on; the study turns it off
        policy.head.register_predict_hook(lambda head, ctx, init, knobs, pred: inits.append(init))
        return policy

    kw = dict(tasks=["reach_red"], episodes=2, eval_seeds=[3], delays=[0, 2, 8],
              strategies=["sync", "naive_async", "temporal_ensemble", "rtc", "energy_gate"],
              suite_kwargs={"max_episode_steps": 6}, n_boot=100, meta={"argv": ["test"]}, log=None)
    out = tmp_path / "out"
    res = realtime.run_realtime({"ebt": dirs}, "reach2d", out, load=load, **kw)
    assert inits and all(i is None for i in inits)  # no chunk was warm started
    saved = json.loads((out / "realtime.json").read_text())
    assert saved == res and saved["schema"] == realtime.SCHEMA
    meta = saved["meta"]
    assert meta["eval_seeds"] == [3] and meta["warm_start"] is False and meta["git_commit"] and meta["argv"] == ["test"]
    assert [s["train_seed"] for s in saved["policies"]["ebt"]["seeds"]] == [0, 1]
    assert saved["policies"]["ebt"]["preset"] == "ebt-2" and saved["policies"]["ebt"]["overrides"] == {}
    cells = {(r["strategy"], r["delay"]) for r in saved["rows"]}
    assert cells == {("sync", 0)} | {(s, d) for s in ("naive_async", "temporal_ensemble", "rtc", "energy_gate")
                                     for d in (0, 2)}  # sync once; d = 8 >= horizon 8 skipped
    assert [s["delay"] for s in saved["skipped"]] == [8]
    for r in saved["rows"]:
        assert r["seeds"] == 2 and len(r["per_seed"]) == 2 and r["episodes"] == 4
        assert r["ci_low"] <= r["success"] <= r["ci_high"]
        assert r["success"] == pytest.approx(np.mean(r["per_seed"]))
        if r["max_switch_jump"] is not None:
            assert r["max_switch_jump_lo"] <= r["max_switch_jump"] <= r["max_switch_jump_hi"]
        assert r["mean_sq_second_diff"] is not None and r["mean_sq_second_diff_lo"] <= r["mean_sq_second_diff"]
    # every training seed ran the same episodes in every cell
    seed_cells = [json.loads(f.read_text()) for f in sorted((out / "cells" / "ebt").glob("*/naive_async__d2.json"))]
    assert len(seed_cells) == 2
    assert [e["env_seed"] for e in seed_cells[0]["episodes"]["episodes"]] == \
        [e["env_seed"] for e in seed_cells[1]["episodes"]["episodes"]]
    md = (out / "realtime.md").read_text()
    assert "| ebt | rtc | 2 |" in md and "Skipped" in md and "warm start off" in md and (out / "realtime.png").exists()

    monkeypatch.setattr(realtime, "run_cell", lambda *a, **k: pytest.fail("a finished cell was run again"))
    again = realtime.run_realtime({"ebt": dirs}, "reach2d", out, **kw)
    assert again["rows"] == saved["rows"] and again["policies"] == saved["policies"]
    # a stored sweep's other labels join a re-run of one label (same settings); other settings are refused
    stored = json.loads(json.dumps(saved).replace('"ebt"', '"flow"'))
    stored["meta"]["git_commit"] = "feedc0de"
    (tmp_path / "stored.json").write_text(json.dumps(stored))
    merged = realtime.run_realtime({"ebt": dirs}, "reach2d", out, merge_from=tmp_path / "stored.json", **kw)
    assert list(merged["policies"]) == ["flow", "ebt"] and merged["meta"]["merged_from"]["labels"] == ["flow"]
    assert merged["meta"]["merged_from"]["label_commits"] == {"flow": "feedc0de"}
    assert "cells not re-run: flow (git feedc0de)" in (out / "realtime.md").read_text()
    # merging again from the merged file keeps the commit that computed flow's cells
    (tmp_path / "merged.json").write_text(json.dumps(merged))
    again = realtime.merge_stored({**saved, "meta": {**saved["meta"], "git_commit": "0ther"}}, tmp_path / "merged.json")
    assert again["meta"]["merged_from"]["label_commits"] == {"flow": "feedc0de"}
    assert realtime.merged_commits({"labels": ["flow"], "git_commit": "01d"}) == {"flow": "01d"}  # an older file
    assert [r for r in merged["rows"] if r["label"] == "ebt"] == saved["rows"]
    assert len(merged["rows"]) == 2 * len(saved["rows"]) and {s["label"] for s in merged["skipped"]} == {"flow", "ebt"}
    assert "| flow | rtc | 2 |" in (out / "realtime.md").read_text()
    stored["meta"]["eval_seeds"] = [4]
    (tmp_path / "stored.json").write_text(json.dumps(stored))
    with pytest.raises(ValueError, match=r"stored.json: meta.eval_seeds is \[4\], this run has \[3\]"):
        realtime.run_realtime({"ebt": dirs}, "reach2d", out, merge_from=tmp_path / "stored.json", **kw)
    # published (a folder outside the results tree: nothing regenerated), its summary renders
    pub = tmp_path / "pub" / "reach2d" / "frozen" / "studies"
    assert {p.name for p in pp.publish_study("realtime", out, pub)} == {"realtime.json", "realtime.md", "realtime.png"}
    from recipes.compare.study_summaries import render_study

    summary = "\n".join(render_study(pub / "realtime.json", "realtime.md", ("reach2d", "frozen")))
    assert "| ebt: strategy | d = 0 | d = 2 |" in summary and "| rtc | " in summary and "ebt: " in summary
    assert "; flow from git feedc0de (merged)" in summary


def test_recovery_over_reached_episodes_leaves_out_the_pairs_that_ended_before_the_onset():
    """Episodes that end (on success) before the perturbation's onset step were never perturbed: the
    all-episode ratio counts them, the reached ratio only the pairs still running at the onset."""
    # clean: 2 short successes (length 3) + 2 long successes; perturbed: the short ones the same, the
    # long ones: one fails -> all-episode ratio 3/4, reached (length > 5) ratio 1/2
    clean = [_eps([1, 1, 1, 1], length=[3, 3, 20, 20])]
    pert = [_eps([1, 1, 1, 0], length=[3, 3, 20, 60])]
    rows = recovery.analyse({"x": {"head": "ebt", "seeds": [{"none": clean[0], "burst:start=5,length=4": pert[0]}]}},
                            ["a"], ["burst:start=5,length=4"], n_boot=200)
    row = rows[1]
    assert row["recovery"] == pytest.approx(0.75) and row["onset"] == 5 and row["reached"] == 2
    assert row["recovery_reached"] == pytest.approx(0.5) and row["reached_clean_success"] == 1.0
    assert row["recovery_reached_lo"] <= 0.5 <= row["recovery_reached_hi"]
    # a perturbation from the reset on (onset 0) reaches every episode
    rows = recovery.analyse({"x": {"head": "ebt", "seeds": [{"none": clean[0], "noise:sigma=5": pert[0]}]}},
                            ["a"], ["noise:sigma=5"], n_boot=50)
    assert rows[1]["reached"] == 4 and rows[1]["recovery_reached"] == pytest.approx(rows[1]["recovery"])
    # none reached: undefined, said so
    rows = recovery.analyse({"x": {"head": "ebt", "seeds": [{"none": clean[0], "displace:at=90": pert[0]}]}},
                            ["a"], ["displace:at=90"], n_boot=50)
    assert rows[1]["reached"] == 0 and rows[1]["recovery_reached"] is None and rows[1]["reached_clean_success"] is None
    md = recovery.render_markdown({"meta": {"git_commit": "x", "tasks": ["a"], "eval_seeds": [0], "episodes_per_task": 4,
                                            "n_boot": 50}, "policies": {}, "rows": rows})
    assert "| 90: 0, - | - |" in md


def test_onset_step_of_each_perturbation():
    from eval.sim.perturb import onset_step

    assert [onset_step(s) for s in ("burst:start=4,length=6", "displace:at=14,scale=0.5", "gripper_open:start=30")] == [4, 14, 30]
    assert onset_step("burst") == 10 and onset_step("noise:sigma=25") == 0 and onset_step("shift:dy=6,dx=6") == 0
    with pytest.raises(ValueError, match="unknown perturbation 'bump'"):
        onset_step("bump:at=3")


def test_recovery_on_a_compare_grid_pools_two_training_seeds_and_resumes(tmp_path, monkeypatch):
    grid, dirs = _grid(tmp_path, real=True, outcomes={0: {"reach_red": [1, 0, 1]}, 1: {"reach_red": [0, 0, 1]}})
    args = ["--compare", str(grid), "--suite", "reach2d", "--protocol", "frozen", "--episodes", "2",
            "--perturbations", "burst:start=1,length=4", "--n-boot", "100", "--out", str(tmp_path / "out")]
    res = recovery.main(args)
    saved = json.loads((tmp_path / "out" / "recovery.json").read_text())
    assert saved == res and saved["schema"] == recovery.SCHEMA
    meta, pol = saved["meta"], saved["policies"]["ebt"]
    assert meta["eval_seeds"] == [7] and meta["tasks"] == ["reach_red"] and meta["suite_args"] == ["max_episode_steps=6"]
    assert meta["compare"] == str(grid) and meta["git_commit"] and meta["warm_start"] is False
    assert [s["train_seed"] for s in pol["seeds"]] == [0, 1] and [s["train_git_commit"] for s in pol["seeds"]] == ["abc0", "abc1"]
    assert pol["compare_success"] == pytest.approx(0.25)  # the grid's first 2 of 3 episodes: (0.5 + 0) / 2
    clean, burst = saved["rows"]
    assert (clean["perturbation"], burst["perturbation"]) == ("none", "burst:start=1,length=4")
    assert clean["episodes"] == burst["episodes"] == 4 and len(clean["per_seed"]) == 2 and "recovery" not in clean
    if clean["success"]:
        assert burst["recovery"] == pytest.approx(burst["success"] / clean["success"])
    else:
        assert burst["recovery"] is None
    md = (tmp_path / "out" / "recovery.md").read_text()
    assert "recovery (perturbed / clean)" in md and "| ebt | none |" in md and (tmp_path / "out" / "recovery.png").exists()

    monkeypatch.setattr(recovery, "run_condition", lambda *a, **k: pytest.fail("cached episodes were run again"))
    pub = tmp_path / "pub" / "reach2d" / "frozen" / "studies"
    again = recovery.main([*args, "--publish-dir", str(pub)])  # the rerun publishes its files
    assert again["rows"] == saved["rows"]
    assert json.loads((pub / "recovery.json").read_text()) == again and (pub / "recovery.png").exists()
    from recipes.compare.study_summaries import render_study

    summary = "\n".join(render_study(pub / "recovery.json", "recovery.md", ("reach2d", "frozen")))
    assert "| head | clean success | burst:start=1,length=4 |" in summary and "| ebt | " in summary
    assert f"; reached {burst['reached']}: " in summary and burst["onset"] == 1
    # CPU time: recorded with each cached condition, so the resumed study reports the same total
    assert meta["cpu_seconds"] > 0 and meta["cpu_unrecorded_parts"] == 0
    assert again["meta"]["cpu_seconds"] == pytest.approx(meta["cpu_seconds"])
    assert f"* CPU time: {meta['cpu_seconds'] / 3600:.2f} CPU-h (its episodes" in summary


def test_timed_cache_stores_cpu_time_and_reads_an_older_cache_as_unrecorded(tmp_path):
    import time

    from recipes.studies.protocol_policies import CpuTally, timed_cached_episodes

    def work() -> list[int]:
        t = time.process_time()
        while time.process_time() - t < 0.05:  # burn CPU, not wall time
            pass
        return [1, 2]

    path, key = tmp_path / "c.json", {"policy": "p", "episodes": 2}
    eps, hit, cpu = timed_cached_episodes(path, key, work)
    assert (eps, hit) == ([1, 2], False) and cpu >= 0.05
    eps2, hit2, cpu2 = timed_cached_episodes(path, key, lambda: pytest.fail("cached episodes were run again"))
    assert (eps2, hit2) == ([1, 2], True) and cpu2 == pytest.approx(cpu)
    old = tmp_path / "old.json"  # a cache written before CPU time was recorded: a bare episode list
    old.write_text(json.dumps({"key": key, "episodes": [3]}))
    assert timed_cached_episodes(old, key, lambda: pytest.fail("run")) == ([3], True, None)
    tally = CpuTally()
    for c in (cpu, None, 1.5):
        tally.add(c)
    assert tally.meta() == {"cpu_seconds": pytest.approx(cpu + 1.5), "cpu_unrecorded_parts": 1}


def test_study_cpu_line_from_meta_or_rows_and_says_where_none_was_recorded():
    from recipes.compare.study_summaries import cpu_line

    assert cpu_line({"meta": {"cpu_seconds": 7200.0, "cpu_unrecorded_parts": 0}}) == \
        "* CPU time: 2.00 CPU-h (its episodes, single-thread processes)."
    assert "not counting 3 part(s) reused from a cache" in cpu_line({"meta": {"cpu_seconds": 36.0, "cpu_unrecorded_parts": 3}})
    assert cpu_line({"meta": {"cpu_seconds": 0.0, "cpu_unrecorded_parts": 3}}).startswith("* CPU time: not recorded (3 part(s)")
    assert cpu_line({"meta": {}, "rows": [{"cpu_s": 1800.0}, {"cpu_s": 1800.0}]}).startswith("* CPU time: 1.00 CPU-h")
    assert "not recorded in this artifact" in cpu_line({"meta": {}, "rows": [{"cpu_s": 1.0}, {}]})
    assert "not recorded in this artifact" in cpu_line({"meta": {}})
    assert "(the re-runs' training + evaluation)" in cpu_line({"meta": {"cpu_seconds": 3600.0,
                                                                        "cpu_scope": "the re-runs' training + evaluation"}})
