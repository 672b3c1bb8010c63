"""EBT generative objectives (eqm, energy_matching): the loss is finite and trains the energy's
parameters, training lowers it on the unimodal goal task, and predictions keep the head's shapes.

Mode coverage on the bimodal task is measured by ``python -m recipes.studies.ebt_modes`` (issue 14);
these tests pin only the mechanics.
"""

import pytest
import torch

from tests.synthetic_tasks import goal_reach_batch, train_head
from vla_ebt.heads import EBTConfig, EBTHead, TrunkConfig

H, D, W = 8, 4, 64


def _head(objective: str) -> EBTHead:
    torch.manual_seed(0)
    return EBTHead(EBTConfig(trunk=TrunkConfig(width=W, depth=2, num_heads=4), horizon=H, action_dim=D,
                             objective=objective))


@pytest.mark.parametrize("objective", ["eqm", "energy_matching"])
def test_generative_loss_is_finite_and_reaches_the_energy_parameters(objective: str) -> None:
    head = _head(objective)
    ctx, target = goal_reach_batch(16, H, D, W, generator=torch.Generator().manual_seed(1))
    loss, info = head.compute_loss(ctx, target)
    assert loss.dim() == 0 and torch.isfinite(loss)
    loss.backward()
    grads = [p.grad for p in head.parameters() if p.requires_grad and p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)
    assert all(isinstance(v, float) for v in info.values())


@pytest.mark.parametrize("objective", ["eqm", "energy_matching"])
def test_generative_training_lowers_the_loss_and_predicts_chunks(objective: str) -> None:
    head = _head(objective)
    losses = train_head(head, steps=60)
    assert sum(losses[-10:]) / 10 < sum(losses[:10]) / 10
    ctx, _ = goal_reach_batch(4, H, D, W, generator=torch.Generator().manual_seed(2))
    pred = head.predict(ctx, num_steps=2)
    assert pred.actions.shape == (4, H, D) and torch.isfinite(pred.actions).all()


def test_unknown_objective_names_the_known_ones() -> None:
    with pytest.raises(ValueError, match="eqm"):
        _head("nope")
