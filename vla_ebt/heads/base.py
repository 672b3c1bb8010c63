"""The contract every action head satisfies, and the context it reads.

All heads work in *normalized* action space (values roughly in [-1, 1]); the policy owns
normalization. Shapes: B = batch, T = context tokens, W = head width, H = prediction horizon,
D = (padded) action dimension.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass

import torch
from torch import Tensor, nn


@dataclass
class Context:
    """Context tokens the head cross-attends to, computed once per observation.

    tokens: (B, T, W) float, already at head width.
    mask:   (B, T) bool, True where the token is valid.
    """

    tokens: Tensor
    mask: Tensor

    @property
    def batch_size(self) -> int:
        return self.tokens.shape[0]

    def repeat_interleave(self, n: int) -> "Context":
        """Repeat every sample n times along the batch: (B, ...) -> (B * n, ...)."""
        return Context(self.tokens.repeat_interleave(n, 0), self.mask.repeat_interleave(n, 0))

    def repeat(self, n: int) -> "Context":
        """Tile the whole batch n times: (B, ...) -> (n * B, ...), sample i at rows i, B + i, ..."""
        return Context(self.tokens.repeat(n, 1, 1), self.mask.repeat(n, 1))

    def detach(self) -> "Context":
        return Context(self.tokens.detach(), self.mask)


@dataclass
class ChunkPrediction:
    """One predicted action chunk per sample, with what it cost.

    actions:   (B, H, D) normalized actions.
    energy:    (B,) final energy (EBT) or None.
    steps:     (B,) long, optimization/denoising steps actually used per sample.
    grad_norm: (B,) final energy-gradient norm (EBT) or None.
    nfe:       network evaluations for the whole batch call (forward passes of the trunk).
    """

    actions: Tensor
    steps: Tensor
    nfe: int
    energy: Tensor | None = None
    grad_norm: Tensor | None = None
    energy_trace: Tensor | None = None  # (K+1, B) energy before the first and after each step


def expand_mask(mask: Tensor | None, like: Tensor) -> Tensor:
    """A supervision mask as a float (B, H, D) like ``like``: None -> ones, (B, H) -> broadcast over D."""
    if mask is None:
        return torch.ones_like(like)
    m = mask.to(like.dtype)
    return m.unsqueeze(-1).expand_as(like) if m.dim() == 2 else m


def masked_mean(err: Tensor, mask: Tensor | None) -> Tensor:
    """Mean of an elementwise error (B, H, D) over valid entries only.

    mask: (B, H, D) or (B, H) bool/float, 1 = supervised. Returns a scalar.
    """
    if mask is None:
        return err.mean()
    m = expand_mask(mask, err)
    return (err * m).sum() / m.sum().clamp_min(1.0)


def masked_mse(pred: Tensor, target: Tensor, mask: Tensor | None) -> Tensor:
    """Mean squared error over valid entries only. pred, target: (B, H, D)."""
    return masked_mean((pred - target).pow(2), mask)


def masked_l1(pred: Tensor, target: Tensor, mask: Tensor | None) -> Tensor:
    """Mean absolute error over valid entries only. pred, target: (B, H, D)."""
    return masked_mean((pred - target).abs(), mask)


class ActionHead(nn.Module, abc.ABC):
    """A head maps a Context to action chunks and knows how to train itself."""

    horizon: int
    action_dim: int

    @abc.abstractmethod
    def compute_loss(
        self, context: Context, target: Tensor, mask: Tensor | None = None
    ) -> tuple[Tensor, dict[str, float]]:
        """Training loss. target: (B, H, D) normalized; mask: (B, H, D) valid entries.

        Returns (scalar loss, float metrics for logging).
        """

    @abc.abstractmethod
    def predict(self, context: Context, init: Tensor | None = None, **overrides) -> ChunkPrediction:
        """Sample one chunk per context. init: (B, H, D) optional warm start (EBT only)."""
