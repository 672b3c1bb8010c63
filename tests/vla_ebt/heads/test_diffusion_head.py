"""Diffusion head: shapes, scheduler isolation, masking, and that it learns a goal-conditioned
task and covers both modes of a bimodal one (width 64, depth 2, horizon 8, action_dim 4).

Seeds: VLA_EBT_TEST_SEED (default 0) moves every random draw; the thresholds were checked on
seeds 0-5. Runtime ~25 s on one CPU thread.
"""

from __future__ import annotations


import pytest
import torch

from vla_ebt.heads import Context, DiffusionConfig, DiffusionHead
from vla_ebt.heads.factory import build_head, head_config_for

from tests.baseline_tasks import B, D, H, MODE, SEED, TRUNK, W, bimodal_batch, goal_batch, train  # noqa: F401


def make_head(**kw) -> DiffusionHead:
    return DiffusionHead(DiffusionConfig(trunk=TRUNK, horizon=H, action_dim=D, **kw))


@pytest.fixture(scope="module")
def goal_task():
    torch.manual_seed(SEED)
    proj = torch.randn(2, W)
    head = make_head()
    losses = train(head, lambda b: goal_batch(proj, b), steps=300)
    return head, proj, losses


@pytest.fixture(scope="module")
def bimodal_task():
    torch.manual_seed(SEED + 1000)
    token = torch.randn(1, 1, W)
    head = make_head()
    train(head, lambda b: bimodal_batch(token, b), steps=300)
    return head, token


def test_shapes_steps_nfe_and_no_grad():
    head = make_head(num_inference_steps=7, ddim_steps=3)
    ctx = Context(torch.randn(5, 6, W), torch.rand(5, 6) > 0.3)
    ctx.mask[:, 0] = True
    loss, info = head.compute_loss(ctx, torch.randn(5, H, D))
    assert loss.dim() == 0 and loss.requires_grad and isinstance(info["loss"], float)
    for sampler, n in [("ddpm", 7), ("ddim", 3)]:
        pred = head.predict(ctx, sampler=sampler)
        assert pred.actions.shape == (5, H, D) and not pred.actions.requires_grad
        assert pred.nfe == n and pred.steps.tolist() == [n] * 5 and pred.steps.dtype == torch.long
        assert pred.actions.abs().max() <= 1.0 + 1e-5  # x0 clipped; the final step returns it
    assert head.predict(ctx, sampler="ddim", num_steps=5).nfe == 5
    assert head.predict(ctx, init=torch.zeros(5, H, D)).actions.shape == (5, H, D)
    with pytest.raises(ValueError):
        head.predict(ctx, sampler="euler")


def test_defaults_match_diffusion_policy():
    head = make_head()
    ctx = Context(torch.randn(2, 3, W), torch.ones(2, 3, dtype=torch.bool))
    assert head.predict(ctx).nfe == 100  # DDPM, all 100 steps
    assert head.predict(ctx, sampler="ddim").nfe == 10
    cfg = head.ddpm_scheduler.config
    assert cfg.beta_schedule == "squaredcos_cap_v2" and cfg.prediction_type == "epsilon" and cfg.clip_sample


def test_samplers_do_not_share_scheduler_state():
    head = make_head()
    ctx = Context(torch.randn(3, 4, W), torch.ones(3, 4, dtype=torch.bool))
    a = head.predict(ctx, sampler="ddpm", generator=torch.Generator().manual_seed(1)).actions
    head.predict(ctx, sampler="ddim", num_steps=4)
    head.predict(ctx, sampler="ddpm", num_steps=9)
    b = head.predict(ctx, sampler="ddpm", generator=torch.Generator().manual_seed(1)).actions
    torch.testing.assert_close(a, b)
    c = head.predict(ctx, sampler="ddim", generator=torch.Generator().manual_seed(2)).actions
    head.predict(ctx, sampler="ddpm", num_steps=13)
    d = head.predict(ctx, sampler="ddim", generator=torch.Generator().manual_seed(2)).actions
    torch.testing.assert_close(c, d)


@pytest.mark.parametrize("mask_dims", [2, 3])
def test_masked_entries_do_not_affect_loss(mask_dims):
    head = make_head()
    ctx = Context(torch.randn(4, 5, W), torch.ones(4, 5, dtype=torch.bool))
    target = torch.rand(4, H, D) * 2 - 1
    shape = (4, H) if mask_dims == 2 else (4, H, D)
    mask = torch.rand(shape) > 0.4
    full = mask if mask_dims == 3 else mask[..., None].expand(4, H, D)
    altered = torch.where(full, target, torch.randn(4, H, D) * 5)
    torch.manual_seed(7)
    l1, _ = head.compute_loss(ctx, target, mask)
    torch.manual_seed(7)
    l2, _ = head.compute_loss(ctx, altered, mask)
    torch.manual_seed(7)
    l3, _ = head.compute_loss(ctx, target, None)
    assert torch.equal(l1, l2)
    assert not torch.equal(l1, l3)


def test_factory_builds_diffusion():
    cfg = head_config_for("diffusion", TRUNK, H, D, sampler="ddim")
    assert isinstance(cfg, DiffusionConfig) and cfg.sampler == "ddim"
    assert isinstance(build_head("diffusion", cfg), DiffusionHead)


@pytest.mark.slow
def test_loss_falls(goal_task):
    _, _, losses = goal_task
    first, last = sum(losses[:20]) / 20, sum(losses[-20:]) / 20
    assert last < 0.5 * first, (first, last)


@pytest.mark.slow
def test_learns_goal_conditioned_chunks(goal_task):
    head, proj, _ = goal_task
    torch.manual_seed(SEED + 1)
    ctx, target = goal_batch(proj, 256)
    mean_err = (target - target.mean(0, keepdim=True)).pow(2).mean().item()  # ~0.085
    ddpm_err = (head.predict(ctx, sampler="ddpm").actions - target).pow(2).mean().item()
    ddim_err = (head.predict(ctx, sampler="ddim").actions - target).pow(2).mean().item()
    print(f"goal task: ddpm {ddpm_err:.4f} ddim {ddim_err:.4f} mean {mean_err:.4f}")
    # Measured on seeds 0-5: DDPM 0.0002-0.0003, DDIM-10 0.002-0.005 vs mean 0.081-0.092.
    assert ddpm_err < 0.05 * mean_err, (ddpm_err, mean_err)
    assert ddim_err < 0.15 * mean_err, (ddim_err, mean_err)


@pytest.mark.slow
@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
def test_bimodal_samples_cover_both_modes(bimodal_task, sampler):
    head, token = bimodal_task
    ctx = Context(token.expand(200, -1, -1), torch.ones(200, 1, dtype=torch.bool))
    actions = head.predict(ctx, sampler=sampler, generator=torch.Generator().manual_seed(SEED)).actions
    coef = (actions * MODE).flatten(1).sum(1) / MODE.pow(2).sum()  # +1 / -1 at the two modes
    pos, neg = (coef > 0.5).float().mean().item(), (coef < -0.5).float().mean().item()
    print(f"bimodal {sampler}: +mode {pos:.2f} -mode {neg:.2f}")
    # Measured on seeds 0-5: each mode 0.31-0.50 of samples, both modes together 0.72-0.82.
    assert pos >= 0.2 and neg >= 0.2, (pos, neg)
    assert pos + neg >= 0.6, (pos, neg)
