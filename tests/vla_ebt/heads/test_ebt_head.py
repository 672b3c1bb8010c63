"""EBT head: energy, minimizer, unrolled training on a context-dependent task."""

import pytest
import torch

from tests.synthetic_tasks import goal_reach_batch, train_head
from vla_ebt.heads import Context, EBTConfig, EBTHead, TrunkConfig
from vla_ebt.heads.energy_minimizer import cosine_sigmas, minimize_energy

H, D, W = 8, 4, 64


def small_cfg(**kw) -> EBTConfig:
    return EBTConfig(trunk=TrunkConfig(width=W, depth=2, num_heads=4), horizon=H, action_dim=D, **kw)


@pytest.fixture(scope="module")
def trained_reference() -> EBTHead:
    torch.manual_seed(0)
    head = EBTHead(small_cfg(objective="reference"))
    losses = train_head(head, steps=250)
    assert sum(losses[-20:]) < 0.4 * sum(losses[5:25])  # loss falls
    return head


def test_energy_is_scalar_per_sample_and_gradient_has_action_shape() -> None:
    head = EBTHead(small_cfg())
    ctx, _ = goal_reach_batch(5, H, D, W)
    a = torch.randn(5, H, D, requires_grad=True)
    e = head.energy(ctx, a)
    assert e.shape == (5,)
    (g,) = torch.autograd.grad(e.sum(), a)
    assert g.shape == a.shape and torch.isfinite(g).all() and g.abs().sum() > 0


def test_energy_depends_on_context_mask() -> None:
    head = EBTHead(small_cfg())
    ctx, _ = goal_reach_batch(3, H, D, W)
    a = torch.randn(3, H, D)
    masked = Context(ctx.tokens.clone(), ctx.mask.clone())
    masked.mask[:, 1] = False
    changed = masked.tokens.clone()
    changed[:, 1] = 100.0  # a masked token's content must not matter
    e1 = head.energy(masked, a)
    e2 = head.energy(Context(changed, masked.mask), a)
    torch.testing.assert_close(e1, e2)


def test_cosine_sigmas_anneal_from_start_to_end() -> None:
    s = cosine_sigmas(5, 0.2, 0.002)
    assert s[0] == pytest.approx(0.2) and s[-1] == pytest.approx(0.002)
    assert all(a > b for a, b in zip(s, s[1:]))


def test_minimizer_descends_a_quadratic_and_reports_steps() -> None:
    target = torch.randn(4, H, D)
    fn = lambda a: 0.5 * (a - target).pow(2).flatten(1).sum(1)  # noqa: E731
    res = minimize_energy(fn, torch.zeros(4, H, D), num_steps=30, alpha=torch.tensor(0.5), momentum=0.5, energy_clamp=0.0)
    assert (res.final - target).abs().max() < 1e-2
    assert res.energies[-1].max() < res.energies[0].min()
    assert res.steps.tolist() == [30] * 4 and res.nfe == 30


def test_minimizer_early_exit_stops_converged_samples_only() -> None:
    target = torch.zeros(2, H, D)
    a0 = torch.stack([torch.zeros(H, D), torch.ones(H, D)])  # sample 0 starts at the optimum
    fn = lambda a: 0.5 * (a - target).pow(2).flatten(1).sum(1)  # noqa: E731
    res = minimize_energy(fn, a0, num_steps=10, alpha=torch.tensor(0.1), energy_clamp=0.0, min_grad=1e-3)
    assert res.steps[0].item() == 0
    assert res.steps[1].item() == 10
    torch.testing.assert_close(res.final[0], a0[0])


@pytest.mark.slow
def test_reference_training_beats_mean_and_two_steps_match_eight(trained_reference: EBTHead) -> None:
    ctx, target = goal_reach_batch(256, H, D, W, generator=torch.Generator().manual_seed(1))
    mean_pred_mse = (target - target.mean(0)).pow(2).mean().item()
    errs = {k: (trained_reference.predict(ctx, num_steps=k).actions - target).pow(2).mean().item() for k in (2, 8)}
    assert errs[2] < 0.2 * mean_pred_mse, (errs, mean_pred_mse)
    assert errs[2] < 3.0 * errs[8] + 1e-3, errs  # 2 steps reach the max-step error (tolerance 3x + 1e-3)


