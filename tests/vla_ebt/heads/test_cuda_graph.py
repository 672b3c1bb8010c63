"""CUDA-graph replay of a head's chunk (vla_ebt.heads.cuda_graph): refused off the GPU and for knobs
that stop by value or clock; on a GPU the replay equals the eager call and follows a new context."""

import pytest
import torch

from vla_ebt.heads import Context, EBTConfig, EBTHead, FlowConfig, FlowHead, TrunkConfig
from vla_ebt.heads.cuda_graph import GraphedPredict
from vla_ebt.schema import validate_observation

W, H, D, T = 32, 8, 3, 5
CUDA = torch.cuda.is_available()


def _ctx(device: str, seed: int) -> Context:
    g = torch.Generator().manual_seed(seed)
    return Context(torch.randn(1, T, W, generator=g).to(device), torch.ones(1, T, dtype=torch.bool, device=device))


def _ebt(**kw) -> EBTHead:
    return EBTHead(EBTConfig(trunk=TrunkConfig(width=W, depth=2, num_heads=4), horizon=H, action_dim=D, **kw)).eval()


def test_capture_is_refused_on_cpu_and_for_knobs_that_stop_by_value_or_clock():
    head = _ebt()
    with pytest.raises(ValueError, match="needs a CUDA context, got device cpu"):
        GraphedPredict(head, _ctx("cpu", 0))
    if CUDA:
        with pytest.raises(ValueError, match=r"cannot capture knob\(s\) \['min_grad'\]"):
            GraphedPredict(head.cuda(), _ctx("cuda", 0), min_grad=1e-3)


@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
def test_graphed_ebt_minimizer_equals_the_eager_chain_and_follows_a_new_context():
    # init_scale 0: every chain starts at 0, so eager and replayed chunks must agree exactly (up to kernels)
    head = _ebt(init_scale=0.0).cuda()
    graphed = GraphedPredict(head, _ctx("cuda", 0), num_steps=3)
    for seed in (1, 2):
        ctx = _ctx("cuda", seed)
        with torch.no_grad():
            eager = head.predict(ctx, num_steps=3)
        got = graphed(ctx)
        assert got.nfe == eager.nfe == 3
        torch.testing.assert_close(got.actions, eager.actions, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(got.energy, eager.energy, rtol=1e-4, atol=1e-5)
    a1, a2 = graphed(_ctx("cuda", 1)).actions, graphed(_ctx("cuda", 2)).actions
    assert (a1 - a2).abs().max() > 1e-4  # the replay reads the new context, not the captured one
    with pytest.raises(ValueError, match="captured for tokens"):
        graphed(Context(torch.zeros(1, T + 1, W, device="cuda"), torch.ones(1, T + 1, dtype=torch.bool, device="cuda")))


@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
def test_graphed_flow_redraws_its_noise_at_every_replay():
    head = FlowHead(FlowConfig(trunk=TrunkConfig(width=W, depth=2, num_heads=4), horizon=H, action_dim=D)).cuda().eval()
    ctx = _ctx("cuda", 0)
    graphed = GraphedPredict(head, ctx, num_steps=4)
    a, b = graphed(ctx).actions, graphed(ctx).actions
    assert a.shape == (1, H, D) and torch.isfinite(a).all()
    assert (a - b).abs().max() > 1e-4


def _obs(device: str = "cpu") -> dict:
    from tests.policy_fixtures import make_batch

    b = make_batch(2)
    return {k: b[k][:1] for k in ("images", "state", "embodiment")} | {"instruction": b["instruction"][:1]}


def test_policy_capture_is_refused_on_cpu():
    from tests.policy_fixtures import make_policy

    pol = make_policy("ebt", "frozen").eval()
    with pytest.raises(ValueError, match="needs a CUDA context"):
        pol.capture_cuda_graph(_obs(), num_steps=2)
    assert pol._graphed == {}


@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
def test_policy_replays_its_capture_only_for_the_same_knobs_and_drops_it_in_training():
    from tests.policy_fixtures import make_policy

    pol = make_policy("ebt", "frozen").cuda().eval()
    calls = []
    pol.head.register_predict_hook(lambda *a: calls.append(1))
    graphed = pol.capture_cuda_graph(_obs(), num_steps=2)
    n = len(calls)  # the warm-up and capture calls
    with torch.no_grad():
        alone = graphed(pol.encode(validate_observation(_obs(), pol.spec)))  # the head alone, replayed
    assert len(calls) == n and alone.actions.shape == (1, pol.cfg.horizon, pol.cfg.action_dim)
    out = pol.predict_chunk(_obs(), num_steps=2)
    assert len(calls) == n and out.actions.shape == (1, pol.cfg.horizon, pol.cfg.action_dim)
    assert torch.isfinite(out.actions).all() and out.nfe == 2
    pol.predict_chunk(_obs(), num_steps=3)  # other knobs: eager
    assert len(calls) == n + 1
    pol.train()
    assert pol._graphed == {}
