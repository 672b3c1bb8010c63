"""EBT generative objectives ("eqm", "energy_matching"; vla_ebt/heads/ebt_objectives.py).

Pins (synthetic task of tests/vla_ebt/heads/test_ebt_multimodal.py, width 64, depth 2, batch 64, lr 1e-3), from
recipes.studies.ebt_modes (docs/results/ebt_modes/): EqM trained 1000 steps reaches both demonstrated
modes from random starts of one context with (almost) nothing between them at 4 steps, stays accurate
on a unimodal task, and its final energy ranks "not in a mode" above "in a mode".
"""

import pytest
import torch

from tests.synthetic_tasks import goal_reach_batch, train_head
from vla_ebt.heads import EBTConfig, EBTHead, TrunkConfig
from vla_ebt.heads.ebt_objectives import GENERATIVE_OBJECTIVES, energy_field, eqm_c, field_scale

H, D, W = 8, 4, 64
STARTS, CONTEXTS = 64, 8


def _cfg(**kw) -> EBTConfig:
    return EBTConfig(trunk=TrunkConfig(width=W, depth=2, num_heads=4), horizon=H, action_dim=D, **kw)


def _auroc(pos: torch.Tensor, neg: torch.Tensor) -> float:
    return ((pos[:, None] > neg[None, :]).float() + 0.5 * (pos[:, None] == neg[None, :]).float()).mean().item()


# ------------------------------------------------------------------------------ contract (fast)
def test_unknown_objective_and_eqm_c_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown EBT objective 'flow'.*eqm.*energy_matching"):
        EBTHead(_cfg(objective="flow"))
    with pytest.raises(ValueError, match="eqm_c"):
        EBTHead(_cfg(objective="eqm", eqm_c="cosine"))
    assert EBTConfig().objective == "reference"  # the new objectives are opt-in


def test_eqm_gradient_magnitude_vanishes_at_the_data() -> None:
    g = torch.tensor([0.0, 0.5, 0.8, 0.9, 1.0])
    trunc = eqm_c(g, "truncated", 4.0, 0.8)
    torch.testing.assert_close(trunc, torch.tensor([4.0, 4.0, 4.0, 2.0, 0.0]))
    torch.testing.assert_close(eqm_c(g, "linear", 4.0, 0.8), 4.0 * (1 - g))


@pytest.mark.parametrize("objective", GENERATIVE_OBJECTIVES)
def test_generative_loss_backpropagates_finite_gradients_into_every_parameter(objective: str) -> None:
    head = EBTHead(_cfg(objective=objective, em_warmup=0))  # energy_matching: phase 2 from the first call
    ctx, target = goal_reach_batch(8, H, D, W, bimodal=True)
    e, f = energy_field(head, ctx, torch.randn(8, H, D), create_graph=False)
    assert e.shape == (8,) and f.shape == (8, H, D) and torch.isfinite(f).all()
    assert field_scale(head) == H * D
    loss, info = head.compute_loss(ctx, target)
    loss.backward()
    assert torch.isfinite(loss) and info["loss"] == pytest.approx(loss.item())
    for name, p in head.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name
    if objective == "energy_matching":
        assert info["phase"] == 2.0 and "cd_loss" in info and "energy_negative" in info


def test_energy_matching_adds_the_contrastive_term_after_the_warmup() -> None:
    head = EBTHead(_cfg(objective="energy_matching", em_warmup=2))
    ctx, target = goal_reach_batch(8, H, D, W)
    phases = [head.compute_loss(ctx, target)[1] for _ in range(3)]
    assert [i["phase"] for i in phases] == [1.0, 1.0, 2.0]
    assert "cd_loss" not in phases[0] and "cd_loss" in phases[2]
    assert phases[2]["cd_loss"] >= -head.cfg.em_cd_clamp - 1e-6  # clamped below
    head.eval()
    head.compute_loss(ctx, target)  # evaluation calls do not advance the phase counter
    assert head._loss_calls == 3


@pytest.mark.parametrize("objective", GENERATIVE_OBJECTIVES)
def test_generative_loss_ignores_masked_entries(objective: str) -> None:
    head = EBTHead(_cfg(objective=objective, em_warmup=0))
    ctx, target = goal_reach_batch(8, H, D, W)
    mask = torch.ones(8, H, D, dtype=torch.bool)
    mask[:, :, 3] = False  # padded action dim
    mask[:, 6:] = False  # steps past the episode end
    other = target.clone()
    other[~mask] = 5.0
    torch.manual_seed(1)
    l1, _ = head.compute_loss(ctx, target, mask)
    torch.manual_seed(1)
    l2, _ = head.compute_loss(ctx, other, mask)
    torch.testing.assert_close(l1, l2)
    for m in (mask, mask[..., 0]):  # (B, H, D) and (B, H) masks
        loss, _ = head.compute_loss(ctx, target, m)
        assert torch.isfinite(loss)


@pytest.mark.parametrize("objective", ["eqm", "energy_matching"])
def test_generative_training_lowers_the_loss_and_predicts_chunks(objective: str) -> None:
    torch.manual_seed(0)
    head = EBTHead(_cfg(objective=objective))
    losses = train_head(head, steps=60)
    assert sum(losses[-10:]) / 10 < sum(losses[:10]) / 10
    ctx, _ = goal_reach_batch(4, H, D, W, generator=torch.Generator().manual_seed(2))
    pred = head.predict(ctx, num_steps=2)
    assert pred.actions.shape == (4, H, D) and torch.isfinite(pred.actions).all()


