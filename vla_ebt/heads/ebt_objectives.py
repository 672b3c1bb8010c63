"""Generative training objectives for the EBT head: the energy's minima are the demonstrated modes.

Both objectives train the EBT's own scalar energy E(context, a) (``EBTHead.energy``: the mean of the
trunk's (B, H, D) outputs) through its gradient: ``field(a) = s * dE/da`` with s = H * D (the energy is
a mean over H * D outputs, so s makes the field O(1) per action entry), computed with
``create_graph=True`` so a loss on the field trains the energy (second order, one double backward).
Inference is the EBT minimizer unchanged in kind: gradient descent on E from noise (optionally
Nesterov), with a fixed step size instead of the exp(E)-scaled one (the step rule of each objective is
below), early stop by ||dE/da``||, best-of-N by lowest final energy.

``eqm``: Equilibrium Matching (Wang & Du 2025, arXiv 2510.02300), explicit-energy form.
    x_g = g * x + (1 - g) * eps, g ~ U[0, 1], eps ~ N(0, I), x the demonstrated chunk;
    target field (eps - x) * c(g); loss = masked MSE(field(x_g), target). c vanishes at the data, so
    the demonstrations are minima (zero gradient) of E:
    "truncated" (the paper's):  c(g) = lam * min(1, (1 - g) / (1 - a));
    "linear":                   c(g) = lam * (1 - g), i.e. target = lam * (x_g - x): the field is lam times
                                (a - E[x | a]), a descent step of eta moves lam * eta of the way to the
                                posterior mean of the demonstrations given a.
    Sampling: a_{k+1} = a_k - eta * field(a_k + mu * v_k) (Nesterov mu, 0 = plain), eta fixed
    (time-invariant: the same step at every k and for every step count).

``energy_matching``: Energy Matching (Balcerak et al., NeurIPS 2025, arXiv 2504.10612).
    Flow term (the paper's L_OT): a_t = (1 - t) * x0 + t * x, x0 ~ N(0, I), t ~ U[0, 1]; the potential's
    negative gradient regresses the straight-line (OT) velocity: MSE(-field(a_t), x - x0). The batch
    holds one demonstration per context, so the noise-data coupling is the independent one (the
    conditional OT paths are straight lines; mini-batch OT across different contexts would couple
    chunks of different observations). After ``em_warmup`` training calls (phase 2) the flow term is
    weighted w(t) = 1 for t < tau*, (1 - t) / (1 - tau*) above (the paper's near-data decay) and the
    contrastive term is added: lambda_cd * (mean V(x) - mean V(x_neg)), V = s * E, clamped below at
    -em_cd_clamp; negatives x_neg come from short chains of the model itself (half of the batch
    started at the demonstration, half at noise), x <- x - dt * field(x) + sqrt(2 * eps(t) * dt) * N(0, I),
    eps(t) = 0 before tau*, ramping linearly to eps_max at t = 1 (the paper's temperature schedule).
    Sampling: K Euler steps of dt = 1 / K along -field over the OT time [0, 1] (plain or Nesterov).

Both add ``gen_anchor * mean(V(x)^2)``: gradient matching leaves E's per-context constant free; this pins
the energy of a demonstration to 0 (it moves only that constant), so the final energy of a sample reads
its height above the nearest demonstrated mode, comparable across contexts.

What each choice is, its reason and what was measured: docs/ebt_objectives.md.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from .base import Context, expand_mask, masked_mean
from .energy_minimizer import minimize_energy

if TYPE_CHECKING:  # pragma: no cover
    from .ebt import EBTHead

#: objectives trained through the energy's gradient field (sampled with a fixed step, no exp(E) scaling)
GENERATIVE_OBJECTIVES = ("eqm", "energy_matching")


def field_scale(head: "EBTHead") -> float:
    """s in field = s * dE/da: H * D (E is the mean of H * D outputs)."""
    return float(head.horizon * head.action_dim)


def eqm_c(gamma: Tensor, kind: str, lam: float, a: float) -> Tensor:
    """EqM gradient magnitude c(gamma) (gamma = 1 at the data, 0 at pure noise)."""
    if kind == "truncated":
        return lam * torch.clamp((1.0 - gamma) / (1.0 - a), max=1.0)
    if kind == "linear":
        return lam * (1.0 - gamma)
    raise ValueError(f"unknown eqm_c {kind!r}; expected 'truncated' or 'linear'")


def energy_field(head: "EBTHead", context: Context, x: Tensor, create_graph: bool) -> tuple[Tensor, Tensor]:
    """(E (B,), field = s * dE/dx (B, H, D)) at x; with create_graph the field carries the parameters' graph."""
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        e = head.energy(context, x)
        (g,) = torch.autograd.grad(e.sum(), x, create_graph=create_graph)
    return e, g * field_scale(head)


def _clean_target(target: Tensor, mask: Tensor | None) -> Tensor:
    """Unsupervised (padded) entries set to 0 before noising, so their arbitrary values cannot leak
    into the energy's input (and through attention into the supervised entries), as the diffusion head does."""
    if mask is None:
        return target
    return target * expand_mask(mask, target)


def _per_sample_mse(pred: Tensor, target: Tensor, mask: Tensor | None) -> Tensor:
    """(B,) mean squared error over each sample's valid entries."""
    m = expand_mask(mask, pred)
    return ((pred - target).pow(2) * m).flatten(1).sum(1) / m.flatten(1).sum(1).clamp_min(1.0)