@pytest.mark.slow
def test_minimizer_lowers_energy_of_trained_head(trained_reference: EBTHead) -> None:
    ctx, _ = goal_reach_batch(32, H, D, W)
    pred = trained_reference.predict(ctx, num_steps=4, final_eval=True)
    trace = pred.energy_trace
    assert trace.shape == (5, 32)
    assert (trace[-1] < trace[0]).float().mean() > 0.9
    assert pred.steps.tolist() == [4] * 32 and pred.nfe == 5
    assert pred.grad_norm.shape == (32,) and pred.energy.shape == (32,)


@pytest.mark.slow
def test_warm_start_from_a_good_chunk_stays_good(trained_reference: EBTHead) -> None:
    ctx, target = goal_reach_batch(64, H, D, W)
    cold = trained_reference.predict(ctx, num_steps=1).actions
    warm = trained_reference.predict(ctx, init=target, num_steps=1).actions
    assert (warm - target).pow(2).mean() < (cold - target).pow(2).mean()


@pytest.mark.slow
def test_best_of_n_keeps_the_lowest_energy_candidate(trained_reference: EBTHead) -> None:
    ctx, _ = goal_reach_batch(8, H, D, W)
    torch.manual_seed(3)
    best = trained_reference.predict(ctx, num_steps=1, num_candidates=6, noise=0.3)
    torch.manual_seed(3)
    single = trained_reference.predict(ctx, num_steps=1, num_candidates=1, noise=0.3)
    assert (best.energy <= single.energy + 1e-6).float().mean() >= 0.75
    again = trained_reference.energy(ctx, best.actions)
    torch.testing.assert_close(again, best.energy, atol=1e-5, rtol=1e-5)


@pytest.mark.slow
def test_early_exit_threshold_saves_steps(trained_reference: EBTHead) -> None:
    ctx, _ = goal_reach_batch(16, H, D, W)
    loose = trained_reference.predict(ctx, num_steps=8, min_grad=1e9)
    tight = trained_reference.predict(ctx, num_steps=8, min_grad=0.0)
    assert loose.steps.max().item() == 0 and tight.steps.min().item() == 8


@pytest.mark.parametrize("impl", ["math", "sdpa"])
def test_unrolled_second_order_loss_backpropagates_on_every_attention_backend(impl: str) -> None:
    torch.manual_seed(0)
    head = EBTHead(EBTConfig(trunk=TrunkConfig(width=32, depth=1, num_heads=2, attn_impl=impl), horizon=4, action_dim=3,
                             objective="reference"))
    ctx, target = goal_reach_batch(4, 4, 3, 32)
    loss, info = head.compute_loss(ctx, target)
    loss.backward()
    # the output bias adds a constant to E: it cannot change dE/da, so it alone gets no gradient
    grads = {n: p.grad for n, p in head.named_parameters() if n != "trunk.proj.bias"}
    assert all(g is not None and torch.isfinite(g).all() and g.abs().sum() > 0 for g in grads.values())
    assert info["unroll_steps"] >= 2


def test_attention_backends_compute_the_same_energy() -> None:
    torch.manual_seed(0)
    a = EBTHead(small_cfg())
    b = EBTHead(EBTConfig(trunk=TrunkConfig(width=W, depth=2, num_heads=4, attn_impl="sdpa"), horizon=H, action_dim=D))
    b.load_state_dict(a.state_dict())
    ctx, target = goal_reach_batch(4, H, D, W)
    torch.testing.assert_close(a.energy(ctx, target), b.energy(ctx, target), atol=1e-5, rtol=1e-5)


@pytest.mark.slow
def test_truncated_unroll_is_cheaper_graph_but_still_trains() -> None:
    torch.manual_seed(0)
    head = EBTHead(small_cfg(objective="reference", truncate=1, train_steps_min=3, train_steps_rand=1))
    losses = train_head(head, steps=60)
    assert sum(losses[-10:]) < 0.5 * sum(losses[:10])


def test_learnable_alpha_receives_gradient() -> None:
    head = EBTHead(small_cfg(objective="reference", learnable_alpha=True))
    ctx, target = goal_reach_batch(8, H, D, W)
    loss, _ = head.compute_loss(ctx, target)
    loss.backward()
    assert head.log_alpha.grad is not None and head.log_alpha.grad.abs() > 0


def test_loss_ignores_masked_entries() -> None:
    head = EBTHead(small_cfg(objective="reference", alpha_jitter=1.0, langevin_start=0.0, langevin_end=0.0))
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


