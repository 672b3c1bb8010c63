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

Inference extras (docs/realtime.md): a :class:`Constraint` clamps committed entries and pulls others
toward a target (inpainting), ``deadline`` stops the chain when the next evaluation would not fit
(anytime), ``final_eval`` evaluates the returned chunk's own energy, and ``select_best`` keeps the
lowest-energy chunk evaluated.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
from torch import Tensor

EnergyFn = Callable[[Tensor], Tensor]  # (B, H, D) -> (B,)


@dataclass
class Constraint:
    """Inpainting at inference (docs/realtime.md): clamped entries and a quadratic pull.

    frozen: (B, H, 1) or (B, H, D) bool, entries held at ``values`` (B, H, D): set at the start and
    after every step, their gradient masked (excluded from the step and from ||g||).
    pull: (B, H, 1) or (B, H, D) float >= 0 (or None), pull_target (B, H, D): adds
    P(a) = 1/2 sum pull * (a - pull_target)^2 to the energy. The minimizer takes its step on P
    in closed form (the proximal step of a quadratic, stable for any step size): after the gradient
    step z = a~ - alpha_eff g, a = (z + alpha_eff pull y) / (1 + alpha_eff pull).
    """

    frozen: Tensor
    values: Tensor
    pull: Tensor | None = None
    pull_target: Tensor | None = None

    def clamp(self, a: Tensor) -> Tensor:
        return torch.where(self.frozen, self.values.to(a.dtype), a)

    def penalty(self, a: Tensor) -> Tensor:
        """P(a) per sample (B,) (0 without a pull)."""
        if self.pull is None:
            return a.new_zeros(a.shape[0])
        return 0.5 * (self.pull * (a - self.pull_target).pow(2)).flatten(1).sum(1)

    def prox(self, z: Tensor, step: Tensor) -> Tensor:
        """argmin_a 1/2 ||a - z||^2 + step * P(a); step (B, 1, 1)."""
        if self.pull is None:
            return z
        sp = step * self.pull
        return (z + sp * self.pull_target) / (1.0 + sp)