def _anchor(head: "EBTHead", e_data: Tensor) -> tuple[Tensor, float]:
    """gen_anchor * mean(V(x)^2) with V = s * E at the demonstrations (0 when the weight is 0)."""
    w = head.cfg.gen_anchor
    v = e_data * field_scale(head)
    if w <= 0:
        return v.new_zeros(()), 0.0
    term = v.pow(2).mean()
    return w * term, term.item()


def eqm_loss(head: "EBTHead", context: Context, target: Tensor, mask: Tensor | None) -> tuple[Tensor, dict[str, float]]:
    """Equilibrium Matching, explicit energy: field(x_g) regresses (eps - x) * c(g)."""
    cfg = head.cfg
    x = _clean_target(target, mask)
    b = x.shape[0]
    eps = torch.randn_like(x)
    gamma = torch.rand(b, 1, 1, device=x.device, dtype=x.dtype)
    x_g = gamma * x + (1.0 - gamma) * eps
    goal = (eps - x) * eqm_c(gamma, cfg.eqm_c, cfg.eqm_lambda, cfg.eqm_a)
    e, f = energy_field(head, context, x_g, create_graph=True)
    match = masked_mean((f - goal).pow(2), mask)
    e_data = head.energy(context, x)
    anchor, anchor_val = _anchor(head, e_data)
    loss = match + anchor
    return loss, {
        "loss": loss.item(),
        "eqm_loss": match.item(),
        "anchor": anchor_val,
        "energy_data": e_data.mean().item(),
        "energy_interp": e.mean().item(),
    }


def _temperature(t: Tensor, tau: float, eps_max: float) -> Tensor:
    """eps(t): 0 for t < tau, linear ramp to eps_max at t = 1, eps_max after."""
    if tau >= 1.0:
        return torch.where(t >= 1.0, torch.full_like(t, eps_max), torch.zeros_like(t))
    return eps_max * torch.clamp((t - tau) / (1.0 - tau), 0.0, 1.0)


def _negatives(head: "EBTHead", context: Context, x: Tensor) -> Tensor:
    """Short model chains (no graph): the first half of the batch starts at its demonstration (t = 1,
    Langevin at eps_max with step em_chain_dt), the second half at noise (t from 0 to 1 in
    em_chain_steps Euler steps of 1 / em_chain_steps, temperature eps(t))."""
    cfg = head.cfg
    b = x.shape[0]
    h = b // 2
    k = cfg.em_chain_steps
    s = field_scale(head)
    out = []
    for lo, hi, start, dt, ts in (
        (0, h, x[:h], cfg.em_chain_dt, [1.0] * k),
        (h, b, torch.randn_like(x[h:]), 1.0 / k, [(i + 1) / k for i in range(k)]),
    ):
        if hi <= lo:
            continue
        ctx = Context(context.tokens[lo:hi], context.mask[lo:hi])
        sig = [math.sqrt(2.0 * float(_temperature(torch.tensor(t), cfg.em_cutoff, cfg.em_eps_max)) * dt) for t in ts]
        res = minimize_energy(
            lambda a, ctx=ctx: head.energy(ctx, a),
            start.detach(),
            num_steps=k,
            alpha=torch.tensor(s * dt, device=x.device, dtype=x.dtype),
            momentum=0.0,
            energy_clamp=0.0,
            noise_sigmas=sig,
            create_graph=False,
        )
        out.append(res.final.detach())
    return torch.cat(out)


def energy_matching_loss(
    head: "EBTHead", context: Context, target: Tensor, mask: Tensor | None, phase2: bool
) -> tuple[Tensor, dict[str, float]]:
    """Energy Matching: straight-path (OT) velocity matching of -field, plus (phase 2) the clamped
    contrastive term on model-chain negatives and the near-data decay of the flow term."""
    cfg = head.cfg
    x = _clean_target(target, mask)
    b = x.shape[0]
    x0 = torch.randn_like(x)
    t = torch.rand(b, device=x.device, dtype=x.dtype)
    tt = t.view(b, 1, 1)
    x_t = (1.0 - tt) * x0 + tt * x
    e, f = energy_field(head, context, x_t, create_graph=True)
    flow = _per_sample_mse(-f, x - x0, mask)
    if phase2 and cfg.em_cutoff < 1.0:
        w = torch.clamp((1.0 - t) / (1.0 - cfg.em_cutoff), max=1.0)
        flow_loss = (w * flow).mean()
    else:
        flow_loss = flow.mean()
    e_data = head.energy(context, x)
    anchor, anchor_val = _anchor(head, e_data)
    loss = flow_loss + anchor
    info = {"flow_loss": flow_loss.item(), "anchor": anchor_val, "energy_data": e_data.mean().item(),
            "energy_interp": e.mean().item(), "phase": 2.0 if phase2 else 1.0}
    if phase2 and cfg.em_lambda_cd > 0:
        neg = _negatives(head, context, x)
        e_neg = head.energy(context, neg)
        s = field_scale(head)
        cd = cfg.em_lambda_cd * s * (e_data.mean() - e_neg.mean())
        if cfg.em_cd_clamp > 0:
            cd = torch.clamp(cd, min=-cfg.em_cd_clamp)
        loss = loss + cd
        info.update(cd_loss=cd.item(), energy_negative=e_neg.mean().item())
    info["loss"] = loss.item()
    return loss, info


def sample_step(head: "EBTHead", steps: int) -> float:
    """The minimizer's alpha for a generative objective (the field is s * dE/da): EqM a fixed eta;
    Energy Matching Euler steps of dt = 1 / steps over the OT time."""
    cfg = head.cfg
    if cfg.objective == "eqm":
        return cfg.eqm_step * field_scale(head)
    return field_scale(head) / max(steps, 1)
