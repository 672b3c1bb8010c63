"""Simulated inference delay in the sim harness (EvalConfig strategy / delay fields): the sync
strategy is today's loop, delays shift which actions the env executes as specified, RTC requests
carry the actions executed during the delay, the wall-clock mode uses the measured latency, the
smoothness metrics reach the report, VLAPolicy.score_chunks, and the realtime study command."""

from __future__ import annotations

import json
import math
import time
from types import SimpleNamespace

import gymnasium as gym
import numpy as np
import pytest
import torch

from eval.sim.rollout import EvalConfig, evaluate, load_report
from eval.sim.adapters import CallablePolicy
from eval.sim.suites import make_suite
from tests.policy_fixtures import make_batch, make_policy
from vla_ebt_client import ActionChunkBroker, action_smoothness

H, N = 6, 3


class FakeChunkPolicy:
    """A chunk policy with the policy contract of the rtc branch: chunk k has row i = 100 k + i in
    both action dims, a request's ``prefix`` comes back exactly; ``score_chunks`` prefers the
    candidate with the lower first action (so the energy gate keeps the old plan);
    ``sleep_s``: inference time."""

    def __init__(self, inpainting: bool = True, energy: bool = True, sleep_s: float = 0.0) -> None:
        self.cfg = SimpleNamespace(horizon=H, obs_steps=1, head="fake",
                                   execution=SimpleNamespace(mode="receding", n_action_steps=N, ensemble_decay=0.01,
                                                             warm_start=False))
        self.head = SimpleNamespace(capabilities=SimpleNamespace(inpainting=inpainting, reports_energy=energy,
                                                                 warm_start=False))
        self.device = torch.device("cpu")
        self.sleep_s = sleep_s
        self.requests: list[dict] = []
        self.last_output = None
        self.reset()

    def reset(self) -> None:
        self._broker = ActionChunkBroker(lambda o: self._out(self.predict_chunk(o)), n_action_steps=N, horizon=H)

    def _out(self, out):
        self.last_output = out
        return out.actions

    def select_action(self, obs):
        return self._broker.act(obs)

    def predict_chunk(self, obs, warm_start=None, prefix=None, prefix_weights=None, soft_target=None,
                      latency_budget_ms=None):
        t0 = time.perf_counter()
        if self.sleep_s:
            time.sleep(self.sleep_s)
        k = len(self.requests)
        self.requests.append({"prefix": prefix, "prefix_weights": prefix_weights, "soft_target": soft_target})
        a = (100.0 * k + torch.arange(H, dtype=torch.float32))[None, :, None].repeat(1, 1, 2)
        if prefix is not None:
            a[:, : prefix.shape[1]] = prefix
        return SimpleNamespace(actions=a, normalized=a, energy=torch.tensor([-float(k)]), steps=torch.ones(1),
                               latency_ms=(time.perf_counter() - t0) * 1e3, nfe=1)

    def score_chunks(self, obs, chunks):
        return chunks[:, :, 0, 0].clone()


class Recording(gym.Wrapper):
    def __init__(self, env, log):
        super().__init__(env)
        self.log = log

    def step(self, action):
        self.log.append(float(np.asarray(action).reshape(-1)[0]))
        return self.env.step(action)


class RecordingSuite:
    """reach2d whose envs record the first action dim of every step (per episode in ``actions``)."""

    def __init__(self, steps: int = 12) -> None:
        self.inner = make_suite("reach2d", max_episode_steps=steps)
        self.actions: list[list[float]] = []

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def make_env(self, task, seed=None, split="train"):
        self.actions.append([])
        return Recording(self.inner.make_env(task, seed=seed, split=split), self.actions[-1])


def run_fake(strategy: str, d: int = 0, steps: int = 12, policy=None, **cfg):
    suite = RecordingSuite(steps)
    policy = policy or FakeChunkPolicy()
    rep = evaluate(policy, suite, EvalConfig(tasks=["reach_red"], episodes_per_task=1, seed=0, strategy=strategy,
                                             delay_steps=d, **cfg))
    assert rep.episodes[0].error is None, rep.episodes[0].error
    return suite.actions[0], rep.episodes[0], policy


# ------------------------------------------------------------------------------------------------
# which actions the env executes


