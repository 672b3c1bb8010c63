"""Warm start of the sampling heads (diffusion DDPM / DDIM; flow in tests/test_flow_head.py): the
previous plan, re-noised to a matching timestep, replaces the pure-noise start and only the
remaining share of the schedule runs; ``warm_noise`` = 1 is the cold sample; and the policy's
``ExecutionConfig.warm_start = False`` turns warm start off for every head that declares it."""

from __future__ import annotations

import pytest
import torch

from vla_ebt.heads import Context, DiffusionConfig, DiffusionHead, available_heads, head_class

from tests.baseline_tasks import D, H, TRUNK, W


def make_diffusion(**kw) -> DiffusionHead:
    return DiffusionHead(DiffusionConfig(trunk=TRUNK, horizon=H, action_dim=D, **kw))


def _ctx(b: int = 3) -> Context:
    return Context(torch.randn(b, 4, W), torch.ones(b, 4, dtype=torch.bool))


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_warm_start_heads_declare_it_and_the_warm_noise_knob():
    assert head_class("diffusion").capabilities.warm_start and head_class("flow").capabilities.warm_start
    for kind in ("diffusion", "flow"):
        assert "warm_noise" in head_class(kind).capabilities.knobs
    assert DiffusionConfig().warm_noise == 1.0  # cold unless asked for: baselines keep their defaults


@pytest.mark.parametrize("sampler,steps", [("ddim", 10), ("ddpm", 100), ("ddim", 4)])
def test_diffusion_warm_noise_one_is_the_cold_sample_and_zero_is_the_init(sampler, steps):
    head = make_diffusion()
    ctx = _ctx()
    init = torch.rand(3, H, D) * 1.6 - 0.8
    cold = head.predict(ctx, sampler=sampler, num_steps=steps, generator=_gen(1))
    for kw in ({}, {"warm_noise": 1.0}):
        same = head.predict(ctx, init=init, sampler=sampler, num_steps=steps, generator=_gen(1), **kw)
        assert torch.equal(same.actions, cold.actions) and same.nfe == steps
    zero = head.predict(ctx, init=init, sampler=sampler, num_steps=steps, warm_noise=0.0)
    assert torch.equal(zero.actions, init) and zero.nfe == 0
    # near zero: one step from init noised to timestep 0 (sqrt(1 - abar_0) = 0.025) stays on the init
    near = head.predict(ctx, init=init, sampler=sampler, num_steps=steps, warm_noise=1e-3, generator=_gen(2))
    err = (near.actions - init).abs()
    assert near.nfe == 1 and err.max() < 0.15 and err.mean() < 0.04, (err.max(), err.mean())
    # and a warm start really depends on init
    half = head.predict(ctx, init=init, sampler=sampler, num_steps=steps, warm_noise=0.5, generator=_gen(1))
    assert half.nfe == max(1, round(steps / 2)) and not torch.allclose(half.actions, cold.actions)


def test_diffusion_warm_start_runs_the_tail_of_the_schedule_from_the_noised_init():
    """DDIM-10, warm_noise 0.3: timesteps 20, 10, 0 from add_noise(init, noise, 20)."""
    head = make_diffusion()
    ctx = _ctx(2)
    init = torch.rand(2, H, D) * 2 - 1
    seen: list[int] = []
    orig = head.ddim_scheduler.step

    def spy(out, t, x, **kw):
        seen.append(int(t))
        return orig(out, t, x, **kw)

    head.ddim_scheduler.step = spy  # type: ignore[method-assign]
    out = head.predict(ctx, init=init, sampler="ddim", warm_noise=0.3, generator=_gen(3))
    del head.ddim_scheduler.step
    assert seen == [20, 10, 0] and out.nfe == 3

    sched = head.ddim_scheduler
    x = sched.add_noise(init, torch.randn(2, H, D, generator=_gen(3)), torch.full((2,), 20))
    sched.set_timesteps(10)
    for t in (20, 10, 0):
        eps = head.denoise(ctx, x, torch.full((2,), t))
        x = sched.step(eps, t, x, eta=0.0, return_dict=False)[0]
    torch.testing.assert_close(out.actions, x)


def test_warm_noise_is_validated():
    head = make_diffusion()
    with pytest.raises(ValueError, match=r"warm_noise must be in \[0, 1\]"):
        head.predict(_ctx(), init=torch.zeros(3, H, D), warm_noise=2.0)
    with pytest.raises(ValueError, match=r"warm_noise must be in \[0, 1\]"):
        make_diffusion(warm_noise=-1.0)
    with pytest.raises(ValueError, match="init must have shape"):
        head.predict(_ctx(), init=torch.zeros(3, H + 1, D), warm_noise=0.5)


@pytest.mark.parametrize("kind", [k for k in available_heads() if head_class(k).capabilities.warm_start])
@pytest.mark.parametrize("execution_warm_start", [True, False])
def test_execution_config_switches_warm_start_for_every_head(kind, execution_warm_start):
    """The policy hands the previous plan to every head declaring warm_start unless
    ExecutionConfig.warm_start is False; with warm_noise 0.5 the flow / diffusion heads then run
    half of their steps."""
    from tests.policy_fixtures import make_batch, make_policy

    options = {"warm_noise": 0.5} if "warm_noise" in head_class(kind).capabilities.knobs else {}
    policy = make_policy(head=kind, head_options=options)
    policy.cfg.execution.warm_start = execution_warm_start
    seen: list[tuple[bool, int]] = []
    handle = policy.head.register_predict_hook(lambda h, c, init, k, pred: seen.append((init is not None, pred.nfe)))
    obs = {k: v for k, v in make_batch(2).items() if k in ("images", "instruction", "state", "embodiment")}
    policy.reset()
    for _ in range(4):  # n_action_steps = 3: chunks planned at steps 0 and 3
        policy.select_action(obs)
    handle.remove()
    assert [got for got, _ in seen] == [False, execution_warm_start]
    if options:
        cold_nfe = seen[0][1]
        assert seen[1][1] == (max(1, round(cold_nfe / 2)) if execution_warm_start else cold_nfe)
