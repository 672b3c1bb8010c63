"""The transformer trunk shared by the EBT, diffusion and regression heads.

Action tokens (one per timestep of the chunk) self-attend bidirectionally and cross-attend to the
context tokens. Attention is written as explicit softmax(QK^T)V by default because the EBT head
differentiates *through* the gradient of its energy (double backward), which PyTorch's fused CPU
SDPA kernels do not support; ``attn_impl="sdpa"`` uses ``F.scaled_dot_product_attention`` pinned
to the MATH backend, which also supports double backward.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.attention import SDPBackend, sdpa_kernel


@dataclass
class TrunkConfig:
    """Size of the head trunk. Reference (EBT-Policy robomimic): width 256, depth 8, heads 4."""

    width: int = 256
    depth: int = 8
    num_heads: int = 4
    mlp_ratio: float = 4.0
    dropout: float = 0.0
    attn_impl: Literal["math", "sdpa"] = "math"


class RMSNorm(nn.Module):
    """Root-mean-square layer norm over the last dim with a learned gain."""

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


def sinusoidal_embedding(positions: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """Fixed sinusoidal embedding. positions: (N,) float/int -> (N, dim)."""
    half = dim // 2
    freqs = torch.exp(
        -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=positions.device) / half
    )
    args = positions.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


class Attention(nn.Module):
    """Multi-head attention. q_in: (B, N, W), kv_in: (B, M, W), kv_mask: (B, M) bool -> (B, N, W)."""

    def __init__(self, width: int, num_heads: int, impl: str = "math", dropout: float = 0.0) -> None:
        super().__init__()
        if width % num_heads:
            raise ValueError(f"trunk width {width} is not divisible by num_heads {num_heads}")
        self.h = num_heads
        self.impl = impl
        self.q = nn.Linear(width, width)
        self.kv = nn.Linear(width, 2 * width)
        self.out = nn.Linear(width, width)
        self.dropout = dropout

    def forward(self, q_in: Tensor, kv_in: Tensor, kv_mask: Tensor | None = None) -> Tensor:
        b, n, w = q_in.shape
        m = kv_in.shape[1]
        q = self.q(q_in).view(b, n, self.h, w // self.h).transpose(1, 2)  # (B, h, N, dh)
        k, v = self.kv(kv_in).view(b, m, 2, self.h, w // self.h).permute(2, 0, 3, 1, 4)  # (B, h, M, dh)
        bias = None
        if kv_mask is not None:
            bias = torch.zeros(b, 1, 1, m, dtype=q.dtype, device=q.device)
            bias = bias.masked_fill(~kv_mask[:, None, None, :], float("-inf"))
        p = self.dropout if self.training else 0.0
        if self.impl == "sdpa":
            with sdpa_kernel(SDPBackend.MATH):
                o = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=p)
        else:
            scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
            if bias is not None:
                scores = scores + bias
            attn = scores.softmax(-1)
            if p:
                attn = F.dropout(attn, p)
            o = attn @ v
        return self.out(o.transpose(1, 2).reshape(b, n, w))


class TrunkBlock(nn.Module):
    """RMSNorm -> self-attn -> res; RMSNorm -> cross-attn(context) -> res; RMSNorm -> MLP -> res."""

    def __init__(self, cfg: TrunkConfig) -> None:
        super().__init__()
        w = cfg.width
        self.n1, self.n2, self.n3 = RMSNorm(w), RMSNorm(w), RMSNorm(w)
        self.self_attn = Attention(w, cfg.num_heads, cfg.attn_impl, cfg.dropout)
        self.cross_attn = Attention(w, cfg.num_heads, cfg.attn_impl, cfg.dropout)
        hidden = int(w * cfg.mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(w, hidden), nn.GELU(), nn.Linear(hidden, w))

    def forward(self, x: Tensor, ctx: Tensor, ctx_mask: Tensor) -> Tensor:
        h = self.n1(x)
        x = x + self.self_attn(h, h)
        x = x + self.cross_attn(self.n2(x), ctx, ctx_mask)
        return x + self.mlp(self.n3(x))


class ActionTrunk(nn.Module):
    """Embeds an action chunk, runs the blocks against the context, projects per token.

    forward(actions (B, H, D), ctx (B, T, W), ctx_mask (B, T)) -> (B, H, out_dim)
    """

    def __init__(self, cfg: TrunkConfig, horizon: int, action_dim: int, out_dim: int) -> None:
        super().__init__()
        w = cfg.width
        self.cfg = cfg
        self.embed = nn.Sequential(nn.Linear(action_dim, w), nn.GELU(), nn.Linear(w, w))
        self.register_buffer(
            "pos", sinusoidal_embedding(torch.arange(horizon), w), persistent=False
        )
        self.blocks = nn.ModuleList(TrunkBlock(cfg) for _ in range(cfg.depth))
        self.norm = RMSNorm(w)
        self.proj = nn.Linear(w, out_dim)

    def forward(self, actions: Tensor, ctx: Tensor, ctx_mask: Tensor) -> Tensor:
        x = self.embed(actions) + self.pos[: actions.shape[1]]
        for blk in self.blocks:
            x = blk(x, ctx, ctx_mask)
        return self.proj(self.norm(x))