def test_delay_shifts_which_actions_the_env_executes():
    acts, ep, _ = run_fake("sync", 0)
    assert acts == [0, 1, 2, 100, 101, 102, 200, 201, 202, 300, 301, 302]  # 3 actions of each chunk
    assert ep.stalls == 0 and ep.switches == 3 and ep.num_chunks == 4
    acts_d, ep_d, _ = run_fake("sync", 4)  # sync waits: same actions, the waiting is counted
    assert acts_d == acts and ep_d.stalls == 3 * 4 and ep_d.starved == 0
    assert run_fake("naive_async", 0)[0] == acts  # no delay: async = today's receding horizon
    acts, ep, _ = run_fake("naive_async", 2)  # chunk sent at step s executes from row 2 at step s + 2
    assert acts == [0, 1, 2, 3, 4, 102, 103, 104, 202, 203, 204, 302]
    assert ep.stalls == ep.starved == 0 and ep.switches == 3
    acts, ep, _ = run_fake("naive_async", 4)  # the old plan runs out: hold the last action
    assert acts == [0, 1, 2, 3, 4, 5, 5, 104, 105, 105, 105, 204] and ep.starved == 3
    acts, ep, _ = run_fake("naive_async", 4, on_starve="block")  # ... or wait (the env waits too)
    assert acts == [0, 1, 2, 3, 4, 5, 103, 104, 105, 202, 203, 204] and ep.stalls == 3 and ep.starved == 0
    # the smoothness metrics are those of the executed actions at the switches
    sm = action_smoothness(np.array(acts)[:, None].repeat(2, 1), [6, 9])
    assert ep.max_switch_jump == pytest.approx(sm["max_switch_jump"])
    assert ep.mean_sq_second_diff == pytest.approx(sm["mean_sq_second_diff"])


def test_rtc_in_the_sim_sends_the_actions_executed_during_the_delay():
    acts, ep, pol = run_fake("rtc", 2, steps=14)
    reqs = pol.requests
    assert reqs[0]["prefix"] is None and len(reqs) >= 3
    starts = [3, 6, 9, 12]  # a request every 3 steps, when 3 planned actions remain
    for s, r in zip(starts, reqs[1:]):
        assert isinstance(r["prefix"], torch.Tensor) and r["prefix"].shape == (1, 2, 2)
        np.testing.assert_array_equal(r["prefix"][0, :, 0].numpy(), acts[s:s + 2])
        assert r["prefix_weights"].shape == (H,) and r["soft_target"].shape == (1, H, 2)
    assert ep.switches == 3 and ep.starved == 0  # the chunks arriving at steps 5, 8, 11


def test_energy_gate_in_the_sim_counts_rejections():
    _, ep, _ = run_fake("energy_gate", 1)
    assert ep.gate_rejections > 0  # the fake energy prefers the old plan (lower values)
    with pytest.raises(ValueError, match="energy"):
        run_fake("energy_gate", 1, policy=FakeChunkPolicy(energy=False))
    with pytest.raises(ValueError, match="inpaint"):
        run_fake("rtc", 1, policy=FakeChunkPolicy(inpainting=False))
    with pytest.raises(ValueError, match="chunk policy"):
        evaluate(CallablePolicy(lambda o: np.zeros(2)), "reach2d",
                 EvalConfig(tasks=["reach_red"], episodes_per_task=1, strategy="naive_async"))


def test_wall_clock_mode_uses_the_measured_latency():
    # 0.25 s per chunk at 10 Hz: each chunk arrives ceil(2.5) = 3 control steps after it was sent
    acts, ep, _ = run_fake("naive_async", 0, steps=9, policy=FakeChunkPolicy(sleep_s=0.25), delay_mode="wall_clock",
                           control_hz=10.0)
    assert acts == [0, 1, 2, 3, 4, 5, 103, 104, 105]  # = naive_async at d = 3
    assert ep.starved == 0 and all(x >= 250 for x in ep.chunk_latency_ms)
    _, ep, _ = run_fake("sync", 0, steps=9, policy=FakeChunkPolicy(sleep_s=0.25), delay_mode="wall_clock",
                        control_hz=10.0)
    assert ep.stalls == 2 * 3


def test_eval_config_checks_the_execution_fields():
    for bad in ({"strategy": "fast"}, {"delay_steps": -1}, {"delay_mode": "real"}, {"control_hz": 0},
                {"on_starve": "skip"}, {"request_remaining": -2}):
        with pytest.raises(ValueError):
            EvalConfig(**bad)
    assert EvalConfig(strategy="rtc", delay_steps=2).execution()["delay_steps"] == 2


