"""Bridge: backbone prefix (B, T, D_b) -> head prefix (B, T', W) with T' <= max_prefix_tokens.

A Linear projection to the head width plus a norm, and a bound on the prefix length so the action head's
cost does not grow with image resolution, camera count or a VLM's image-token count. When T exceeds the
bound the tokens are reduced by

* ``"attention"``: ``max_prefix_tokens`` learned queries cross-attend to the valid tokens (one
  Perceiver-resampler block: attention + MLP, pre-norm, residual on the queries), or
* ``"avg"``: T is cut into ``max_prefix_tokens`` contiguous bins, each the mean of its valid tokens.

Masked tokens are zeroed before anything else, so their content never reaches the output.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .backbones.base import PrefixOutput


@dataclass
class BridgeConfig:
    """width: head width W. max_prefix_tokens: bound on T'. pooling: "attention" | "avg".
    norm: "rms" | "layer". heads: attention heads for "attention" pooling (must divide W).
    always_pool: reduce to exactly max_prefix_tokens even when T is already within the bound
    (gives a fixed T' when T varies around the bound). fusion_layers: self-attention layers over the
    whole projected prefix before pooling (0 = none), so image tokens can attend to the instruction."""

    width: int = 256
    max_prefix_tokens: int = 64
    pooling: str = "attention"
    norm: str = "rms"
    heads: int = 4
    always_pool: bool = False
    fusion_layers: int = 0


def _make_norm(kind: str, width: int) -> nn.Module:
    if kind == "rms":
        return nn.RMSNorm(width)
    if kind == "layer":
        return nn.LayerNorm(width)
    raise ValueError(f"bridge.norm must be 'rms' or 'layer', got {kind!r}")


class AttentionPool(nn.Module):
    """(B, T, W) tokens + (B, T) mask -> (B, K, W): K learned queries attend over the valid tokens."""

    def __init__(self, width: int, num_queries: int, heads: int):
        super().__init__()
        self.queries = nn.Parameter(torch.randn(num_queries, width) * 0.02)
        self.norm_q = nn.LayerNorm(width)
        self.norm_kv = nn.LayerNorm(width)
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.norm_mlp = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width))

    def forward(self, tokens: Tensor, mask: Tensor) -> Tensor:
        """tokens (B, T, W), mask (B, T) bool with >= 1 True per row -> (B, K, W)."""
        q = self.queries.unsqueeze(0).expand(tokens.shape[0], -1, -1)
        kv = self.norm_kv(tokens)
        attended, _ = self.attn(self.norm_q(q), kv, kv, key_padding_mask=~mask, need_weights=False)
        x = q + attended
        return x + self.mlp(self.norm_mlp(x))


def masked_bin_average(tokens: Tensor, mask: Tensor, num_bins: int) -> tuple[Tensor, Tensor]:
    """Average valid tokens within ``num_bins`` contiguous bins of the T axis.

    tokens (B, T, W), mask (B, T) -> (B, num_bins, W), bin mask (B, num_bins) (False for empty bins).
    """
    b, t, w = tokens.shape
    bin_of = torch.arange(t, device=tokens.device) * num_bins // t  # (T,) in [0, num_bins)
    weights = mask.to(tokens.dtype)
    sums = tokens.new_zeros(b, num_bins, w).index_add_(1, bin_of, tokens * weights.unsqueeze(-1))
    counts = weights.new_zeros(b, num_bins).index_add_(1, bin_of, weights)
    return sums / counts.clamp(min=1.0).unsqueeze(-1), counts > 0


class Bridge(nn.Module):
    """PrefixOutput (B, T, D_b) -> PrefixOutput (B, T', W), T' = T if T <= max_prefix_tokens (and not
    ``always_pool``) else max_prefix_tokens."""

    def __init__(self, backbone_width: int, cfg: BridgeConfig | None = None):
        super().__init__()
        self.cfg = cfg = cfg or BridgeConfig()
        if cfg.max_prefix_tokens < 1:
            raise ValueError("bridge.max_prefix_tokens must be >= 1")
        if cfg.pooling not in ("attention", "avg"):
            raise ValueError(f"bridge.pooling must be 'attention' or 'avg', got {cfg.pooling!r}")
        self.proj = nn.Linear(backbone_width, cfg.width)
        self.norm = _make_norm(cfg.norm, cfg.width)
        # Optional self-attention over the whole prefix before pooling, so image tokens can become
        # instruction-aware in backbones whose encoders never see each other (the composite family).
        self.fusion = (
            nn.TransformerEncoder(
                nn.TransformerEncoderLayer(cfg.width, cfg.heads, 4 * cfg.width, dropout=0.0, batch_first=True,
                                           norm_first=True, activation="gelu"),
                cfg.fusion_layers,
                enable_nested_tensor=False,
            )
            if cfg.fusion_layers > 0
            else None
        )
        self.pool = AttentionPool(cfg.width, cfg.max_prefix_tokens, cfg.heads) if cfg.pooling == "attention" else None
        self.out_norm = _make_norm(cfg.norm, cfg.width) if cfg.pooling == "attention" else None

    def forward(self, prefix: PrefixOutput) -> PrefixOutput:
        mask = prefix.mask.bool()
        raw = prefix.tokens.masked_fill(~mask.unsqueeze(-1), 0.0)
        tokens = self.norm(self.proj(raw)).masked_fill(~mask.unsqueeze(-1), 0.0)
        if self.fusion is not None:
            any_valid = mask.any(dim=1, keepdim=True)
            fused = self.fusion(tokens, src_key_padding_mask=~(mask | ~any_valid))
            tokens = fused.masked_fill(~mask.unsqueeze(-1), 0.0)
        k = self.cfg.max_prefix_tokens
        if tokens.shape[1] <= k and not self.cfg.always_pool:
            return PrefixOutput(tokens=tokens, mask=mask)
        if self.pool is None:
            pooled, pooled_mask = masked_bin_average(tokens, mask, k)
            return PrefixOutput(tokens=pooled, mask=pooled_mask)
        any_valid = mask.any(dim=1)  # rows with no valid token would give NaN attention
        safe_mask = mask | ~any_valid.unsqueeze(1)
        pooled = self.out_norm(self.pool(tokens, safe_mask))
        pooled = pooled.masked_fill(~any_valid.view(-1, 1, 1), 0.0)
        return PrefixOutput(tokens=pooled, mask=any_valid.unsqueeze(1).expand(-1, k).clone())
