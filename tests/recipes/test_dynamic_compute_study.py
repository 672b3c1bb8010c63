"""The dynamic-compute study on the comparison protocol (recipes/studies/dynamic_compute.py): settings
chosen from each head's declared capabilities, the ``--steps`` spec, pooling with forward-pass
equivalents, and the study end to end on reach2d with two tiny training seeds of EBT plus a regression
head (pooled, warm start off, resumed from the cell cache)."""

from __future__ import annotations

import json

import pytest

from recipes.studies import dynamic_compute as dc
from recipes.studies import protocol_policies as pp
from tests.policy_fixtures import make_policy, save_seed_policy


def test_steps_spec_and_its_errors_name_the_flag(tmp_path):
    assert dc.parse_steps(None) == (None, {})
    assert dc.parse_steps(["4", "1", "2"]) == ([1, 2, 4], {})
    assert dc.parse_steps(["ebt=1,2,4", "flow=10,2,5"]) == (None, {"ebt": [1, 2, 4], "flow": [2, 5, 10]})
    for bad in (["ebt=1,x"], ["0"], ["ebt="], ["=3"], ["ebt=1", "ebt=2"], ["two"]):
        with pytest.raises(ValueError, match="--steps"):
            dc.parse_steps(bad)
    # through the command line, before any policy is loaded
    with pytest.raises(ValueError, match=r"--steps: 'ebt=1,x'"):
        dc.main(["--policies", f"ebt={tmp_path / 'missing'}", "--steps", "ebt=1,x", "--out", str(tmp_path / "o")])
    with pytest.raises(ValueError, match=r"--steps for unknown label"):
        dc.main(["--policies", f"ebt={tmp_path / 'missing'}", "--steps", "flow=1,2", "--out", str(tmp_path / "o")])
    with pytest.raises(ValueError, match="--budgets-ms"):
        dc.main(["--policies", f"ebt={tmp_path / 'missing'}", "--budgets-ms", "-5", "--out", str(tmp_path / "o")])
    assert dc.resolve_policy_arguments is pp.resolve_policy_arguments  # the shared command line
    a = dc.build_parser().parse_args(["--policies", "ebt=x,y", "--steps", "ebt=1,2", "--out", "o"])
    assert pp.resolve_policy_arguments(a).policies == {"ebt": ["x", "y"]} and a.steps == ["ebt=1,2"]


def test_settings_come_from_declared_capabilities():
    ebt, flow, diff, reg = (make_policy(h) for h in ("ebt", "flow", "diffusion", "regression"))
    names = lambda ss: [s.name for s in ss]  # noqa: E731
    # EBT: num_steps and latency_budget_ms knobs, reports energy -> ladder 1 2 4 8 and budgets capped at 8 steps
    ss = dc.plan_settings(ebt, budgets_ms=[50, 10])
    assert names(ss) == ["steps=1", "steps=2", "steps=4", "steps=8", "budget=10ms", "budget=50ms"]
    assert dict(ss[-1].overrides) == {"num_steps": 8} and ss[-1].budget_ms == 50.0
    assert dict(dc.plan_settings(ebt, steps=[3], budgets_ms=[5], budget_steps=2)[-1].overrides) == {"num_steps": 2}
    # flow: a step knob, no budget knob -> ladder 1 2 5 10 20 on its flow-10 preset, no budget rows
    assert names(dc.plan_settings(flow)) == ["steps=1", "steps=2", "steps=5", "steps=10", "steps=20"]
    # diffusion: the preset with the fewest steps (ddim-10) is the sweep's base: DDIM at every step count
    ss = dc.plan_settings(diff, steps=[2, 5])
    assert [dict(s.overrides) for s in ss] == [{"sampler": "ddim", "num_steps": 2}, {"sampler": "ddim", "num_steps": 5}]
    assert ss[0].preset == "ddim-10" and dc.plan_settings(diff, preset="ddpm-100", steps=[2])[0].overrides == \
        (("sampler", "ddpm"), ("num_steps", 2))
    # regression: no step or budget knob -> its one reference row, whatever the ladders
    ss = dc.plan_settings(reg, steps=[1, 2], budgets_ms=[10])
    assert names(ss) == ["preset=regression"] and ss[0].kind == "reference" and ss[0].overrides == ()


def test_pooling_scales_network_evaluations_by_eval_cost():
    def eps(nfe, ok):
        return [{"task": "a", "eval_seed": 0, "index": i, "env_seed": i, "success": o, "error": None, "chunks": 2,
                 "chunk_ms": 10.0 * n, "nfe": float(n), "steps": float(n), "over_budget": None}
                for i, (n, o) in enumerate(zip(nfe, ok))]

    row = dc.pool_setting([eps([4, 4], [1, 0]), eps([4, 4], [1, 1])], ["a"], eval_cost=2.0, n_boot=200)
    assert row["success"] == pytest.approx(0.75) and row["seeds"] == 2 and row["episodes"] == 4
    assert row["nfe"] == 4.0 and row["forward_equiv"] == 8.0 and row["forward_equiv_lo"] == 8.0
    assert row["chunk_ms"] == 40.0 and row["steps_used"] == 4.0 and row["over_budget"] is None
    assert row["ci_low"] <= 0.75 <= row["ci_high"] and row["chunks"] == 2.0


