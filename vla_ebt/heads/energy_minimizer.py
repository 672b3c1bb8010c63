"""Energy minimization over action chunks: the one optimizer used in training *and* inference.

Nesterov-accelerated gradient descent on E(context, a) with an energy-scaled step size

    a~ = a + mu * v                     (look-ahead)
    g  = dE/da~                         (per-sample energy gradient)
    alpha_eff = alpha * exp(E(a~)) / T  (higher energy -> larger step; exp argument clamped)
    v <- mu * v - alpha_eff * g
    a <- a + v (+ Langevin noise in training)

In training the chain is unrolled with ``create_graph=True`` so a loss on the iterates
backpropagates through every step (second order); ``truncate=k`` keeps the graph for the last k
steps only. At inference the chain stops per sample when ||g|| (the per-sample L2 norm of dE/da
over all H x D entries) falls below ``min_grad``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
from torch import Tensor

EnergyFn = Callable[[Tensor], Tensor]  # (B, H, D) -> (B,)


@dataclass
class MinimizerResult:
    """What one minimization produced.

    iterates:    list of K tensors (B, H, D), a after every step (graph kept where requested).
    energies:    (K_eval, B) energy at each look-ahead point evaluated (detached).
    grad_norms:  (K_eval, B) ||dE/da|| at each look-ahead point (detached).
    steps:       (B,) long, updates actually applied to each sample.
    nfe:         trunk evaluations (each is one forward + one backward w.r.t. a).
    """

    iterates: list[Tensor]
    energies: Tensor
    grad_norms: Tensor
    steps: Tensor
    nfe: int
    final: Tensor = field(init=False)

    def __post_init__(self) -> None:
        self.final = self.iterates[-1]


def cosine_sigmas(num_steps: int, start: float, end: float) -> list[float]:
    """Langevin noise per step, cosine-annealed from ``start`` (step 0) to ``end`` (last step)."""
    if num_steps <= 1:
        return [start] * num_steps
    return [
        end + 0.5 * (start - end) * (1 + math.cos(math.pi * k / (num_steps - 1)))
        for k in range(num_steps)
    ]


def minimize_energy(
    energy_fn: EnergyFn | Sequence[EnergyFn],
    a0: Tensor,
    *,
    num_steps: int,
    alpha: Tensor,
    momentum: float = 0.9,
    temperature: float = 1.0,
    energy_clamp: float = 5.0,
    noise_sigmas: list[float] | None = None,
    create_graph: bool = False,
    truncate: int = 0,
    min_grad: float = 0.0,
    step_scales: Sequence[float] | None = None,
) -> MinimizerResult:
    """Minimize ``energy_fn`` over actions starting from ``a0`` (B, H, D).

    alpha: scalar or (B,) step size (may carry a graph when it is learnable).
    create_graph: keep second-order graph (training). truncate > 0 keeps it for the last
    ``truncate`` steps only; earlier steps run first-order and are detached.
    min_grad > 0: inference early exit; samples whose ||g|| < min_grad stop moving.
    energy_fn may be a sequence of ``num_steps`` functions, step k using the k-th (an energy
    conditioned on the step, e.g. the "path" objective's noise level); step_scales (one per step)
    multiply alpha at each step.
    """
    b = a0.shape[0]
    alpha = alpha.reshape(-1) if alpha.dim() else alpha.reshape(1)
    if alpha.numel() == 1:
        alpha = alpha.expand(b)
    a = a0
    v = torch.zeros_like(a0)
    active = torch.ones(b, dtype=torch.bool, device=a0.device)
    steps = torch.zeros(b, dtype=torch.long, device=a0.device)
    iterates: list[Tensor] = []
    energies, grad_norms = [], []
    nfe = 0
    for k in range(num_steps):
        graph_here = create_graph and (truncate <= 0 or k >= num_steps - truncate)
        if not graph_here:
            a, v = a.detach(), v.detach()
        look = a + momentum * v
        if not look.requires_grad:
            look = look.requires_grad_(True)
        fn = energy_fn[k] if isinstance(energy_fn, Sequence) else energy_fn
        with torch.enable_grad():
            e = fn(look)
            (g,) = torch.autograd.grad(e.sum(), look, create_graph=graph_here)
        nfe += 1
        gn = g.detach().flatten(1).norm(dim=1)
        energies.append(e.detach())
        grad_norms.append(gn)
        if min_grad > 0:
            active = active & (gn >= min_grad)
            if not bool(active.any()):
                break
        scale = torch.exp(e.detach().clamp(-energy_clamp, energy_clamp)) / temperature
        step = (alpha * scale).view(b, 1, 1)
        if step_scales is not None:
            step = step * step_scales[k]
        if not graph_here:
            step = step.detach()
            g = g.detach()
        new_v = momentum * v - step * g
        if min_grad > 0:
            keep = active.view(b, 1, 1)
            new_v = torch.where(keep, new_v, v)
            new_a = torch.where(keep, a + new_v, a)
        else:
            new_a = a + new_v
        if noise_sigmas is not None and noise_sigmas[k] > 0:
            new_a = new_a + noise_sigmas[k] * torch.randn_like(new_a)
        a, v = new_a, new_v
        steps = steps + active.long()
        iterates.append(a)
    if not iterates:  # converged before the first update: the start already is the answer
        iterates.append(a0.detach())
    return MinimizerResult(
        iterates=iterates,
        energies=torch.stack(energies),
        grad_norms=torch.stack(grad_norms),
        steps=steps,
        nfe=nfe,
    )
