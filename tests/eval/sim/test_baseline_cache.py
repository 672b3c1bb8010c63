"""The random / expert baselines are cached beside the demos: a second evaluation with the same key
steps no env and says "(cached)"; any change of the key (episodes, seed, suite args, policy args,
CACHE_VERSION) evaluates again. The main job's summary carries a timing breakdown."""

from __future__ import annotations

import dataclasses
import json
import re

import pytest

from eval.sim import demo_cache
from eval.sim.demo_cache import BaselineSpec, cached_baseline
from eval.sim.report import load_report
from eval.sim.rollout import EvalConfig, RandomPolicy, evaluate, evaluate_callable
from eval.sim.suites import make_suite
from eval.sim.suites.reach2d import Reach2DSuite


@pytest.fixture
def env_steps(monkeypatch) -> list[int]:
    """Counts env.step calls of every reach2d env made in this process (index 0)."""
    count = [0]
    make_env = Reach2DSuite.make_env

    def counting_make_env(self, *a, **kw):
        env = make_env(self, *a, **kw)
        step = env.step

        def counted(action):
            count[0] += 1
            return step(action)

        env.step = counted
        return env

    monkeypatch.setattr(Reach2DSuite, "make_env", counting_make_env)
    return count


def test_cached_baseline_hits_and_every_key_change_misses(tmp_path, monkeypatch, env_steps) -> None:
    suite = make_suite("reach2d", image_size=32)
    calls: list[BaselineSpec] = []

    def spec_and_fn(**change):
        spec = dataclasses.replace(BaselineSpec("reach2d", "random", ("reach_red", "reach_blue"), 2, seed=5,
                                                suite_kwargs={"image_size": 32}, policy_args={"seed": 5}), **change)

        def fn():
            calls.append(spec)
            return evaluate(RandomPolicy(suite, seed=spec.seed), suite,
                            EvalConfig(tasks=list(spec.tasks), episodes_per_task=spec.episodes_per_task, seed=spec.seed))

        return spec, fn

    first, hit = cached_baseline(*spec_and_fn(), tmp_path, log=None)
    assert not hit and len(calls) == 1 and env_steps[0] > 0
    env_steps[0] = 0
    again, hit = cached_baseline(*spec_and_fn(), tmp_path, log=None)
    assert hit and len(calls) == 1 and env_steps[0] == 0
    assert again.episodes == first.episodes and again.success_rate == first.success_rate
    changes = [{"episodes_per_task": 3}, {"seed": 6}, {"tasks": ("reach_red",)}, {"suite_kwargs": {"image_size": 48}},
               {"policy_args": {"seed": 6}}, {"policy": "expert"}, {"split": "heldout"}]
    for k, change in enumerate(changes):
        _, hit = cached_baseline(*spec_and_fn(**change), tmp_path, log=None)
        assert not hit and len(calls) == 2 + k, change
    monkeypatch.setattr(demo_cache, "CACHE_VERSION", demo_cache.CACHE_VERSION + 1)
    _, hit = cached_baseline(*spec_and_fn(), tmp_path, log=None)
    assert not hit and len(calls) == 2 + len(changes)
    # an unreadable entry is evaluated again and replaced
    monkeypatch.undo()
    entry = next((tmp_path / "baselines").glob(f"reach2d-random-{spec_and_fn()[0].key()}"))
    (entry / "report.json").write_text("{not json")
    _, hit = cached_baseline(*spec_and_fn(), tmp_path, log=None)
    assert not hit and cached_baseline(*spec_and_fn(), tmp_path, log=None)[1]


