"""Energy-Based Transformer action head (EBT-Policy).

E(context, a) is a transformer over the action-chunk tokens (self-attention among them,
cross-attention to the context) whose per-token outputs (B, H, D) are averaged into one scalar
per sample. Actions are produced by minimizing E over a with a few gradient steps
(:mod:`vla_ebt.heads.energy_minimizer`); training unrolls those steps and supervises every
iterate with behaviour cloning.

Objectives
----------
``reference``  Start from N(0, I), unroll K = k_min + randint(0, k_rand) steps, loss = mean over
               steps of MSE(a_k, target). Matches the EBT-Policy paper; because the random start
               carries no information about *which* demonstrated mode to produce, it learns the
               average of several modes, exactly like a regression head.
``shaped``     (default, multimodal) Adds an energy-shaping InfoNCE term: the demonstrated chunk
               must have lower energy than perturbed copies of itself and than the chain's own
               predictions, so *every* demonstrated mode is a basin. The unrolled chain starts from
               the target plus noise of a random scale (the start then says which basin to
               descend into) instead of pure noise, so descent learns to fall into the nearest
               basin instead of the mean. Inference samples several starts with Langevin noise and
               keeps the lowest-energy candidate (best-of-N) or a random one of the low-energy
               candidates.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import ActionHead, ChunkPrediction, Context, masked_mse
from .energy_minimizer import cosine_sigmas, minimize_energy
from .trunk import ActionTrunk, TrunkConfig


@dataclass
class EBTConfig:
    """EBT head hyperparameters. Reference values from the EBT-Policy paper noted inline."""

    trunk: TrunkConfig = field(default_factory=TrunkConfig)
    horizon: int = 16
    action_dim: int = 7
    objective: Literal["reference", "wta", "denoise"] = "wta"
    start_sigma_min: float = 0.0
    start_sigma_max: float = 1.0
    # --- minimizer ---
    alpha: float = 1000.0  # reference 1000; energy = mean over H*D, so raw gradients are ~1e-3
    alpha_jitter: float = 1.5  # training: per-sample alpha ~ U[alpha/j, alpha*j]
    learnable_alpha: bool = False
    momentum: float = 0.9
    temperature: float = 1.0
    energy_clamp: float = 5.0  # exp(E) in the step size uses E clamped to [-c, c]
    # --- training unroll ---
    train_steps_min: int = 2  # reference 6 (+0..4); 2-3 measured 3x cheaper and as good
    train_steps_rand: int = 2  # K = min + randint(0, rand) (upper bound exclusive)
    truncate: int = 0  # >0: backprop through the last `truncate` steps only
    langevin_start: float = 0.2
    langevin_end: float = 0.002
    # --- wta objective ---
    num_hypotheses: int = 4  # chains per sample in training; only the best one is fully supervised
    wta_rest_weight: float = 0.05  # small loss on the other chains keeps them near the data
    # --- optional energy shaping (InfoNCE), any objective ---
    nce_weight: float = 0.0
    nce_negatives: int = 8
    nce_noise: tuple[float, ...] = (0.05, 0.2, 0.5)
    nce_temperature: float = 1.0
    # --- inference ---
    infer_steps: int = 2  # paper headline: 2 steps
    min_grad: float = 0.0  # early exit when per-sample ||dE/da|| < min_grad (0 = off)
    num_candidates: int = 1  # best-of-N by lowest energy
    infer_noise: float = 0.0  # Langevin noise at inference (useful with num_candidates > 1)
    init_scale: float = 1.0  # a0 ~ N(0, init_scale^2)


class EBTHead(ActionHead):
    """Energy head + minimizer. Context (B, T, W) -> action chunks (B, H, D)."""

    def __init__(self, cfg: EBTConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.horizon, self.action_dim = cfg.horizon, cfg.action_dim
        self.trunk = ActionTrunk(cfg.trunk, cfg.horizon, cfg.action_dim, out_dim=cfg.action_dim)
        log_alpha = torch.tensor(math.log(cfg.alpha))
        if cfg.learnable_alpha:
            self.log_alpha = nn.Parameter(log_alpha)
        else:
            self.register_buffer("log_alpha", log_alpha)

    # ---------------------------------------------------------------- energy
    def energy(self, context: Context, actions: Tensor) -> Tensor:
        """E(context, a): (B, H, D) -> (B,), the mean of the per-token, per-dim outputs."""
        out = self.trunk(actions, context.tokens, context.mask)
        return out.flatten(1).mean(1)

    def _alpha(self, batch: int, jitter: bool) -> Tensor:
        alpha = self.log_alpha.exp()
        if jitter and self.cfg.alpha_jitter > 1.0:
            j = self.cfg.alpha_jitter
            u = torch.rand(batch, device=alpha.device)
            return alpha * (1.0 / j + u * (j - 1.0 / j))
        return alpha.expand(batch)

    # ---------------------------------------------------------------- training
    def compute_loss(
        self, context: Context, target: Tensor, mask: Tensor | None = None
    ) -> tuple[Tensor, dict[str, float]]:
        cfg = self.cfg
        b = target.shape[0]
        k = cfg.train_steps_min + int(torch.randint(0, max(cfg.train_steps_rand, 1), ()).item())
        n = cfg.num_hypotheses if cfg.objective == "wta" else 1
        ctx = context.repeat_interleave(n) if n > 1 else context
        tgt = target.repeat_interleave(n, 0) if n > 1 else target
        msk = mask.repeat_interleave(n, 0) if (n > 1 and mask is not None) else mask
        if cfg.objective == "denoise":
            sig = cfg.start_sigma_min + torch.rand(tgt.shape[0], 1, 1) * (cfg.start_sigma_max - cfg.start_sigma_min)
            a0 = tgt + sig * torch.randn_like(tgt)
        else:
            a0 = torch.randn_like(tgt) * cfg.init_scale
        res = minimize_energy(
            lambda a: self.energy(ctx, a),
            a0,
            num_steps=k,
            alpha=self._alpha(b * n, jitter=True),
            momentum=cfg.momentum,
            temperature=cfg.temperature,
            energy_clamp=cfg.energy_clamp,
            noise_sigmas=cosine_sigmas(k, cfg.langevin_start, cfg.langevin_end),
            create_graph=True,
            truncate=cfg.truncate,
        )
        # per-chain BC loss, mean over the unrolled steps: (B * n,)
        per_chain = torch.stack([_per_sample_mse(a, tgt, msk) for a in res.iterates]).mean(0)
        if n > 1:
            per_chain = per_chain.view(b, n)
            best = per_chain.detach().argmin(1)
            win = per_chain.gather(1, best[:, None]).squeeze(1)
            bc = win.mean() + cfg.wta_rest_weight * per_chain.mean()
        else:
            bc = per_chain.mean()
        final = res.final.detach().view(b, n, *target.shape[1:])[:, 0]
        info = {
            "bc_loss": bc.item(),
            "final_mse": masked_mse(final, target, mask).item(),
            "energy_start": res.energies[0].mean().item(),
            "energy_end": res.energies[-1].mean().item(),
            "unroll_steps": float(k),
        }
        loss = bc
        if cfg.nce_weight > 0:
            nce = self._nce_loss(context, target, mask, final)
            loss = loss + cfg.nce_weight * nce
            info["nce_loss"] = nce.item()
        info["loss"] = loss.item()
        return loss, info

    def _nce_loss(self, context: Context, target: Tensor, mask: Tensor | None, pred: Tensor) -> Tensor:
        """InfoNCE: the target must have the lowest energy among itself and negatives.

        Negatives per sample: perturbed targets at several scales, the chain's own prediction
        (when it is not already the target) and uniform draws in [-1, 1]. Padded entries of the
        negatives are copied from the target so padding never tells them apart.
        """
        cfg = self.cfg
        b, h, d = target.shape
        n = cfg.nce_negatives
        scales = torch.tensor(cfg.nce_noise, device=target.device)
        pick = scales[torch.randint(0, len(scales), (b, n - 2), device=target.device)]
        perturbed = target[:, None] + pick[..., None, None] * torch.randn(b, n - 2, h, d, device=target.device)
        uniform = torch.rand(b, 1, h, d, device=target.device) * 2 - 1
        negs = torch.cat([perturbed, pred[:, None], uniform], dim=1)  # (B, n, H, D)
        if mask is not None:
            m = mask if mask.dim() == 3 else mask[..., None].expand_as(target)
            negs = torch.where(m[:, None].bool(), negs, target[:, None])
        cands = torch.cat([target[:, None], negs], dim=1)  # (B, n+1, H, D)
        e = self.energy(context.repeat_interleave(n + 1), cands.flatten(0, 1)).view(b, n + 1)
        # alpha * E is the energy in the units the minimizer steps in (a step moves a by
        # alpha * dE/da), so the temperature is comparable across alpha settings.
        logits = -e * self.log_alpha.exp().detach() / cfg.nce_temperature
        return F.cross_entropy(logits, torch.zeros(b, dtype=torch.long, device=target.device))

    # ---------------------------------------------------------------- inference
    def predict(
        self,
        context: Context,
        init: Tensor | None = None,
        *,
        num_steps: int | None = None,
        min_grad: float | None = None,
        num_candidates: int | None = None,
        noise: float | None = None,
        return_trace: bool = False,
    ) -> ChunkPrediction:
        """Minimize the energy from ``init`` (B, H, D) (warm start) or from noise.

        With num_candidates = N > 1 every sample starts N chains (the warm start, if any, is the
        first of them) and keeps the one with the lowest final energy. Reports per sample the
        steps used, the final energy and the final ||dE/da||.
        """
        cfg = self.cfg
        steps = cfg.infer_steps if num_steps is None else num_steps
        mg = cfg.min_grad if min_grad is None else min_grad
        n = cfg.num_candidates if num_candidates is None else num_candidates
        sig = cfg.infer_noise if noise is None else noise
        b = context.batch_size
        ctx = context.detach()
        shape = (b, n, self.horizon, self.action_dim)
        a0 = torch.randn(shape, device=ctx.tokens.device, dtype=ctx.tokens.dtype) * cfg.init_scale
        if init is not None:
            a0[:, 0] = init.to(a0.dtype)
        ctx_n = ctx.repeat_interleave(n) if n > 1 else ctx
        energy_fn = lambda a: self.energy(ctx_n, a)  # noqa: E731
        res = minimize_energy(
            energy_fn,
            a0.flatten(0, 1),
            num_steps=steps,
            alpha=self._alpha(b * n, jitter=False).detach(),
            momentum=cfg.momentum,
            temperature=cfg.temperature,
            energy_clamp=cfg.energy_clamp,
            noise_sigmas=[sig] * steps if sig > 0 else None,
            create_graph=False,
            min_grad=mg,
        )
        final = res.final.detach()
        # One last forward + backward at the final point: its energy ranks the candidates and
        # its gradient norm is what the caller sees as "how converged" the chunk is.
        with torch.enable_grad():
            x = final.clone().requires_grad_(True)
            e_final = energy_fn(x)
            (g,) = torch.autograd.grad(e_final.sum(), x)
        e_final, gn = e_final.detach().view(b, n), g.flatten(1).norm(dim=1).view(b, n)
        best = e_final.argmin(1)
        idx = torch.arange(b, device=best.device)
        actions = final.view(b, n, self.horizon, self.action_dim)[idx, best]
        trace = None
        if return_trace:
            trace = torch.cat([res.energies, e_final.view(1, -1)]).view(-1, b, n)[:, idx, best]
        return ChunkPrediction(
            actions=actions,
            steps=res.steps.view(b, n)[idx, best],
            nfe=res.nfe + 1,
            energy=e_final[idx, best],
            grad_norm=gn[idx, best],
            energy_trace=trace,
        )


def _per_sample_mse(pred: Tensor, target: Tensor, mask: Tensor | None) -> Tensor:
    """Masked MSE per sample: (B, H, D) x2 -> (B,)."""
    err = (pred - target).pow(2)
    if mask is None:
        return err.flatten(1).mean(1)
    m = mask.to(err.dtype)
    if m.dim() == 2:
        m = m.unsqueeze(-1).expand_as(err)
    return (err * m).flatten(1).sum(1) / m.flatten(1).sum(1).clamp_min(1.0)
