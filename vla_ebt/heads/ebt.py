"""Energy-Based Transformer action head (EBT-Policy).

E(context, a): a transformer over the action-chunk tokens (self-attention among them, cross-attention
to the context) whose per-token outputs (B, H, D) are averaged into one scalar per sample (B,).
Actions are produced by minimizing E over a with a few gradient steps
(:mod:`vla_ebt.heads.energy_minimizer`), from N(0, I) or a warm start; training unrolls those steps
and supervises the iterates with behaviour cloning (``objective``: "reference", "denoise" or
"path"), or trains the energy as a generative model through its gradient field (``objective``: "eqm",
Equilibrium Matching, or "energy_matching"; :mod:`vla_ebt.heads.ebt_objectives`), optionally plus a loss
on the energy's values (``shaping``: "error" or "margin").
Unknown objective / shaping names raise ValueError. What each option does and what was measured:
docs/ebt_objectives.md.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import Tensor, nn

from .base import ActionHead, ChunkPrediction, Context, HeadCapabilities, expand_mask, masked_mse
from . import ebt_objectives as gen
from .energy_minimizer import Constraint, cosine_sigmas, minimize_energy
from .factory import register_head
from .inpainting import Inpainting
from .trunk import ActionTrunk, TrunkConfig, TrunkContext, sinusoidal_embedding

#: inference pull strength on soft-guided steps (knob ``pull``): at the base step size, E = 0 and
#: T = 1, a step moves a step of weight w a share pull * w / (1 + pull * w) of the way to its target
DEFAULT_PULL = 4.0


@dataclass
class EBTConfig:
    """EBT head hyperparameters. Reference values from the EBT-Policy paper noted inline."""

    trunk: TrunkConfig = field(default_factory=TrunkConfig)  # energy transformer size
    horizon: int = 16  # H, action-chunk length
    action_dim: int = 7  # D, (padded) action dimension
    objective: Literal["reference", "denoise", "path", "eqm", "energy_matching"] = "reference"  # docs/ebt_objectives.md
    # --- minimizer (shared by training and inference) ---
    alpha: float = 1000.0  # step size; reference 1000 (energy = mean over H*D, raw grads ~1e-3)
    alpha_jitter: float = 1.5  # training: per-sample alpha ~ U[alpha/j, alpha*j] (1 = off)
    learnable_alpha: bool = False  # make log(alpha) a trained parameter
    momentum: float = 0.9  # Nesterov momentum mu
    temperature: float = 1.0  # T in alpha_eff = alpha * exp(E) / T
    energy_clamp: float = 5.0  # exp(E) in the step size uses E clamped to [-c, c]
    # --- training unroll ---
    train_steps_min: int = 2  # reference 6 (+0..4); 2-3 measured 3x cheaper and as good
    train_steps_rand: int = 2  # K = min + randint(0, rand) (upper bound exclusive)
    truncate: int = 0  # >0: backprop through the last `truncate` steps only
    langevin_start: float = 0.2  # training Langevin noise on the iterates, cosine-annealed ...
    langevin_end: float = 0.002  # ... from langevin_start (first step) to langevin_end (last)
    start_sigma_min: float = 0.02  # "denoise": chain starts at target + sigma * N(0, I), ...
    start_sigma_max: float = 1.0  # ... sigma log-uniform in [start_sigma_min, start_sigma_max]
    # --- "path" objective (see docs/ebt_objectives.md) ---
    path_t: Literal["uniform", "grid"] = "uniform"  # training t ~ U[0, path_t_max] or the K-grid
    path_t_max: float = 0.95  # upper end of "uniform" t
    path_train_steps: int = 2  # K of the "grid" t in {0, 1/K, ..., (K-1)/K} (and of own-iterate chains)
    path_time_token: bool = False  # the energy also sees t as one extra context token (measured: no gain)
    path_scaled_steps: bool = True  # step at t moves alpha * dt / (1 - t) (False: energy learns it; grid only)
    path_teacher_forcing: bool = True  # step input = ideal path point (False: own iterates; averages)
    path_momentum: float = 0.0  # Nesterov momentum for this objective (training and inference)
    # --- "eqm" / "energy_matching" objectives (vla_ebt/heads/ebt_objectives.py, docs/ebt_objectives.md) ---
    eqm_c: Literal["truncated", "linear"] = "truncated"  # c(gamma): the paper's truncated decay, or lam * (1 - gamma)
    eqm_lambda: float = 4.0  # lam, the field's scale (paper: 4)
    eqm_a: float = 0.8  # truncation point a of the truncated c (paper: 0.8)
    eqm_step: float = 0.08  # eta, the fixed sampling step (field units); the near-data stiffness is lam / (1 - a)
    eqm_momentum: float = 0.3  # Nesterov mu of eqm sampling (0 = plain gradient descent)
    gen_anchor: float = 0.01  # weight of mean(V(x)^2), V = H*D*E at demonstrations: E(demonstration) = 0
    em_cutoff: float = 0.9  # tau*: flow-loss decay and Langevin temperature start above this t (phase 2)
    em_lambda_cd: float = 0.01  # contrastive weight lambda_cd (phase 2)
    em_cd_clamp: float = 1.0  # contrastive term clamped below at -em_cd_clamp
    em_eps_max: float = 0.01  # Boltzmann temperature eps_max of the negative chains
    em_chain_steps: int = 4  # steps of each negative chain (short: CPU)
    em_chain_dt: float = 0.05  # Langevin step of the chains started at the demonstrations
    em_warmup: int = 100  # training calls of flow-only phase 1 before the contrastive phase 2
    em_momentum: float = 0.3  # Nesterov mu of energy_matching sampling (0: Euler steps of dt = 1 / K)
    # --- inference ---
    infer_steps: int = 2  # paper headline: 2 steps
    min_grad: float = 0.0  # early exit when per-sample ||dE/da|| < min_grad (0 = off)
    num_candidates: int = 1  # best-of-N by lowest energy
    infer_noise: float = 0.0  # Langevin noise per inference step (useful with num_candidates > 1)
    init_scale: float = 1.0  # a0 ~ N(0, init_scale^2) (inference; "reference" training starts)
    # --- energy shaping (see docs/ebt_objectives.md; off by default) ---
    shaping: Literal["none", "error", "margin"] = "none"  # auxiliary loss on the energy's values
    shaping_weight: float = 10.0  # loss = bc + shaping_weight * shaping term
    shaping_margin: float = 0.1  # "margin": E(t~) >= E(t) + shaping_margin * sigma
    shaping_sigma_min: float = 0.05  # "margin": perturbation sigma, log-uniform in [min, max]
    shaping_sigma_max: float = 1.0


@register_head("ebt")
class EBTHead(ActionHead):
    """Energy head + minimizer. Context (B, T, W) -> action chunks (B, H, D)."""

    config_class = EBTConfig
    capabilities = HeadCapabilities(
        warm_start=True,
        # one evaluation = a forward and a backward w.r.t. the actions: 149 ms for 3 of them vs 23.5 ms
        # per DDIM forward (benchmarks/head_latency.py, README "Measured") -> ~2.1 forwards
        eval_cost=2.0,
        knobs={
            "num_steps": "minimizer steps (config: infer_steps)",
            "min_grad": "stop a sample when its ||dE/da|| falls below this (0 = off)",
            "num_candidates": "best-of-N chains by lowest final energy",
            "noise": "Langevin noise per inference step",
            "latency_budget_ms": "anytime: stop when the next evaluation would not fit in this many ms and "
                                 "return the lowest-energy chunk evaluated (docs/realtime.md)",
            "final_eval": "evaluate the returned chunk's own energy / gradient (one more forward + backward; "
                          "None: on with num_candidates > 1 or a latency budget, else the last step's values)",
            "pull": "inpainting: strength of the quadratic pull of soft-guided steps toward their target "
                    f"(default {DEFAULT_PULL:g}; docs/realtime.md)",
        },
        inpainting=True,
        reports_energy=True,
        second_order_loss=True,
        # the configured steps (infer_steps, 2 by default), then twice the paper's 2 steps (issue 14's 2 and 4)
        presets=(("ebt-2", {}), ("ebt-4", {"num_steps": 4})),
    )

    def __init__(self, cfg: EBTConfig) -> None:
        super().__init__()
        known = ("reference", "denoise", "path", *gen.GENERATIVE_OBJECTIVES)
        if cfg.objective not in known:
            raise ValueError(f"unknown EBT objective {cfg.objective!r}; known: {list(known)}")
        if cfg.objective == "eqm":
            gen.eqm_c(torch.zeros(1), cfg.eqm_c, cfg.eqm_lambda, cfg.eqm_a)  # validates eqm_c
        if cfg.shaping not in ("none", "error", "margin"):
            raise ValueError(f"unknown EBT shaping {cfg.shaping!r}; expected 'none', 'error' or 'margin'")
        self.cfg = cfg
        self.horizon, self.action_dim = cfg.horizon, cfg.action_dim
        self.trunk = ActionTrunk(cfg.trunk, cfg.horizon, cfg.action_dim, out_dim=cfg.action_dim)
        log_alpha = torch.tensor(math.log(cfg.alpha))
        if cfg.learnable_alpha:
            self.log_alpha = nn.Parameter(log_alpha)
        else:
            self.register_buffer("log_alpha", log_alpha)
        self.time_mlp = None
        if cfg.objective == "path" and cfg.path_time_token:
            w = cfg.trunk.width
            self.time_mlp = nn.Sequential(nn.Linear(w, 2 * w), nn.SiLU(), nn.Linear(2 * w, w))
        # training calls so far ("energy_matching" phase 1 -> 2); not saved: a resumed run warms up anew
        self._loss_calls = 0

    # ---------------------------------------------------------------- energy
    def energy(self, context: Context, actions: Tensor, t: Tensor | float | None = None) -> Tensor:
        """E(context, a): (B, H, D) -> (B,), the mean of the per-token, per-dim outputs.

        t: the path position in [0, 1] (scalar or (B,)), read only by a "path" head with
        ``path_time_token`` (as one extra context token); None means t = 1 (the clean end).
        """
        tokens, mask = context.tokens, context.mask
        if self.time_mlp is not None:
            b = actions.shape[0]
            t = torch.as_tensor(1.0 if t is None else t, dtype=torch.float32, device=actions.device)
            tok = self.time_mlp(sinusoidal_embedding(t.expand(b) * 100.0, self.cfg.trunk.width).to(tokens.dtype))
            tokens = torch.cat([tok.unsqueeze(1), tokens], dim=1)
            mask = torch.cat([torch.ones(b, 1, dtype=torch.bool, device=mask.device), mask.bool()], dim=1)
        out = self.trunk(actions, tokens, mask)
        return out.flatten(1).mean(1)

    def _path_schedule(self, steps: int) -> tuple[list[float], list[float]]:
        """Path positions t_k = k / K and step fractions (dt / (1 - t_k), or 1 when unscaled)."""
        ts = [k / steps for k in range(steps)]
        fr = [1.0 / (steps - k) if self.cfg.path_scaled_steps else 1.0 for k in range(steps)]
        return ts, fr

    def _alpha(self, batch: int, jitter: bool) -> Tensor:
        alpha = self.log_alpha.exp()
        if jitter and self.cfg.alpha_jitter > 1.0:
            j = self.cfg.alpha_jitter
            u = torch.rand(batch, device=alpha.device)
            return alpha * (1.0 / j + u * (j - 1.0 / j))
        return alpha.expand(batch)

    def _train_start(self, target: Tensor) -> Tensor:
        """Where the unrolled training chain starts: noise ("reference") or a noised target."""
        cfg = self.cfg
        if cfg.objective == "reference":
            return torch.randn_like(target) * cfg.init_scale
        lo, hi = math.log(cfg.start_sigma_min), math.log(cfg.start_sigma_max)
        u = torch.rand(target.shape[0], 1, 1, device=target.device, dtype=target.dtype)
        sigma = torch.exp(lo + u * (hi - lo))
        return target + sigma * torch.randn_like(target)

    # ---------------------------------------------------------------- training
    def compute_loss(
        self, context: Context, target: Tensor, mask: Tensor | None = None
    ) -> tuple[Tensor, dict[str, float]]:
        """Behaviour-cloning loss of the configured objective (+ the energy-shaping term, if on)."""
        cfg = self.cfg
        if self.training:
            self._loss_calls += 1
        if cfg.objective == "path":
            loss, info = self._path_loss(context, target, mask)
        elif cfg.objective == "eqm":
            loss, info = gen.eqm_loss(self, context, target, mask)
        elif cfg.objective == "energy_matching":
            phase2 = self._loss_calls > cfg.em_warmup
            loss, info = gen.energy_matching_loss(self, context, target, mask, phase2)
        else:
            loss, info = self._unrolled_loss(context, target, mask)
        if cfg.shaping != "none" and cfg.shaping_weight > 0:
            shape_loss, shape_info = self._shaping_loss(context, target, mask)
            loss = loss + cfg.shaping_weight * shape_loss
            info.update(shape_info, loss=loss.item())
        return loss, info

    def _shaping_loss(
        self, context: Context, target: Tensor, mask: Tensor | None
    ) -> tuple[Tensor, dict[str, float]]:
        """"error": E at the inference chain's output regressed onto its squared error to t (B, H, D);
        "margin": hinge E(t) + margin * sigma <= E(t + sigma * eps). Masked (padded) entries are
        neither perturbed nor counted."""
        cfg = self.cfg
        b = target.shape[0]
        m = expand_mask(mask, target)
        if cfg.shaping == "error":
            out = self.sample(context.detach(), num_candidates=1, noise=0.0, min_grad=0.0).actions.detach()
            err = ((out - target) ** 2 * m).flatten(1).sum(1) / m.flatten(1).sum(1).clamp_min(1.0)
            e = self.energy(context, out)
            # batch-centred: the energy reads the error up to a constant, so its level (which sets the
            # minimizer's step size through exp(E)) stays where the BC loss wants it
            loss = ((e - e.mean()) - (err - err.mean())).pow(2).mean()
            return loss, {"shaping_loss": loss.item(), "energy_output": e.mean().item(), "output_mse": err.mean().item()}
        lo, hi = math.log(cfg.shaping_sigma_min), math.log(cfg.shaping_sigma_max)
        sigma = torch.exp(lo + torch.rand(b, device=target.device, dtype=target.dtype) * (hi - lo))
        perturbed = target + sigma.view(b, 1, 1) * torch.randn_like(target) * m
        both = self.energy(context.repeat(2), torch.cat([target, perturbed]))
        e_t, e_p = both[:b], both[b:]
        loss = torch.relu(e_t - e_p + cfg.shaping_margin * sigma).mean()
        return loss, {"shaping_loss": loss.item(), "energy_target": e_t.mean().item(),
                      "energy_perturbed": e_p.mean().item()}

    def _unrolled_loss(
        self, context: Context, target: Tensor, mask: Tensor | None
    ) -> tuple[Tensor, dict[str, float]]:
        """"reference" / "denoise": unroll K minimizer steps and supervise every iterate."""
        cfg = self.cfg
        k = cfg.train_steps_min + int(torch.randint(0, max(cfg.train_steps_rand, 1), ()).item())
        a0 = self._train_start(target)
        res = minimize_energy(
            lambda a: self.energy(context, a),
            a0,
            num_steps=k,
            alpha=self._alpha(target.shape[0], jitter=True),
            momentum=cfg.momentum,
            temperature=cfg.temperature,
            energy_clamp=cfg.energy_clamp,
            noise_sigmas=cosine_sigmas(k, cfg.langevin_start, cfg.langevin_end),
            create_graph=True,
            truncate=cfg.truncate,
        )
        # behaviour cloning on every iterate, mean over the unrolled steps
        loss = torch.stack([masked_mse(a, target, mask) for a in res.iterates]).mean()
        info = {
            "loss": loss.item(),
            "bc_loss": loss.item(),
            "final_mse": masked_mse(res.final.detach(), target, mask).item(),
            "energy_start": res.energies[0].mean().item(),
            "energy_end": res.energies[-1].mean().item(),
            "unroll_steps": float(k),
        }
        return loss, info

    def _path_loss(
        self, context: Context, target: Tensor, mask: Tensor | None
    ) -> tuple[Tensor, dict[str, float]]:
        """Supervise steps toward the straight path a_t* = (1 - t) a0 + t target, a0 ~ N(0, I)."""
        cfg = self.cfg
        b = target.shape[0]
        a0 = torch.randn_like(target) * cfg.init_scale
        alpha = self._alpha(b, jitter=False)
        big_k = cfg.path_train_steps
        if cfg.path_teacher_forcing:
            # one step per sample from an ideal path point: a 1-step problem (one double backward)
            if cfg.path_t == "grid":
                t = torch.randint(0, big_k, (b,), device=target.device).to(target.dtype) / big_k
            else:
                t = torch.rand(b, device=target.device, dtype=target.dtype) * cfg.path_t_max
            tt = t.view(b, 1, 1)
            start = (1 - tt) * a0 + tt * target
            if cfg.path_scaled_steps:
                # a full-size step predicts the target (a fractional step of it lands on the path)
                res = minimize_energy(
                    lambda a: self.energy(context, a, t), start, num_steps=1, alpha=alpha, momentum=0.0,
                    temperature=cfg.temperature, energy_clamp=cfg.energy_clamp, create_graph=True,
                )
                loss = masked_mse(res.final, target, mask)
            else:
                if cfg.path_t != "grid":
                    raise ValueError("path_scaled_steps=False needs path_t='grid'")
                res = minimize_energy(
                    lambda a: self.energy(context, a, t), start, num_steps=1, alpha=alpha, momentum=0.0,
                    temperature=cfg.temperature, energy_clamp=cfg.energy_clamp, create_graph=True,
                )
                nxt = start + (target - a0) / big_k
                loss = masked_mse(res.final, nxt, mask) * big_k**2
        else:
            ts, fr = self._path_schedule(big_k)
            res = minimize_energy(
                [lambda a, tk=tk: self.energy(context, a, tk) for tk in ts], a0, num_steps=big_k,
                alpha=alpha, momentum=cfg.path_momentum, temperature=cfg.temperature,
                energy_clamp=cfg.energy_clamp, create_graph=True, step_scales=fr,
            )
            losses = []
            for k, a in enumerate(res.iterates):
                tk = (k + 1) / big_k
                losses.append(masked_mse(a, (1 - tk) * a0 + tk * target, mask) * big_k**2)
            loss = torch.stack(losses).mean()
        info = {"loss": loss.item(), "bc_loss": loss.item(), "unroll_steps": float(len(res.iterates)),
                "energy_start": res.energies[0].mean().item(), "energy_end": res.energies[-1].mean().item()}
        return loss, info

    # ---------------------------------------------------------------- inference
    def _energy_cached(self, tc: TrunkContext, actions: Tensor, t: Tensor | float | None = None) -> Tensor:
        """:meth:`energy` on a context prepared once per chunk (``trunk.encode_context``)."""
        extra = None
        if self.time_mlp is not None:
            b = actions.shape[0]
            t = torch.as_tensor(1.0 if t is None else t, dtype=torch.float32, device=actions.device)
            tok = self.time_mlp(sinusoidal_embedding(t.expand(b) * 100.0, self.cfg.trunk.width).to(tc.tokens.dtype))
            extra = tok.unsqueeze(1)
        return self.trunk(actions, extra, None, context=tc).flatten(1).mean(1)

    def sample(
        self,
        context: Context,
        init: Tensor | None = None,
        inpaint: Inpainting | None = None,
        *,
        num_steps: int | None = None,
        min_grad: float | None = None,
        num_candidates: int | None = None,
        noise: float | None = None,
        latency_budget_ms: float | None = None,
        final_eval: bool | None = None,
        pull: float | None = None,
    ) -> ChunkPrediction:
        """Minimize the energy from ``init`` (B, H, D) (warm start) or from noise.

        With num_candidates = N > 1 every sample starts N chains (the warm start, if any, is the
        first of them) and keeps the one with the lowest final energy. Reports per sample the
        steps used, the energy, the ||dE/da|| and the energy trace (one row per evaluation).

        final_eval (None: on when N > 1 or with a latency budget): evaluate the returned chunk's own
        energy and gradient (one more forward + backward). Off, ``energy`` / ``grad_norm`` are those of
        the last step's evaluation (the look-ahead point the last step was taken from).
        inpaint (docs/realtime.md): frozen steps are clamped (set, gradient masked); soft steps add
        the pull P = 1/2 (pull / alpha) sum_i w_i ||a_i - y_i||^2 to the energy, stepped in closed form.
        latency_budget_ms (anytime): the minimizer stops when its next evaluation would not fit in the
        budget (measured from this call's start) and returns the lowest-energy chunk it evaluated.
        """
        t_start = time.perf_counter()
        cfg = self.cfg
        steps = cfg.infer_steps if num_steps is None else num_steps
        mg = cfg.min_grad if min_grad is None else min_grad
        n = cfg.num_candidates if num_candidates is None else num_candidates
        sig = cfg.infer_noise if noise is None else noise
        if latency_budget_ms is not None and not (math.isfinite(latency_budget_ms) and latency_budget_ms >= 0):
            raise ValueError(f"latency_budget_ms must be a finite number >= 0, got {latency_budget_ms}")
        fe = (n > 1 or latency_budget_ms is not None) if final_eval is None else bool(final_eval)
        b = context.batch_size
        ctx = context.detach()
        shape = (b, n, self.horizon, self.action_dim)
        a0 = torch.randn(shape, device=ctx.tokens.device, dtype=ctx.tokens.dtype) * cfg.init_scale
        if init is not None:
            a0[:, 0] = init.to(a0.dtype)
        tc = self.trunk.encode_context(ctx.tokens, ctx.mask).repeat_interleave(n)  # keys / values once per chunk
        energy_fn = lambda a: self._energy_cached(tc, a)  # noqa: E731
        step_fns, scales, momentum = energy_fn, None, cfg.momentum
        alpha, clamp = self._alpha(b * n, jitter=False).detach(), cfg.energy_clamp
        if cfg.objective in gen.GENERATIVE_OBJECTIVES:
            # a fixed step on the field s * dE/da (no exp(E) scaling): see ebt_objectives.sample_step
            alpha = torch.tensor(gen.sample_step(self, steps), device=a0.device, dtype=a0.dtype)
            clamp = 0.0
            momentum = cfg.eqm_momentum if cfg.objective == "eqm" else cfg.em_momentum
        if cfg.objective == "path":
            # K steps along the path: step k sees t = k / K and moves dt / (1 - t) of a full step
            ts, scales = self._path_schedule(steps)
            step_fns = [lambda a, tk=tk: self._energy_cached(tc, a, tk) for tk in ts]
            energy_fn = lambda a: self._energy_cached(tc, a, ts[-1] if ts else 0.0)  # noqa: E731
            momentum = cfg.path_momentum
        constraint = None
        if inpaint is not None:
            ip = inpaint.to(a0.device, a0.dtype).repeat_interleave(n)
            pull_w = None
            if ip.has_soft:
                lam = (DEFAULT_PULL if pull is None else float(pull)) / self.log_alpha.exp().detach()
                pull_w = (ip.soft_weights * lam).unsqueeze(-1)
            constraint = Constraint(ip.frozen.unsqueeze(-1), ip.values, pull_w, ip.soft_target)
        deadline = None if latency_budget_ms is None else t_start + latency_budget_ms / 1e3
        res = minimize_energy(
            step_fns,
            a0.flatten(0, 1),
            num_steps=steps,
            step_scales=scales,
            alpha=alpha,
            momentum=momentum,
            temperature=cfg.temperature,
            energy_clamp=clamp,
            noise_sigmas=[sig] * steps if sig > 0 else None,
            create_graph=False,
            min_grad=mg,
            constraint=constraint,
            deadline=deadline,
            final_eval=fe,
            final_energy_fn=energy_fn,
            select_best=deadline is not None and fe,
        )
        if res.best is not None:  # anytime: the lowest-energy chunk evaluated
            final, e_all, gn_all, _ = res.best
        else:  # the last iterate; its own energy (final_eval) or the last step's
            final, e_all, gn_all = res.final.detach(), res.energies[-1], res.grad_norms[-1]
        score = e_all if constraint is None else e_all + constraint.penalty(final)
        e_final, gn = e_all.view(b, n), gn_all.view(b, n)
        best = score.view(b, n).argmin(1)
        idx = torch.arange(b, device=best.device)
        actions = final.view(b, n, self.horizon, self.action_dim)[idx, best]
        if inpaint is not None:
            actions = inpaint.apply(actions)
        trace = res.energies.view(-1, b, n)[:, idx, best]
        return ChunkPrediction(
            actions=actions,
            steps=res.steps.view(b, n)[idx, best],
            nfe=res.nfe,
            energy=e_final[idx, best],
            grad_norm=gn[idx, best],
            energy_trace=trace,
        )