def _seed_policies(tmp_path, head, n):
    return [save_seed_policy(tmp_path / "pol" / head / f"seed{s}", head, s) for s in range(n)]


def test_study_pools_seeds_sweeps_steps_and_budgets_and_resumes(tmp_path, monkeypatch):
    from recipes.studies.common import load_policy

    pols = {"ebt": _seed_policies(tmp_path, "ebt", 2), "reg": _seed_policies(tmp_path, "regression", 1)}
    inits = []

    def load(d):
        policy = load_policy(d)
        assert policy.cfg.execution.warm_start  # the fixture's config has it on; the study turns it off
        policy.head.register_predict_hook(lambda head, ctx, init, knobs, pred: inits.append(init))
        return policy

    kw = dict(tasks=["reach_red"], episodes=2, eval_seeds=[3], steps=["ebt=1,4", "2"], budgets_ms=[1e-3, 1e5],
              suite_kwargs={"max_episode_steps": 6}, n_boot=100, meta={"argv": ["test"]}, log=None)
    out = tmp_path / "out"
    # one label alone first (as a separate process sharing --out would), then the joint run reuses its cell
    dc.run_dynamic_compute({"reg": pols["reg"]}, "reach2d", out, **{**kw, "steps": ["2"]})  # ebt=... names no label here
    calls = []
    real_run = dc.run_setting
    monkeypatch.setattr(dc, "run_setting", lambda *a, **k: calls.append(a[-1].name) or real_run(*a, **k))
    res = dc.run_dynamic_compute(pols, "reach2d", out, load=load, **kw)
    assert sorted(calls) == sorted(["steps=1", "steps=4", "budget=0.001ms", "budget=100000ms"] * 2)  # ebt only
    assert inits and all(i is None for i in inits)  # warm start off in every cell
    saved = json.loads((out / "dynamic_compute.json").read_text())
    assert saved == res and saved["schema"] == dc.SCHEMA
    meta = saved["meta"]
    assert meta["eval_seeds"] == [3] and meta["warm_start"] is False and meta["git_commit"] and meta["argv"] == ["test"]
    assert [s["train_seed"] for s in saved["policies"]["ebt"]["seeds"]] == [0, 1]
    assert saved["policies"]["ebt"]["eval_cost"] == 2.0 and saved["policies"]["reg"]["notes"]
    by = {(r["label"], r["setting"]): r for r in saved["rows"]}
    assert list(by) == [("ebt", "steps=1"), ("ebt", "steps=4"), ("ebt", "budget=0.001ms"), ("ebt", "budget=100000ms"),
                        ("reg", "preset=regression")]
    for r in saved["rows"]:
        assert r["ci_low"] <= r["success"] <= r["ci_high"] and r["chunk_ms"] > 0 and r["chunks"] == 2.0
        assert r["seeds"] == (2 if r["label"] == "ebt" else 1) and len(r["per_seed"]) == r["seeds"]
        assert r["episodes"] == 2 * r["seeds"] and r["forward_equiv"] == pytest.approx(r["nfe"] * r["eval_cost"])
    # the step sweep sets the network evaluations: EBT 1 / 4 steps = 1 / 4 evaluations = 2 / 8 forward equivalents
    assert (by["ebt", "steps=1"]["nfe"], by["ebt", "steps=4"]["nfe"]) == (1.0, 4.0)
    assert (by["ebt", "steps=1"]["forward_equiv"], by["ebt", "steps=4"]["forward_equiv"]) == (2.0, 8.0)
    assert by["ebt", "steps=4"]["steps_used"] == 4.0 and by["ebt", "steps=1"]["over_budget"] is None
    # budgets: a generous one runs all of --steps' 4 steps in time, a tiny one none, every chunk over it
    big, tiny = by["ebt", "budget=100000ms"], by["ebt", "budget=0.001ms"]
    assert (big["steps_used"], big["over_budget"], big["num_steps"]) == (4.0, 0.0, 4)
    assert (tiny["steps_used"], tiny["over_budget"]) == (0.0, 1.0)
    assert by["reg", "preset=regression"]["nfe"] == 1.0 and by["reg", "preset=regression"]["steps_used"] is not None
    md = (out / "dynamic_compute.md").read_text()
    assert "| ebt | steps=4 |" in md and "| reg | preset=regression |" in md and (out / "dynamic_compute.png").exists()
    # the study's own output renders as the results' summary (the schema the writer and reader share)
    from recipes.compare.study_summaries import render_study

    summary = "\n".join(render_study(out / "dynamic_compute.json", "dynamic_compute.md", ("reach2d", "frozen")))
    assert "| ebt | steps=4 | " in summary and "| reg | preset=regression | " in summary

    monkeypatch.setattr(dc, "run_setting", lambda *a, **k: pytest.fail("a finished cell was run again"))
    again = dc.run_dynamic_compute(pols, "reach2d", out, **kw)
    assert again["rows"] == saved["rows"] and again["policies"] == saved["policies"]
    with pytest.raises(ValueError, match=r"--steps reg=\.\.\.: head 'regression' has no 'num_steps'"):
        dc.run_dynamic_compute(pols, "reach2d", out, **{**kw, "steps": ["reg=1,2"]})
