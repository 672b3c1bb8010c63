"""Shared synthetic tasks for the diffusion / regression head tests (width 64, depth 2, H 8, D 4).

Seeds: VLA_EBT_TEST_SEED (default 0) moves every random draw.
"""

from __future__ import annotations

import math
import os

import torch

from vla_ebt.heads import Context, TrunkConfig

SEED = int(os.environ.get("VLA_EBT_TEST_SEED", "0"))
W, H, D, B = 64, 8, 4, 64
TRUNK = TrunkConfig(width=W, depth=2, num_heads=4)
RAMP = torch.arange(1, H + 1).float() / H  # (H,)
MODE = RAMP[:, None] * torch.tensor([0.6, -0.4, 0.6, -0.4])[None]  # (H, D)


def goal_batch(proj: torch.Tensor, b: int) -> tuple[Context, torch.Tensor]:
    """Goal g ~ U[-0.8, 0.8]^2 encoded in one context token; target = linear ramp toward g."""
    g = torch.rand(b, 2) * 1.6 - 0.8
    ctx = Context((g @ proj).unsqueeze(1), torch.ones(b, 1, dtype=torch.bool))
    return ctx, RAMP[None, :, None] * torch.cat([g, g], -1)[:, None, :]


def bimodal_batch(token: torch.Tensor, b: int) -> tuple[Context, torch.Tensor]:
    """Same context for every sample; target = +MODE or -MODE with probability 1/2."""
    sign = (torch.rand(b, 1, 1) < 0.5).float() * 2 - 1
    return Context(token.expand(b, -1, -1), torch.ones(b, 1, dtype=torch.bool)), sign * MODE


def train(head, sample_batch, steps: int, lr: float = 2e-3) -> list[float]:
    """AdamW with a cosine-decayed LR on ``sample_batch(B)``; returns info["loss"] per step."""
    opt = torch.optim.AdamW(head.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: 0.5 * (1 + math.cos(math.pi * i / steps)))
    losses = []
    for _ in range(steps):
        ctx, target = sample_batch(B)
        loss, info = head.compute_loss(ctx, target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        losses.append(info["loss"])
    head.eval()
    return losses