# ------------------------------------------------------------------------------------------------
# a real policy


@pytest.fixture(scope="module")
def ebt():
    return make_policy("ebt").eval()


def _same(a, b):
    for x, y in zip(a.episodes, b.episodes):
        assert (x.success, x.length, x.energy, x.steps, x.num_chunks) == (y.success, y.length, y.energy, y.steps,
                                                                           y.num_chunks)
        for k in ("max_switch_jump", "mean_sq_second_diff"):
            u, v = getattr(x, k), getattr(y, k)
            assert (math.isnan(u) and math.isnan(v)) or u == v


def test_sync_is_todays_loop_and_async_without_delay_matches_it(ebt, tmp_path):
    suite = make_suite("reach2d", max_episode_steps=10)
    base = dict(tasks=["reach_red", "reach_blue"], episodes_per_task=1, seed=3)
    today = evaluate(ebt, suite, EvalConfig(**base))
    sync = evaluate(ebt, suite, EvalConfig(**base, strategy="sync", delay_steps=0))
    _same(today, sync)
    assert [e.stalls for e in sync.episodes] == [0, 0]
    # the async broker around predict_chunk (warm starts included) reproduces it at delay 0
    _same(today, evaluate(ebt, suite, EvalConfig(**base, strategy="naive_async", delay_steps=0)))
    delayed = evaluate(ebt, suite, EvalConfig(**base, strategy="sync", delay_steps=3))
    _same(today, delayed)
    assert [e.stalls for e in delayed.episodes] == [3 * e.switches for e in delayed.episodes]
    # the execution settings and metrics reach the report and survive JSON
    gate = evaluate(ebt, suite, EvalConfig(**base, strategy="energy_gate", delay_steps=2))
    assert gate.execution["strategy"] == "energy_gate" and all(e.error is None for e in gate.episodes)
    back = load_report(gate.to_json(tmp_path / "r.json"))
    assert back.execution == gate.execution and back.episodes[0].switches == gate.episodes[0].switches
    assert back.overall.mean_max_switch_jump == pytest.approx(gate.overall.mean_max_switch_jump)
    md = gate.to_markdown()
    assert "Chunk execution: `energy_gate` · delay 2 steps" in md and "max switch jump" in md


def test_score_chunks_is_the_energy_of_the_normalized_chunk(ebt):
    b = make_batch(2)
    obs = {k: b[k] for k in ("images", "instruction", "state")}
    obs["embodiment"] = torch.zeros(2, dtype=torch.long)
    g = torch.Generator().manual_seed(0)
    norm = torch.rand(2, 3, ebt.cfg.horizon, ebt.cfg.action_dim, generator=g) * 1.6 - 0.8  # inside the box
    emb = obs["embodiment"].repeat_interleave(3)
    raw = ebt.normalizer.unnormalize_action(norm.flatten(0, 1), emb).view_as(norm)
    e = ebt.score_chunks(obs, raw)
    with torch.no_grad():
        want = ebt.head.energy(ebt.encode(obs).repeat_interleave(3), norm.flatten(0, 1)).view(2, 3)
    assert e.shape == (2, 3)
    torch.testing.assert_close(e, want, rtol=1e-4, atol=1e-5)
    out = ebt.predict_chunk(obs)  # one chunk per sample: (B, H, D) -> (B, 1)
    assert ebt.score_chunks(obs, out.actions).shape == (2, 1)
    with pytest.raises(ValueError, match="chunks must be"):
        ebt.score_chunks(obs, raw[:, :, :2])
    with pytest.raises(ValueError, match="energy"):
        make_policy("regression").score_chunks(obs, raw)


# ------------------------------------------------------------------------------------------------
# the study command