def test_eqm_sampling_is_a_fixed_step_on_the_field_and_stops_by_gradient_norm() -> None:
    torch.manual_seed(0)
    head = EBTHead(_cfg(objective="eqm", eqm_momentum=0.0, eqm_step=0.05)).eval()
    ctx, _ = goal_reach_batch(4, H, D, W)
    torch.manual_seed(3)
    pred = head.predict(ctx, num_steps=1)
    torch.manual_seed(3)
    a0 = torch.randn(4, 1, H, D).flatten(0, 1)
    _, f = energy_field(head, ctx, a0, create_graph=False)
    torch.testing.assert_close(pred.actions, a0 - 0.05 * f, atol=1e-5, rtol=1e-4)  # no exp(E) scaling
    assert pred.nfe == 1 and pred.energy.shape == (4,) and pred.energy_trace.shape == (1, 4)  # final evaluation folded in
    assert head.predict(ctx, num_steps=4, min_grad=1e9).steps.max().item() == 0


def test_energy_matching_sampling_takes_euler_steps_over_unit_time() -> None:
    torch.manual_seed(0)
    head = EBTHead(_cfg(objective="energy_matching", em_momentum=0.0)).eval()
    ctx, _ = goal_reach_batch(4, H, D, W)
    for k in (1, 4):
        torch.manual_seed(3)
        pred = head.predict(ctx, num_steps=k)
        torch.manual_seed(3)
        a = torch.randn(4, 1, H, D).flatten(0, 1)
        for _ in range(k):
            a = a - energy_field(head, ctx, a, create_graph=False)[1] / k
        torch.testing.assert_close(pred.actions, a, atol=1e-5, rtol=1e-4)


# ------------------------------------------------------------------------------ trained (slow)
def _modes(head: EBTHead, num_steps: int, **ov) -> dict[str, torch.Tensor]:
    """STARTS random starts at each of CONTEXTS held-out bimodal contexts (the study's evaluation)."""
    ctx, target = goal_reach_batch(CONTEXTS, H, D, W, bimodal=True, generator=torch.Generator().manual_seed(100))
    with torch.random.fork_rng():
        torch.manual_seed(107)
        pred = head.predict(ctx.repeat_interleave(STARTS), num_steps=num_steps, **ov)
    a = pred.actions.view(CONTEXTS, STARTS, H, D)
    v = a[:, :, -1, 2]
    modes = target.unsqueeze(1).repeat(1, 2, 1, 1)
    modes[:, 0, :, 2], modes[:, 1, :, 2] = target[:, :, 2].abs(), -target[:, :, 2].abs()
    near = ((a.unsqueeze(2) - modes.unsqueeze(1)) ** 2).mean((-1, -2)).min(-1).values
    plus, minus = v > 0.4, v < -0.4
    return {"plus": plus, "minus": minus, "between": v.abs() < 0.2, "in_mode": (plus | minus) & (near < 0.016),
            "energy": pred.energy.view(CONTEXTS, STARTS)}


@pytest.fixture(scope="module")
def eqm_bimodal() -> EBTHead:
    torch.manual_seed(0)
    head = EBTHead(_cfg(objective="eqm"))
    train_head(head, steps=1000, bimodal=True, horizon=H, action_dim=D, width=W)
    return head.eval()


@pytest.mark.slow
def test_eqm_covers_both_modes_without_averaging_in_four_steps(eqm_bimodal: EBTHead) -> None:
    m = _modes(eqm_bimodal, 4)
    share = {k: m[k].float().mean().item() for k in ("plus", "minus", "between", "in_mode")}
    assert share["plus"] >= 0.30 and share["minus"] >= 0.30, share
    assert share["between"] <= 0.05, share  # measured 0.4 / 0.8 / 0.6% (seeds 0 / 1 / 2); reference: 100% between
    assert share["in_mode"] >= 0.85, share  # the whole chunk lands on a demonstration
    # every context gets both modes (a policy that picks one side per context would fail this)
    per_ctx = torch.minimum(m["plus"].float().mean(1), m["minus"].float().mean(1))
    assert per_ctx.min().item() >= 0.2, per_ctx


@pytest.mark.slow
def test_eqm_final_energy_ranks_samples_between_the_modes_above_samples_in_a_mode(eqm_bimodal: EBTHead) -> None:
    m = _modes(eqm_bimodal, 2, final_eval=True)  # the returned chunk's own energy; at 2 steps most starts have not reached a mode yet (measured: 7-13% in one)
    bad = ~m["in_mode"]
    assert 0.02 < bad.float().mean().item() < 0.98
    e = m["energy"]
    assert _auroc(e[bad], e[~bad]) > 0.9  # measured 0.996-0.997 (seeds 0-2), pooled over contexts; 0.97-0.99 without the anchor


@pytest.mark.slow
def test_eqm_is_accurate_on_a_unimodal_task() -> None:
    torch.manual_seed(0)
    head = EBTHead(_cfg(objective="eqm"))
    train_head(head, steps=1000, horizon=H, action_dim=D, width=W)
    ctx, target = goal_reach_batch(256, H, D, W, generator=torch.Generator().manual_seed(1))
    mean_err = (target - target.mean(0)).pow(2).mean().item()
    err = {k: (head.predict(ctx, num_steps=k).actions - target).pow(2).mean().item() for k in (4, 8)}
    # seed 0 (this test): 0.0025-0.0028 at 4 steps, 0.0010-0.0011 at 8 (mean predictor 0.053; reference 0.0004);
    # seeds 1 / 2: 0.0065 / 0.0045 at 4, 0.0077 / 0.0013 at 8 (the bound is for this seed, with margin)
    assert err[4] < 0.1 * mean_err and err[8] < 0.05 * mean_err, (err, mean_err)