# ------------------------------------------------------------------------------ energy shaping
def _mixed_ambiguity_batch(batch: int, gen: torch.Generator | None = None):
    """Half the contexts demonstrate one chunk, half (flagged in token 1, dim 3) two modes 50/50."""
    ctx_u, t_u = goal_reach_batch(batch // 2, H, D, W, bimodal=False, generator=gen)
    ctx_b, t_b = goal_reach_batch(batch // 2, H, D, W, bimodal=True, generator=gen)
    ctx_b.tokens[:, 1, 3] = 1.0
    return Context(torch.cat([ctx_u.tokens, ctx_b.tokens]), torch.cat([ctx_u.mask, ctx_b.mask])), torch.cat([t_u, t_b])


def _train_shaped(shaping: str, steps: int = 250) -> EBTHead:
    torch.manual_seed(0)
    head = EBTHead(small_cfg(objective="reference", shaping=shaping))
    opt = torch.optim.AdamW(head.parameters(), lr=1e-3)
    for _ in range(steps):
        ctx, target = _mixed_ambiguity_batch(64)
        loss, info = head.compute_loss(ctx, target)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(head.parameters(), 1.0)
        opt.step()
    assert ("shaping_loss" in info) == (shaping != "none")
    return head


def _auroc(pos: torch.Tensor, neg: torch.Tensor) -> float:
    return ((pos[:, None] > neg[None, :]).float() + 0.5 * (pos[:, None] == neg[None, :]).float()).mean().item()


@pytest.mark.slow
def test_error_shaping_makes_the_final_energy_read_the_expected_error() -> None:
    """Trained on a mix of unambiguous and two-mode contexts (where the minimizer's output, the
    modes' average, is far from every demonstration), the "error"-shaped final energy is higher on
    the two-mode contexts and tracks the output's actual error; unshaped, it does neither."""
    head = _train_shaped("error")
    ctx, target = _mixed_ambiguity_batch(256, torch.Generator().manual_seed(5))
    pred = head.predict(ctx, num_steps=2)
    assert _auroc(pred.energy[128:], pred.energy[:128]) > 0.9
    err = (pred.actions - target).pow(2).flatten(1).mean(1)
    gap_e = pred.energy[128:].mean() - pred.energy[:128].mean()
    gap_err = err[128:].mean() - err[:128].mean()
    assert gap_e.item() == pytest.approx(gap_err.item(), rel=0.5)  # same units: squared error (+ a constant)
    rank = lambda x: x.argsort().argsort().float()  # noqa: E731
    assert torch.corrcoef(torch.stack([rank(pred.energy), rank(err)]))[0, 1] > 0.6  # Spearman
    # and the policy still clones the unambiguous demonstrations
    assert (pred.actions[:128] - target[:128]).pow(2).mean() < 0.1 * target[:128].pow(2).mean()
    plain = _train_shaped("none", steps=150)
    e = plain.predict(ctx, num_steps=2).energy
    assert 0.25 < _auroc(e[128:], e[:128]) < 0.75


@pytest.mark.slow
def test_margin_shaping_ranks_demonstrations_below_perturbed_chunks() -> None:
    head = _train_shaped("margin", steps=150)
    ctx, target = _mixed_ambiguity_batch(128, torch.Generator().manual_seed(6))
    e_t = head.energy(ctx, target).detach()
    e_p = head.energy(ctx, target + 0.5 * torch.randn_like(target)).detach()
    assert (e_p > e_t).float().mean() > 0.9


def test_shaping_is_validated_and_off_by_default() -> None:
    with pytest.raises(ValueError, match="shaping"):
        EBTHead(small_cfg(shaping="entropy"))
    head = EBTHead(small_cfg())
    ctx, target = goal_reach_batch(8, H, D, W)
    _, info = head.compute_loss(ctx, target)
    assert "shaping_loss" not in info
    for shaping in ("error", "margin"):  # padded action dims (B, H, D masks) and padded steps (B, H)
        head = EBTHead(small_cfg(shaping=shaping))
        for mask in (torch.ones(8, H, D, dtype=torch.bool), torch.ones(8, H, dtype=torch.bool)):
            mask[:, -2:] = False
            loss, info = head.compute_loss(ctx, target, mask)
            loss.backward()
            assert torch.isfinite(loss) and info["shaping_loss"] >= 0
