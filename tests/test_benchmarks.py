"""benchmarks/sim_eval.py: env throughput per suite and the EBT-vs-diffusion head-to-head on the
recipe's own suite, tasks and suite arguments, written as JSON."""

from __future__ import annotations

import json

import pytest

from tests.policy_fixtures import make_policy


@pytest.fixture(scope="module")
def ebt_and_diffusion(tmp_path_factory):
    d = tmp_path_factory.mktemp("bench_policies")
    for head in ("ebt", "diffusion"):
        make_policy(head).save_pretrained(d / head)
    return d


def test_sim_eval_benchmark_uses_the_recipe_suite(ebt_and_diffusion, tmp_path):
    from benchmarks import sim_eval
    from recipes.configs import recipes

    out = tmp_path / "bench.json"
    res = sim_eval.main(["--suites", "reach2d", "--env-steps", "30", "--recipe", "reach2d_ebt",
                         "--policies", f"ebt={ebt_and_diffusion / 'ebt'}", f"diffusion={ebt_and_diffusion / 'diffusion'}",
                         "--episodes", "1", "--out", str(out)])
    saved = json.loads(out.read_text())
    assert saved["recipe"] == "reach2d_ebt" and saved["suite"] == "reach2d"
    from eval.sim.suites import make_suite

    want = list(recipes()["reach2d_ebt"].data.tasks) or make_suite("reach2d").task_names()  # empty = all tasks
    assert saved["tasks"] == want and len(want) >= 2
    assert saved["env_steps_per_s"]["reach2d"] > 0
    for k in ("ebt", "diffusion", "diffusion_ddim"):
        assert 0.0 <= saved[f"{k}_success"] <= 1.0 and saved[f"{k}_chunk_ms"] > 0
        assert set(saved["per_task"][k]) == set(saved["tasks"])
    assert (saved["ebt_nfe"], saved["diffusion_nfe"], saved["diffusion_ddim_nfe"]) == (2.0, 100.0, 10.0)  # EBT-2: 2 evaluations
    assert saved["chunk_ms_ratio"] == pytest.approx(saved["ebt_chunk_ms"] / saved["diffusion_chunk_ms"])
    assert res["ebt_success"] == saved["ebt_success"]


def test_sim_eval_benchmark_rejects_unknown_recipe(tmp_path):
    from benchmarks import sim_eval

    with pytest.raises(SystemExit, match="unknown recipe 'nope'"):
        sim_eval.main(["--suites", "--recipe", "nope", "--out", str(tmp_path / "x.json")])
    assert not (tmp_path / "x.json").exists()
