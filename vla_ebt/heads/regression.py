"""Regression action head (OpenVLA-OFT style): one forward pass predicts the whole chunk.

The same :class:`~vla_ebt.heads.trunk.ActionTrunk` as the EBT and diffusion heads reads a learned
constant query chunk (initialized to zeros, so at init the action tokens carry only their
positional embedding) and outputs the chunk directly. Trained with MSE or L1 it predicts the
conditional mean (MSE) or median (L1): on multimodal demonstrations it averages the modes, which
is the documented failure mode this baseline exists to show.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import Tensor, nn

from .base import ActionHead, ChunkPrediction, Context, HeadCapabilities, masked_l1, masked_mse
from .factory import register_head
from .trunk import ActionTrunk, TrunkConfig


@dataclass
class RegressionConfig:
    """Regression head hyperparameters."""

    trunk: TrunkConfig = field(default_factory=TrunkConfig)
    horizon: int = 16
    action_dim: int = 7
    loss: Literal["mse", "l1"] = "mse"


@register_head("regression")
class RegressionHead(ActionHead):
    """Direct chunk regression. Context (B, T, W) -> chunks (B, H, D), one trunk evaluation."""

    config_class = RegressionConfig
    capabilities = HeadCapabilities(eval_cost=1.0, presets=(("regression", {}),))  # no inference knobs

    def __init__(self, cfg: RegressionConfig) -> None:
        super().__init__()
        if cfg.loss not in ("mse", "l1"):
            raise ValueError(f"unknown regression loss {cfg.loss!r}; expected 'mse' or 'l1'")
        self.cfg = cfg
        self.horizon, self.action_dim = cfg.horizon, cfg.action_dim
        self.trunk = ActionTrunk(cfg.trunk, cfg.horizon, cfg.action_dim, out_dim=cfg.action_dim)
        self.query = nn.Parameter(torch.zeros(cfg.horizon, cfg.action_dim))

    def forward(self, context: Context) -> Tensor:
        """(B, H, D) predicted chunk."""
        b = context.batch_size
        q = self.query.to(context.tokens.dtype).expand(b, -1, -1)
        return self.trunk(q, context.tokens, context.mask.bool())

    def compute_loss(
        self, context: Context, target: Tensor, mask: Tensor | None = None
    ) -> tuple[Tensor, dict[str, float]]:
        pred = self(context)
        loss = masked_mse(pred, target, mask) if self.cfg.loss == "mse" else masked_l1(pred, target, mask)
        info = {"loss": loss.item()}
        if self.cfg.loss == "l1":
            info["mse"] = masked_mse(pred.detach(), target, mask).item()
        return loss, info

    @torch.no_grad()
    def sample(self, context: Context, init: Tensor | None = None) -> ChunkPrediction:
        """One forward pass (``init`` is unused: no warm start)."""
        actions = self(context)
        b = context.batch_size
        return ChunkPrediction(
            actions=actions,
            steps=torch.ones(b, dtype=torch.long, device=actions.device),
            nfe=1,
        )