def test_a_baseline_with_failed_episodes_is_not_cached(tmp_path) -> None:
    """An episode that ended in an error (say, a crashed env worker) is no result of the baseline:
    the report is returned but not kept, so the next run evaluates again."""
    suite = make_suite("reach2d", image_size=32)
    spec = BaselineSpec("reach2d", "broken", ("reach_red",), 2, seed=1)

    def broken(obs):
        raise RuntimeError("boom")

    calls = []

    def fn():
        calls.append(1)
        return evaluate_callable(broken, suite, EvalConfig(tasks=["reach_red"], episodes_per_task=2, seed=1))

    report, hit = cached_baseline(spec, fn, tmp_path, log=None)
    assert not hit and all("boom" in e.error for e in report.episodes)
    assert not cached_baseline(spec, fn, tmp_path, log=None)[1] and len(calls) == 2
    assert not list((tmp_path / "baselines").glob("reach2d-broken-*"))


def _tiny_run_config(tmp_path, **changes):
    from recipes.configs import recipes
    from vla_ebt.heads.trunk import TrunkConfig

    cfg = recipes()["reach2d_ebt"]
    cfg = dataclasses.replace(
        cfg,
        policy=dataclasses.replace(cfg.policy, trunk=TrunkConfig(width=32, depth=1, num_heads=2), horizon=4),
        data=dataclasses.replace(cfg.data, tasks=("reach_red", "reach_blue"), episodes_per_task=2,
                                 demo_cache=str(tmp_path / "cache")),
        optim=dataclasses.replace(cfg.optim, steps=2, batch_size=4, warmup_steps=1, tensorboard=False),
        eval=dataclasses.replace(cfg.eval, episodes_per_task=2),
        run_dir=str(tmp_path / "run"),
    )
    return dataclasses.replace(cfg, **changes)


@pytest.mark.slow
def test_main_job_caches_baselines_and_reports_timing(tmp_path, capsys, env_steps) -> None:
    """Run 1 (env workers) fills the cache; run 2 (in-process, counted) steps envs only for the trained
    policy and prints "(cached)"; run 3 with another evaluation seed evaluates the baselines again."""
    from recipes.finetune import run

    s1 = run(_tiny_run_config(tmp_path, env_workers=2), progress=False)
    assert s1["baselines_cached"] == {"random": False, "expert": False} and s1["env_workers"] == 2
    timing = s1["timing_s"]
    assert {"demos", "policy", "training", "evaluation", "baselines", "total"} <= set(timing)
    parts = sum(v for k, v in timing.items() if k != "total")
    assert all(v >= 0 for v in timing.values()) and 0.5 * timing["total"] <= parts <= timing["total"]
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["timing_s"] == pytest.approx(timing)
    out = capsys.readouterr().out
    assert "[timing] demos" in out and "(cached)" not in out

    env_steps[0] = 0
    s2 = run(_tiny_run_config(tmp_path, env_workers=0), progress=False)
    trained_steps = sum(e["length"] for e in json.loads((tmp_path / "run" / "eval" / "report.json").read_text())["episodes"])
    assert s2["baselines_cached"] == {"random": True, "expert": True}
    assert env_steps[0] == trained_steps  # demos and both baselines came from the caches
    assert s2["success"]["random"] == s1["success"]["random"] and s2["success"]["expert"] == s1["success"]["expert"]
    out = capsys.readouterr().out
    assert "random (cached)" in out and "expert (cached)" in out
    assert re.search(r"\[timing\] .*baselines \d+\.\d s \(cached\)", out)

    env_steps[0] = 0
    cfg3 = _tiny_run_config(tmp_path, env_workers=0)
    s3 = run(dataclasses.replace(cfg3, eval=dataclasses.replace(cfg3.eval, seed=20_000)), progress=False)
    assert s3["baselines_cached"] == {"random": False, "expert": False}
    assert "(cached)" not in capsys.readouterr().out
    lengths = {}
    for entry in (tmp_path / "cache" / "baselines").iterdir():
        if json.loads((entry / "spec.json").read_text())["seed"] == 20_000:
            lengths[entry.name.split("-")[1]] = sum(e["length"] for e in load_report(entry / "report.json").to_dict()["episodes"])
    trained3 = sum(e["length"] for e in json.loads((tmp_path / "run" / "eval" / "report.json").read_text())["episodes"])
    assert sorted(lengths) == ["expert", "random"]
    assert env_steps[0] == trained3 + lengths["random"] + lengths["expert"]