@dataclass
class MinimizerResult:
    """What one minimization produced.

    iterates:    list of K tensors (B, H, D), a after every step (graph kept where requested).
    energies:    (K_eval, B) energy at each look-ahead point evaluated (detached); with
                 ``final_eval`` the last row is the final iterate's.
    grad_norms:  (K_eval, B) ||dE/da|| at each look-ahead point (detached; free entries only).
    steps:       (B,) long, updates actually applied to each sample.
    nfe:         trunk evaluations (each is one forward + one backward w.r.t. a).
    eval_ms:     wall time of each evaluation (forward + backward + update), in order.
    stopped_by_deadline: the deadline ended the chain before ``num_steps`` steps.
    best:        with ``select_best``: per sample the evaluated chunk (B, H, D) with the lowest
                 energy + penalty, its energy (B,), gradient norm (B,) and evaluation index (B,).
    """

    iterates: list[Tensor]
    energies: Tensor
    grad_norms: Tensor
    steps: Tensor
    nfe: int
    final: Tensor = field(init=False)
    eval_ms: list[float] = field(default_factory=list)
    stopped_by_deadline: bool = False
    best: tuple[Tensor, Tensor, Tensor, Tensor] | None = None
    elapsed_ms: float = 0.0

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
    constraint: Constraint | None = None,
    deadline: float | None = None,
    final_eval: bool = False,
    final_energy_fn: EnergyFn | None = None,
    select_best: bool = False,
) -> MinimizerResult:
    """Minimize ``energy_fn`` over actions starting from ``a0`` (B, H, D).

    alpha: scalar or (B,) step size (may carry a graph when it is learnable).
    create_graph: keep second-order graph (training). truncate > 0 keeps it for the last
    ``truncate`` steps only; earlier steps run first-order and are detached.
    min_grad > 0: inference early exit; samples whose ||g|| < min_grad stop moving.
    energy_fn may be a sequence of ``num_steps`` functions, step k using the k-th (an energy
    conditioned on the step, e.g. the "path" objective's noise level); step_scales (one per step)
    multiply alpha at each step.

    Inference only (docs/realtime.md):
    constraint: clamp / pull (:class:`Constraint`).
    final_eval: evaluate the energy and gradient at the final iterate too (one more evaluation, with
    ``final_energy_fn`` if given), so that the returned chunk's own energy is known.
    deadline: a ``time.perf_counter()`` value. The first evaluation always runs; every later one
    runs only if the longest evaluation so far in this call still fits before the deadline, counting
    the final evaluation it will need (so the time spent stays within the deadline plus at most
    one evaluation's time). Stopping early leaves ``steps`` below ``num_steps``.
    select_best: keep the evaluated chunk of lowest energy + penalty per sample (``best``).
    """
    t_start = time.perf_counter()
    b = a0.shape[0]
    alpha = alpha.reshape(-1) if alpha.dim() else alpha.reshape(1)
    if alpha.numel() == 1:
        alpha = alpha.expand(b)
    a = a0 if constraint is None else constraint.clamp(a0)
    free = None if constraint is None else (~constraint.frozen).to(a0.dtype)
    v = torch.zeros_like(a0)
    active = torch.ones(b, dtype=torch.bool, device=a0.device)
    steps = torch.zeros(b, dtype=torch.long, device=a0.device)
    iterates: list[Tensor] = []
    energies, grad_norms, eval_ms = [], [], []
    best = None
    nfe = 0
    stopped = skip_final = False
    reserve = 1 if final_eval else 0
    last_evaluated = False  # whether the current a is the point evaluated last

    def evaluate(fn: EnergyFn, x: Tensor, graph: bool) -> tuple[Tensor, Tensor, Tensor]:
        if not x.requires_grad:
            x = x.requires_grad_(True)
        with torch.enable_grad():
            e = fn(x)
            (g,) = torch.autograd.grad(e.sum(), x, create_graph=graph)
        if free is not None:
            g = g * free
        return e, g, g.detach().flatten(1).norm(dim=1)

    def record(x: Tensor, e: Tensor, gn: Tensor) -> None:
        nonlocal best
        energies.append(e.detach())
        grad_norms.append(gn)
        if select_best:
            idx = len(energies) - 1
            score = e.detach() + (constraint.penalty(x.detach()) if constraint is not None else 0.0)
            if best is None:
                best = (x.detach(), e.detach(), gn, torch.full_like(steps, idx), score)
            else:
                better = score < best[4]
                bx = torch.where(better.view(b, 1, 1), x.detach(), best[0])
                best = (bx, torch.where(better, e.detach(), best[1]), torch.where(better, gn, best[2]),
                        torch.where(better, torch.full_like(steps, idx), best[3]), torch.where(better, score, best[4]))

    for k in range(num_steps):
        t0 = time.perf_counter()
        if deadline is not None and eval_ms and t0 + (1 + reserve) * max(eval_ms) / 1e3 > deadline:
            stopped = True  # this evaluation (+ the final one) would end past the deadline
            break
        graph_here = create_graph and (truncate <= 0 or k >= num_steps - truncate)
        if not graph_here:
            a, v = a.detach(), v.detach()
        look = a + momentum * v
        fn = energy_fn[k] if isinstance(energy_fn, Sequence) else energy_fn
        e, g, gn = evaluate(fn, look, graph_here)
        nfe += 1
        record(look, e, gn)
        last_evaluated = k == 0  # v = 0 before the first step: the look-ahead point is a itself
        if min_grad > 0:
            active = active & (gn >= min_grad)
            if not bool(active.any()):
                eval_ms.append((time.perf_counter() - t0) * 1e3)
                break
        if deadline is not None and reserve:
            so_far = (time.perf_counter() - t0) * 1e3
            if time.perf_counter() + max(eval_ms + [so_far]) / 1e3 > deadline:
                # no time left to evaluate what this step would produce: keep what was evaluated
                eval_ms.append(so_far)
                stopped = skip_final = True
                break
        scale = torch.exp(e.detach().clamp(-energy_clamp, energy_clamp)) / temperature
        step = (alpha * scale).view(b, 1, 1)
        if step_scales is not None:
            step = step * step_scales[k]
        if not graph_here:
            step = step.detach()
            g = g.detach()
        if constraint is None:
            new_v = momentum * v - step * g
        else:  # gradient step on E, closed-form (proximal) step on the pull
            new_v = constraint.prox(look - step * g, step) - a
        if min_grad > 0:
            keep = active.view(b, 1, 1)
            new_v = torch.where(keep, new_v, v)
            new_a = torch.where(keep, a + new_v, a)
        else:
            new_a = a + new_v
        if noise_sigmas is not None and noise_sigmas[k] > 0:
            new_a = new_a + noise_sigmas[k] * torch.randn_like(new_a)
        if constraint is not None:
            new_a = constraint.clamp(new_a)
            new_v = new_v * free
        a, v = new_a, new_v
        steps = steps + active.long()
        iterates.append(a)
        last_evaluated = False
        eval_ms.append((time.perf_counter() - t0) * 1e3)
    if final_eval and not last_evaluated and not skip_final:
        t0 = time.perf_counter()
        fn = final_energy_fn or (energy_fn[-1] if isinstance(energy_fn, Sequence) else energy_fn)
        e, _, gn = evaluate(fn, a.detach(), False)
        nfe += 1
        record(a.detach(), e, gn)
        eval_ms.append((time.perf_counter() - t0) * 1e3)
    if not iterates:  # converged (or out of time) before the first update: the start is the answer
        iterates.append(a.detach())
    res = MinimizerResult(
        iterates=iterates,
        energies=torch.stack(energies),
        grad_norms=torch.stack(grad_norms),
        steps=steps,
        nfe=nfe,
        eval_ms=eval_ms,
        stopped_by_deadline=stopped,
        best=None if best is None else best[:4],
        elapsed_ms=(time.perf_counter() - t_start) * 1e3,
    )
    return res
