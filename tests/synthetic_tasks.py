"""Small synthetic action-chunk tasks whose target depends on the context (for head tests)."""

from __future__ import annotations

import torch

from vla_ebt.heads.base import Context


def goal_reach_batch(
    batch: int, horizon: int = 8, action_dim: int = 4, width: int = 64, bimodal: bool = False,
    generator: torch.Generator | None = None,
) -> tuple[Context, torch.Tensor]:
    """Context token 0 carries a 2-D goal g; the target chunk ramps toward 0.9 g in dims 0-1.

    bimodal=True adds dim 2 = +/-0.8 * ramp with a fair coin per sample: two equally valid modes
    from the same context. Returns (Context (B, 2, W), target (B, H, D)).
    """
    g = torch.rand(batch, 2, generator=generator) * 2 - 1
    tokens = torch.zeros(batch, 2, width)
    tokens[:, 0, :2] = g
    tokens[:, 1, 2] = 1.0
    ramp = torch.linspace(1 / horizon, 1, horizon)[None, :, None]
    target = torch.zeros(batch, horizon, action_dim)
    target[..., :2] = ramp * g[:, None, :] * 0.9
    if bimodal:
        sign = torch.where(torch.rand(batch, generator=generator) < 0.5, -1.0, 1.0)
        target[..., 2] = ramp[..., 0] * 0.8 * sign[:, None]
    return Context(tokens, torch.ones(batch, 2, dtype=torch.bool)), target


def train_head(head: torch.nn.Module, steps: int, lr: float = 1e-3, batch: int = 64, **task) -> list[float]:
    """AdamW + grad clip 1.0 on goal_reach batches; returns the loss per step."""
    opt = torch.optim.AdamW(head.parameters(), lr=lr)
    losses = []
    for _ in range(steps):
        ctx, target = goal_reach_batch(batch, **task)
        loss, _ = head.compute_loss(ctx, target)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(head.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
    return losses