@pytest.mark.slow
def test_realtime_study_end_to_end_and_resumes(tmp_path, monkeypatch):
    """The single-policy usage (one folder per label = one training seed), two heads."""
    from recipes.studies import realtime

    pols = {}
    for head in ("ebt", "regression"):
        make_policy(head).save_pretrained(tmp_path / head)
        pols[head] = str(tmp_path / head)
    args = ["--policies", f"ebt={pols['ebt']}", f"reg={pols['regression']}", "--suite", "reach2d",
            "--suite-arg", "max_episode_steps=6", "--tasks", "reach_red", "--episodes", "1", "--delays", "0", "2",
            "--strategies", "sync", "naive_async", "temporal_ensemble", "rtc", "energy_gate", "--seed", "30000",
            "--n-boot", "50", "--out", str(tmp_path / "out")]
    res = realtime.main(args)
    saved = json.loads((tmp_path / "out" / "realtime.json").read_text())
    assert set(saved) == {"schema", "meta", "policies", "rows", "skipped"}
    assert {"suite", "tasks", "eval_seeds", "episodes_per_task", "delays", "strategies", "on_starve", "git_commit",
            "warm_start"} <= set(saved["meta"])
    assert saved["meta"]["eval_seeds"] == [30000] and saved["meta"]["warm_start"] is False
    cells = {(r["label"], r["strategy"], r["delay"]) for r in saved["rows"]}
    assert cells == {(p, s, d) for p, ss in (("ebt", ("naive_async", "temporal_ensemble", "rtc", "energy_gate")),
                                               ("reg", ("naive_async", "temporal_ensemble")))
                     for s in ss for d in (0, 2)} | {("ebt", "sync", 0), ("reg", "sync", 0)}
    for r in saved["rows"]:
        assert {"head", "success", "ci_low", "ci_high", "per_seed", "episodes", "max_switch_jump",
                "mean_sq_second_diff", "mean_sq_second_diff_lo", "mean_sq_second_diff_hi", "stalls", "starved",
                "switches", "gate_rejections", "chunk_ms", "per_task"} <= set(r)
        assert r["episodes"] == 1 and r["seeds"] == 1 and r["first_error"] is None
    # EBT inpaints (rtc) and reports energy (energy_gate); the regression head does neither
    assert {(s["label"], s["strategy"]) for s in saved["skipped"]} == {("reg", "rtc"), ("reg", "energy_gate")}
    assert all(s["reason"] for s in saved["skipped"])
    md = (tmp_path / "out" / "realtime.md").read_text()
    assert "Skipped" in md and "energy_gate" in md and (tmp_path / "out" / "realtime.png").exists()
    # a rerun reuses every finished cell
    monkeypatch.setattr(realtime, "run_cell", lambda *a, **k: pytest.fail("a finished cell was run again"))
    again = realtime.main(args)
    assert again["rows"] == saved["rows"] == json.loads(json.dumps(res["rows"]))


@pytest.mark.slow
def test_async_strategies_give_the_same_episodes_with_env_workers(ebt):
    base = dict(tasks=["reach_red", "reach_blue"], episodes_per_task=2, seed=0, strategy="energy_gate", delay_steps=2,
                suite_kwargs={"max_episode_steps": 10})
    serial = evaluate(ebt, "reach2d", EvalConfig(**base))
    parallel = evaluate(ebt, "reach2d", EvalConfig(**base, num_workers=2))
    assert parallel.num_workers == 2
    _same(serial, parallel)
    assert [e.gate_rejections for e in serial.episodes] == [e.gate_rejections for e in parallel.episodes]


@pytest.mark.slow
def test_sim_run_command_takes_the_strategy_and_delay(tmp_path, capsys):
    from eval.sim.run import main
    from tests.eval.sim.test_sim_run import SUITE_ARGS, _tiny_policy

    pdir = _tiny_policy().save_pretrained(tmp_path / "policy")
    d = main(["--policy", str(pdir), "--suite", "reach2d", "--tasks", "reach_red", "--episodes", "1", *SUITE_ARGS,
              "--strategy", "naive_async", "--delay", "2", "--out", str(tmp_path / "eval"), "--quiet"])
    assert d["execution"]["strategy"] == "naive_async" and d["execution"]["delay_steps"] == 2
    assert "max_switch_jump" in d["episodes"][0] and d["episodes"][0]["error"] is None
    with pytest.raises(SystemExit) as exc:
        main(["--policy", "expert", "--suite", "reach2d", "--strategy", "rtc", "--out", str(tmp_path / "x")])
    assert exc.value.code == 2 and "chunk policy" in capsys.readouterr().err


def test_a_policy_with_its_broker_deep_copies(ebt):
    """EMA training deep-copies the policy (its broker and timing included)."""
    import copy

    twin = copy.deepcopy(ebt)
    assert twin._broker is not ebt._broker and twin._broker.timing is not ebt._broker.timing
