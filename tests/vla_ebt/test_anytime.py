"""Anytime EBT inference (docs/realtime.md): a per-chunk latency budget stops the minimizer before
its next evaluation would overrun and returns the lowest-energy chunk evaluated, with the steps it
used and that energy; the policy counts encoding against the budget; the server takes the budget per
request and reports steps and energy. No timed assertion compares against a fixed duration: elapsed
time is bounded by the budget plus the longest evaluation measured in the same call."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from vla_ebt.heads import Context, TrunkConfig, build_head, head_class, head_config_for
from vla_ebt.heads.energy_minimizer import minimize_energy

TRUNK = TrunkConfig(width=32, depth=1, num_heads=2)
H, D = 8, 3


def _slow_energy(sleep_s: float):
    c = torch.linspace(-1, 1, H * D).view(1, H, D)

    def fn(a: torch.Tensor) -> torch.Tensor:
        time.sleep(sleep_s)
        return 0.5 * (a - c).pow(2).flatten(1).sum(1)
    return fn


def _ctx(b: int = 3) -> Context:
    return Context(torch.randn(b, 5, 32), torch.ones(b, 5, dtype=torch.bool))


def test_only_ebt_declares_a_latency_budget() -> None:
    assert "latency_budget_ms" in head_class("ebt").capabilities.knobs
    for kind in ("flow", "diffusion", "regression"):
        assert "latency_budget_ms" not in head_class(kind).capabilities.knobs


@pytest.mark.parametrize("final_eval", [False, True])
def test_budget_stops_the_chain_within_one_evaluation(final_eval: bool) -> None:
    """A slow fake energy (>= 20 ms per evaluation), 50 steps asked, 90 ms allowed: the chain stops
    early and the time spent is at most the budget plus the longest evaluation of this call."""
    budget_ms = 90.0
    t0 = time.perf_counter()
    res = minimize_energy(_slow_energy(0.02), torch.zeros(2, H, D), num_steps=50, alpha=torch.tensor(0.3),
                          momentum=0.0, energy_clamp=0.0, deadline=t0 + budget_ms / 1e3, final_eval=final_eval,
                          select_best=final_eval)
    elapsed = (time.perf_counter() - t0) * 1e3
    assert res.stopped_by_deadline and int(res.steps.max()) < 50 and res.nfe == len(res.eval_ms) >= 1
    assert elapsed <= budget_ms + max(res.eval_ms) + 5.0, (elapsed, res.eval_ms)  # + 5 ms of bookkeeping
    assert res.elapsed_ms <= elapsed
    if final_eval:  # the returned chunk is the lowest-energy one evaluated
        x, e, _, idx = res.best
        assert torch.equal(e, res.energies.min(0).values) and (idx < res.energies.shape[0]).all()


def test_a_zero_budget_runs_one_evaluation_and_returns_the_start() -> None:
    head = build_head("ebt", head_config_for("ebt", TRUNK, H, D)).eval()
    init = torch.rand(3, H, D)
    pred = head.predict(_ctx(), init=init, latency_budget_ms=0.0, num_steps=8)
    assert pred.steps.tolist() == [0, 0, 0] and pred.nfe == 1
    assert torch.equal(pred.actions, init) and pred.energy.shape == (3,)


def test_tiny_budget_uses_fewer_steps_and_reports_the_lowest_energy() -> None:
    head = build_head("ebt", head_config_for("ebt", TRUNK, H, D)).eval()
    ctx = _ctx()
    full = head.predict(ctx, num_steps=40)
    assert full.steps.tolist() == [40] * 3
    pred = head.predict(ctx, num_steps=40, latency_budget_ms=1.0)
    assert int(pred.steps.max()) < 40 and pred.nfe == pred.energy_trace.shape[0] < 41
    # lowest energy among the chunks it evaluated (the trace holds every evaluation)
    torch.testing.assert_close(pred.energy, pred.energy_trace.min(0).values)
    # a generous budget runs every step (and the final evaluation of the output)
    gen = head.predict(ctx, num_steps=6, latency_budget_ms=60_000.0)
    assert gen.steps.tolist() == [6] * 3 and gen.nfe == 7


def test_the_policy_counts_encoding_against_the_budget() -> None:
    from tests.policy_fixtures import make_batch, make_policy

    policy = make_policy("ebt").eval()
    b = make_batch(2)
    obs = {k: b[k] for k in ("images", "instruction", "state", "embodiment")}
    seen = []
    policy.head.register_predict_hook(lambda h, c, i, knobs, p: seen.append(knobs["latency_budget_ms"]))
    out = policy.predict_chunk(obs, latency_budget_ms=1e-3, num_steps=30)
    assert out.steps.max() < 30 and seen == [0.0]  # encoding already used the budget up
    out = policy.predict_chunk(obs, latency_budget_ms=60_000.0, num_steps=3)
    assert out.steps.tolist() == [3, 3] and 0 < seen[-1] < 60_000.0
    for bad in (-1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="latency_budget_ms"):
            policy.predict_chunk(obs, latency_budget_ms=bad)


def test_server_takes_the_budget_per_request_and_reports_steps_and_energy() -> None:
    from eval.real.serve import PolicyServer
    from tests.policy_fixtures import S, make_policy
    from vla_ebt_client import PolicyClient, ServerError

    policy = make_policy("ebt").eval()
    g = np.random.default_rng(0)
    obs = {"images": g.integers(0, 256, (1, 1, 3, 64, 64), dtype=np.uint8), "instruction": ["open the drawer"],
           "state": g.normal(size=(1, 1, S)).astype(np.float32), "embodiment": np.zeros(1, np.int64)}
    with policy.head.inference_overrides(num_steps=30), PolicyServer(policy, port=0) as srv, PolicyClient(srv.url) as c:
        assert c.metadata["latency_budget"] is True
        r = c.infer({**obs, "latency_budget_ms": 0.001})
        assert r["latency_budget_ms"] == 0.001 and int(r["steps"].max()) < 30
        assert r["energy"].shape == (1,) and np.isfinite(r["energy"]).all()
        full = c.infer(obs)
        assert full["steps"].tolist() == [30] and full["latency_budget_ms"] is None
        for bad in (0, -5, "fast", True, float("nan")):
            with pytest.raises(ServerError, match="latency_budget_ms"):
                c.infer({**obs, "latency_budget_ms": bad})


def test_server_refuses_a_budget_for_heads_without_one() -> None:
    from eval.real.serve_request import RequestError, check_options

    assert check_options({}, {"num_steps": ""}) == {}
    assert check_options({"latency_budget_ms": np.float32(12.5)}, {"latency_budget_ms": ""}) == {"latency_budget_ms": 12.5}
    with pytest.raises(RequestError, match="no latency budget"):
        check_options({"latency_budget_ms": 10}, head_class("flow").capabilities.knobs)
