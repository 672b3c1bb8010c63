"""Regression head: shapes, masking, learns a goal-conditioned task, and on a bimodal task
predicts the average of the modes (its documented failure mode). Also the head factory.

Seeds: VLA_EBT_TEST_SEED (default 0) moves every random draw; thresholds checked on seeds 0-5.
"""

from __future__ import annotations


import pytest
import torch

from vla_ebt.heads import (
    Context,
    DiffusionHead,
    EBTConfig,
    EBTHead,
    RegressionConfig,
    RegressionHead,
    build_head,
    head_config_for,
)

from tests.baseline_tasks import B, D, H, MODE, SEED, TRUNK, W, bimodal_batch, goal_batch, train  # noqa: F401


def make_head(**kw) -> RegressionHead:
    return RegressionHead(RegressionConfig(trunk=TRUNK, horizon=H, action_dim=D, **kw))


def test_shapes_steps_nfe():
    head = make_head()
    ctx = Context(torch.randn(5, 6, W), torch.ones(5, 6, dtype=torch.bool))
    loss, info = head.compute_loss(ctx, torch.randn(5, H, D))
    assert loss.dim() == 0 and loss.requires_grad and isinstance(info["loss"], float)
    pred = head.predict(ctx, init=torch.zeros(5, H, D))  # no warm start: init is unused
    assert pred.actions.shape == (5, H, D) and not pred.actions.requires_grad
    assert pred.nfe == 1 and pred.steps.tolist() == [1] * 5
    torch.testing.assert_close(pred.actions, head.predict(ctx).actions)  # deterministic
    with pytest.raises(ValueError, match=r"head 'regression' has no inference knob\(s\) \['num_steps'\]; known: \[\]"):
        head.predict(ctx, num_steps=4)


@pytest.mark.parametrize("loss_kind", ["mse", "l1"])
@pytest.mark.parametrize("mask_dims", [2, 3])
def test_masked_entries_do_not_affect_loss(loss_kind, mask_dims):
    head = make_head(loss=loss_kind)
    ctx = Context(torch.randn(4, 5, W), torch.ones(4, 5, dtype=torch.bool))
    target = torch.rand(4, H, D) * 2 - 1
    mask = torch.rand((4, H) if mask_dims == 2 else (4, H, D)) > 0.4
    full = mask if mask_dims == 3 else mask[..., None].expand(4, H, D)
    altered = torch.where(full, target, torch.randn(4, H, D) * 5)
    l1, _ = head.compute_loss(ctx, target, mask)
    l2, _ = head.compute_loss(ctx, altered, mask)
    assert torch.equal(l1, l2)
    assert not torch.equal(l1, head.compute_loss(ctx, altered, None)[0])


def test_bad_loss_rejected():
    with pytest.raises(ValueError):
        make_head(loss="huber")


@pytest.mark.slow
@pytest.mark.parametrize("loss_kind", ["mse", "l1"])
def test_learns_goal_conditioned_chunks(loss_kind):
    torch.manual_seed(SEED)
    proj = torch.randn(2, W)
    head = make_head(loss=loss_kind)
    losses = train(head, lambda b: goal_batch(proj, b), steps=200)
    assert sum(losses[-20:]) < 0.2 * sum(losses[:20]), (losses[:3], losses[-3:])
    ctx, target = goal_batch(proj, 256)
    mean_err = (target - target.mean(0, keepdim=True)).pow(2).mean().item()
    err = (head.predict(ctx).actions - target).pow(2).mean().item()
    print(f"regression {loss_kind}: err {err:.5f} mean {mean_err:.4f}")
    # Measured on seeds 0-5: MSE-trained 0.0007-0.0022, L1-trained 0.00006-0.00017 vs
    # mean-prediction 0.083-0.087.
    assert err < 0.05 * mean_err, (err, mean_err)


@pytest.mark.slow
def test_bimodal_predicts_the_average():
    torch.manual_seed(SEED + 1000)
    token = torch.randn(1, 1, W)
    head = make_head()
    train(head, lambda b: bimodal_batch(token, b), steps=200)
    ctx = Context(token.expand(8, -1, -1), torch.ones(8, 1, dtype=torch.bool))
    actions = head.predict(ctx).actions
    coef = (actions * MODE).flatten(1).sum(1) / MODE.pow(2).sum()  # +1 / -1 at the two modes
    print(f"regression bimodal: coef {coef[0].item():+.3f} max|a| {actions.abs().max().item():.3f}")
    # The MSE-optimal point prediction is the mean of the modes, i.e. 0: neither mode is produced.
    # Measured on seeds 0-5: |coef| <= 0.031, max|a| <= 0.037 (modes reach 0.6).
    assert coef.abs().max() < 0.25, coef
    assert actions.abs().max() < 0.25 * MODE.abs().max() + 0.05


def test_factory_builds_every_kind():
    for kind, cls in [("ebt", EBTHead), ("diffusion", DiffusionHead), ("regression", RegressionHead)]:
        cfg = head_config_for(kind, TRUNK, H, D)
        assert cfg.trunk is TRUNK and cfg.horizon == H and cfg.action_dim == D
        head = build_head(kind, cfg)
        assert isinstance(head, cls) and (head.horizon, head.action_dim) == (H, D)
    assert head_config_for("regression", TRUNK, H, D, loss="l1").loss == "l1"
    with pytest.raises(TypeError):
        build_head("diffusion", EBTConfig(trunk=TRUNK, horizon=H, action_dim=D))
    with pytest.raises(ValueError, match=r"unknown head 'foo'; known heads: \['diffusion', 'ebt', 'flow', 'regression'"):
        head_config_for("foo", TRUNK, H, D)
