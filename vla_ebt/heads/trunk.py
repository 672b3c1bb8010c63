"""The transformer trunk shared by the EBT, diffusion and regression heads.

Action tokens (one per timestep of the chunk) self-attend bidirectionally and cross-attend to the
context tokens. Attention is written as explicit softmax(QK^T)V by default because the EBT head
differentiates *through* the gradient of its energy (double backward), which PyTorch's fused CPU
SDPA kernels do not support; ``attn_impl="sdpa"`` uses ``F.scaled_dot_product_attention`` pinned
to the MATH backend, which also supports double backward.

Context keys / values once per chunk: the context does not change inside a chunk, while every head
runs the trunk several times on it (EBT minimizer steps, denoising / integration steps).
:meth:`ActionTrunk.encode_context` projects the context tokens to every block's cross-attention keys
and values once (:class:`TrunkContext`); ``trunk(actions, extra, extra_mask, context=...)`` then
projects only the per-step ``extra`` tokens (the diffusion / flow time token) and attends to
``[extra | context]``, the same sequence the uncached call ``trunk(actions, [extra | context], mask)``
attends to (equal within float tolerance: the projection of a row does not depend on the other
rows). ``context_kv_cache(False)`` switches the cache off (the context is then concatenated and
projected on every call, as before), for comparisons.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Iterator, Literal

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


_CACHE_ENABLED = True


@contextlib.contextmanager
def context_kv_cache(enabled: bool) -> Iterator[None]:
    """Within the block, :meth:`ActionTrunk.encode_context` caches keys / values (True, the default)
    or only keeps the tokens, so that every call projects the whole context again (False)."""
    global _CACHE_ENABLED
    prev, _CACHE_ENABLED = _CACHE_ENABLED, bool(enabled)
    try:
        yield
    finally:
        _CACHE_ENABLED = prev


def _all_valid(mask: Tensor) -> bool:
    """Whether every entry of a bool mask is True. While a CUDA graph is being captured the host may
    not read device values, so it answers False there: the masked path gives the same result."""
    if mask.is_cuda and torch.cuda.is_current_stream_capturing():
        return False
    return bool(mask.all())


def _mask_bias(mask: Tensor, dtype: torch.dtype) -> Tensor:
    """(B, M) bool -> (B, 1, 1, M) additive attention bias: 0 where valid, -inf where masked."""
    bias = torch.zeros(mask.shape[0], 1, 1, mask.shape[1], dtype=dtype, device=mask.device)
    return bias.masked_fill(~mask[:, None, None, :], float("-inf"))


@dataclass
class TrunkContext:
    """Context tokens prepared once per chunk for every trunk call on it.

    tokens: (B, T, W); mask: (B, T) bool. kv: per block (keys, values), each (B, heads, T, W / heads),
    or None when the cache is off. bias: (B, 1, 1, T) additive mask, None when every token is valid
    (adding zeros changes nothing).
    """

    tokens: Tensor
    mask: Tensor
    kv: list[tuple[Tensor, Tensor]] | None
    bias: Tensor | None

    @property
    def batch_size(self) -> int:
        return self.tokens.shape[0]

    def repeat_interleave(self, n: int) -> "TrunkContext":
        """Every sample n times along the batch: (B, ...) -> (B * n, ...)."""
        if n == 1:
            return self
        r = lambda t: None if t is None else t.repeat_interleave(n, 0)  # noqa: E731
        kv = None if self.kv is None else [(r(k), r(v)) for k, v in self.kv]
        return TrunkContext(r(self.tokens), r(self.mask), kv, r(self.bias))


class Attention(nn.Module):
    """Multi-head attention. q_in: (B, N, W), kv_in: (B, M, W), kv_mask: (B, M) bool -> (B, N, W).

    ``cached`` = (keys, values, bias) of further key/value tokens projected before (see
    :class:`TrunkContext`): the attended sequence is ``[kv_in | cached]`` (``kv_in`` may be None).
    """

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

    def project_kv(self, kv_in: Tensor) -> tuple[Tensor, Tensor]:
        """(B, M, W) tokens -> keys, values (B, h, M, W / h)."""
        b, m, w = kv_in.shape
        k, v = self.kv(kv_in).view(b, m, 2, self.h, w // self.h).permute(2, 0, 3, 1, 4)
        return k, v

    def forward(
        self,
        q_in: Tensor,
        kv_in: Tensor | None,
        kv_mask: Tensor | None = None,
        cached: tuple[Tensor, Tensor, Tensor | None] | None = None,
    ) -> Tensor:
        b, n, w = q_in.shape
        q = self.q(q_in).view(b, n, self.h, w // self.h).transpose(1, 2)  # (B, h, N, dh)
        if cached is None:
            k, v = self.project_kv(kv_in)  # (B, h, M, dh)
            bias = None if kv_mask is None else _mask_bias(kv_mask, q.dtype)
        else:
            k, v, bias = cached
            if kv_in is not None and kv_in.shape[1]:
                k_new, v_new = self.project_kv(kv_in)
                k, v = torch.cat([k_new, k], dim=2), torch.cat([v_new, v], dim=2)
                if bias is not None or (kv_mask is not None and not _all_valid(kv_mask)):
                    new_mask = kv_mask if kv_mask is not None else torch.ones(kv_in.shape[:2], dtype=torch.bool,
                                                                              device=q.device)
                    old = bias if bias is not None else q.new_zeros(b, 1, 1, k.shape[2] - kv_in.shape[1])
                    bias = torch.cat([_mask_bias(new_mask, q.dtype), old.expand(b, -1, -1, -1)], dim=-1)
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

    def forward(
        self,
        x: Tensor,
        ctx: Tensor | None,
        ctx_mask: Tensor | None,
        cached: tuple[Tensor, Tensor, Tensor | None] | None = None,
    ) -> Tensor:
        h = self.n1(x)
        x = x + self.self_attn(h, h)
        x = x + self.cross_attn(self.n2(x), ctx, ctx_mask, cached)
        return x + self.mlp(self.n3(x))


class ActionTrunk(nn.Module):
    """Embeds an action chunk, runs the blocks against the context, projects per token.

    forward(actions (B, H, D), ctx (B, T, W), ctx_mask (B, T)) -> (B, H, out_dim); with
    ``context=encode_context(tokens, mask)`` the blocks attend to ``[ctx | context]`` (``ctx`` may be
    None or hold per-call tokens such as a time token) and the context's keys / values come from the
    cache.
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

    def encode_context(self, tokens: Tensor, mask: Tensor) -> TrunkContext:
        """Context tokens (B, T, W) + mask (B, T) -> :class:`TrunkContext` with every block's
        cross-attention keys / values (computed once; not when ``context_kv_cache(False)``)."""
        mask = mask.bool()
        if not _CACHE_ENABLED:
            return TrunkContext(tokens, mask, None, None)
        kv = [blk.cross_attn.project_kv(tokens) for blk in self.blocks]
        bias = None if _all_valid(mask) else _mask_bias(mask, tokens.dtype)
        return TrunkContext(tokens, mask, kv, bias)

    def forward(
        self,
        actions: Tensor,
        ctx: Tensor | None = None,
        ctx_mask: Tensor | None = None,
        context: TrunkContext | None = None,
    ) -> Tensor:
        x = self.embed(actions) + self.pos[: actions.shape[1]]
        if context is not None and context.kv is None:  # cache off: the plain call on [ctx | context]
            if ctx is not None and ctx.shape[1]:
                b = context.batch_size
                extra_mask = ctx_mask if ctx_mask is not None else torch.ones(b, ctx.shape[1], dtype=torch.bool,
                                                                            device=ctx.device)
                ctx, ctx_mask = torch.cat([ctx, context.tokens], 1), torch.cat([extra_mask.bool(), context.mask], 1)
            else:
                ctx, ctx_mask = context.tokens, context.mask
            context = None
        for i, blk in enumerate(self.blocks):
            cached = None if context is None else (*context.kv[i], context.bias)
            x = blk(x, ctx, ctx_mask, cached)
        return self.proj(self.norm(x))
