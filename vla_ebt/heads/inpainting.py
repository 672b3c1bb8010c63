"""Inpainting constraints for real-time chunking, in normalized action space (docs/realtime.md).

While a chunk executes, the next one is planned: its first d steps are already committed (the
robot executes them before the new chunk arrives) and the steps after them overlap the previous
plan. A head declaring ``capabilities.inpainting`` receives that as one :class:`Inpainting`:

* ``frozen`` (B, H) bool and ``values`` (B, H, D): the committed steps, returned exactly;
* ``soft_weights`` (B, H) float >= 0 and ``soft_target`` (B, H, D) (optional): how strongly each
  later step is pulled toward the previous plan (weights on frozen steps are ignored).

:func:`resolve_inpainting` builds it from ``predict``'s ``prefix`` / ``prefix_mask`` /
``guidance`` arguments and checks shapes and values. :func:`rtc_soft_weights` is the soft mask of
Black et al. 2025 (arXiv 2506.07339), for callers that want the paper's schedule.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

#: beta of Black et al. 2025: the guidance weight min(beta, (1 - tau) / (tau r_tau^2)) is clipped here
DEFAULT_MAX_GUIDANCE_WEIGHT = 5.0


@dataclass
class SoftGuidance:
    """Soft pull toward the previous plan (normalized space).

    target:  (B, H, D) the previous plan aligned to the new chunk's steps.
    weights: (B, H) or (H,) float >= 0, one per step (0 = free; steps of the frozen prefix are
             frozen whatever their weight).
    """

    target: Tensor
    weights: Tensor


@dataclass
class Inpainting:
    """A resolved inpainting constraint for one batch (see the module docstring).

    frozen: (B, H) bool; values: (B, H, D), read where frozen; soft_weights: (B, H) float, 0 on frozen
    steps, or None; soft_target: (B, H, D) or None (set together with soft_weights).
    """

    frozen: Tensor
    values: Tensor
    soft_weights: Tensor | None = None
    soft_target: Tensor | None = None

    @property
    def batch_size(self) -> int:
        return self.frozen.shape[0]

    @property
    def has_soft(self) -> bool:
        return self.soft_weights is not None

    def apply(self, x: Tensor) -> Tensor:
        """x (B, H, D) with the frozen steps set to their values (a new tensor)."""
        return torch.where(self.frozen.unsqueeze(-1), self.values.to(x.dtype), x)

    def target_and_weights(self) -> tuple[Tensor, Tensor]:
        """The guidance target Y (B, H, D) and weights W (B, H) of real-time chunking: the frozen
        values with weight 1 on frozen steps, the soft target with its weights elsewhere."""
        frozen = self.frozen
        w = frozen.to(self.values.dtype)
        y = self.values
        if self.soft_weights is not None:
            w = torch.where(frozen, w, self.soft_weights.to(w.dtype))
            y = torch.where(frozen.unsqueeze(-1), self.values, self.soft_target.to(self.values.dtype))
        return y, w

    def repeat_interleave(self, n: int) -> "Inpainting":
        """Every sample n times along the batch (for n candidate chains per sample)."""
        if n == 1:
            return self
        r = lambda t: None if t is None else t.repeat_interleave(n, 0)  # noqa: E731
        return Inpainting(r(self.frozen), r(self.values), r(self.soft_weights), r(self.soft_target))

    def to(self, device: torch.device, dtype: torch.dtype) -> "Inpainting":
        f = lambda t: None if t is None else t.to(device=device, dtype=dtype)  # noqa: E731
        return Inpainting(self.frozen.to(device), f(self.values), f(self.soft_weights), f(self.soft_target))


def _check_finite(name: str, t: Tensor) -> None:
    if not t.dtype.is_floating_point:
        raise ValueError(f"{name} must be a floating-point tensor, got dtype {t.dtype}")
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name} contains NaN or inf")


def resolve_inpainting(
    prefix: Tensor | None,
    prefix_mask: Tensor | None,
    guidance: SoftGuidance | None,
    batch: int,
    horizon: int,
    action_dim: int,
    device: torch.device | None = None,
    dtype: torch.dtype = torch.float32,
) -> Inpainting | None:
    """``predict``'s inpainting arguments -> :class:`Inpainting` (None when there is nothing to do).

    prefix: (B, d, D) with d <= H, the first d steps (prefix_mask None), or (B, H, D) with
    prefix_mask (B, H) / (H,) bool naming the frozen steps. guidance: :class:`SoftGuidance`.
    Wrong shapes, NaN / inf and negative weights raise ValueError.
    """
    b, h, d_act = batch, horizon, action_dim
    frozen = values = None
    if prefix is not None:
        if prefix.dim() != 3 or prefix.shape[0] != b or prefix.shape[2] != d_act or prefix.shape[1] > h:
            raise ValueError(f"prefix must have shape ({b}, d <= {h}, {d_act}), got {tuple(prefix.shape)}")
        _check_finite("prefix", prefix)
        device = device or prefix.device
        values = prefix.to(device=device, dtype=dtype)
        if prefix_mask is None:
            d = prefix.shape[1]
            frozen = torch.zeros(b, h, dtype=torch.bool, device=device)
            frozen[:, :d] = True
            values = torch.cat([values, values.new_zeros(b, h - d, d_act)], dim=1)
        else:
            if prefix.shape[1] != h:
                raise ValueError(f"with prefix_mask, prefix must have shape ({b}, {h}, {d_act}), "
                                 f"got {tuple(prefix.shape)}")
            m = torch.as_tensor(prefix_mask, device=device)
            if m.dtype != torch.bool or m.shape not in ((b, h), (h,)):
                raise ValueError(f"prefix_mask must be bool ({b}, {h}) or ({h},), got {m.dtype} {tuple(m.shape)}")
            frozen = m.expand(b, h).clone()
            values = torch.where(frozen.unsqueeze(-1), values, torch.zeros_like(values))
    elif prefix_mask is not None:
        raise ValueError("prefix_mask given without prefix")
    soft_w = soft_t = None
    if guidance is not None:
        tgt, w = guidance.target, torch.as_tensor(guidance.weights)
        if tgt.shape != (b, h, d_act):
            raise ValueError(f"guidance target must have shape ({b}, {h}, {d_act}), got {tuple(tgt.shape)}")
        if w.shape not in ((b, h), (h,)):
            raise ValueError(f"guidance weights must have shape ({b}, {h}) or ({h},), got {tuple(w.shape)}")
        _check_finite("guidance target", tgt)
        _check_finite("guidance weights", w)
        if bool((w < 0).any()):
            raise ValueError("guidance weights must be >= 0")
        device = device or tgt.device
        soft_t = tgt.to(device=device, dtype=dtype)
        soft_w = w.to(device=device, dtype=dtype).expand(b, h).clone()
    if frozen is None and soft_w is None:
        return None
    if frozen is None:
        frozen = torch.zeros(b, h, dtype=torch.bool, device=device)
        values = torch.zeros(b, h, d_act, dtype=dtype, device=device)
    if soft_w is not None:
        soft_w = soft_w.masked_fill(frozen, 0.0)
    return Inpainting(frozen, values, soft_w, soft_t)


def rtc_soft_weights(horizon: int, delay: int, execute: int) -> Tensor:
    """The soft mask W (H,) of real-time chunking (Black et al. 2025, eq. 5): 1 on the first
    ``delay`` = d steps (frozen), an exponential decay c_i (e^c_i - 1) / (e - 1) with
    c_i = (H - s - i) / (H - s - d + 1) on steps d <= i < H - s, and 0 on the last ``execute`` = s
    steps (those the previous plan does not cover). Requires 0 <= d <= H - s."""
    h, d, s = int(horizon), int(delay), int(execute)
    if not (h >= 1 and 0 <= s <= h and 0 <= d <= h - s):
        raise ValueError(f"rtc_soft_weights needs 0 <= delay <= horizon - execute, got H={h}, d={d}, s={s}")
    w = torch.zeros(h)
    w[:d] = 1.0
    for i in range(d, h - s):
        c = (h - s - i) / (h - s - d + 1)
        w[i] = c * (math.exp(c) - 1.0) / (math.e - 1.0)
    return w


def flow_guidance_weight(tau: float, max_weight: float = DEFAULT_MAX_GUIDANCE_WEIGHT) -> float:
    """The guidance weight of real-time chunking at flow time tau in [0, 1] (t = 1 the data):
    min(beta, (1 - tau) / (tau r_tau^2)) with r_tau^2 = (1 - tau)^2 / (tau^2 + (1 - tau)^2), i.e.
    min(beta, (tau^2 + (1 - tau)^2) / (tau (1 - tau))); beta where that is unbounded (tau = 0 or 1)."""
    if tau <= 0.0 or tau >= 1.0:
        return float(max_weight)
    return float(min(max_weight, (tau * tau + (1.0 - tau) ** 2) / (tau * (1.0 - tau))))


def guided_flow_velocity(
    velocity_fn, x: Tensor, tau: float, target: Tensor, weights: Tensor, max_weight: float
) -> Tensor:
    """One step of real-time chunking guidance for a flow (x_tau = (1 - tau) noise + tau data):

        x1_hat = x + (1 - tau) v(x)
        v_guided = v(x) + w(tau) * (Y - x1_hat)^T diag(W) d x1_hat / d x     (a vector-Jacobian product)

    velocity_fn: x (B, H, D) -> v (B, H, D); target Y (B, H, D); weights W (B, H). Returns v_guided
    (detached). Costs one forward and one backward through the network."""
    with torch.enable_grad():
        xg = x.detach().requires_grad_(True)
        v = velocity_fn(xg)
        x1 = xg + (1.0 - tau) * v
        err = (target - x1.detach()) * weights.unsqueeze(-1)
        (g,) = torch.autograd.grad(x1, xg, grad_outputs=err)
    return v.detach() + flow_guidance_weight(tau, max_weight) * g


def diffusion_guidance_scale(alpha_bar: float, max_weight: float = DEFAULT_MAX_GUIDANCE_WEIGHT) -> float:
    """The flow guidance weight carried over to a variance-preserving diffusion step at
    abar = alpha_bar: x_t / (sqrt(abar) + sqrt(1 - abar)) is the flow point x_tau with
    tau = sqrt(abar) / (sqrt(abar) + sqrt(1 - abar)) and r_tau^2 = 1 - abar, so the flow's velocity
    correction w(tau) g_tau is the score correction c g_t with
    c = min(beta sqrt(abar / (1 - abar)), 1 / (1 - abar)) (g_t: the vector-Jacobian product w.r.t. x_t).
    Returns c."""
    a = float(alpha_bar)
    if a >= 1.0:
        return float("inf")
    return float(min(max_weight * math.sqrt(a / (1.0 - a)), 1.0 / (1.0 - a)))
