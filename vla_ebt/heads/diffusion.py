"""Diffusion action head (Diffusion-Policy-style DDPM / DDIM baseline).

The denoiser is the *same* :class:`~vla_ebt.heads.trunk.ActionTrunk` as the EBT head (same width,
depth and cross-attention to the same context). The diffusion timestep enters as one extra
context token (sinusoidal embedding -> MLP -> width) prepended to the context, the way the
transformer variant of Diffusion Policy feeds its time embedding as a conditioning token.

Noise schedule and samplers are diffusers' ``DDPMScheduler`` / ``DDIMScheduler`` configured as in
Diffusion Policy: 100 training timesteps, squared-cosine betas, epsilon prediction, predicted x0
clipped to [-1, 1]; DDPM samples with all 100 steps, DDIM (eta = 0) with 10 by default. Training
and each sampler own separate scheduler instances, so ``set_timesteps`` in one ``predict`` call
never leaks into another call or into training.

Warm start (``capabilities.warm_start``; the policy passes the previous plan shifted as ``init``):
``warm_noise`` = w in [0, 1] runs only the last share of the sampler's schedule,
n = max(1, round(w * num_steps)) steps, starting from ``init`` noised to the first of those timesteps
(``add_noise``: sqrt(abar_t) * init + sqrt(1 - abar_t) * noise), for DDPM and DDIM alike. w = 1 (the
config default) ignores ``init`` (the cold sample, identical for the same generator); w = 0 returns
``init`` unchanged with no network evaluation. With the squared-cosine schedule, w = 0.5 starts at
abar ~ 0.5, the same signal-to-noise ratio (1) as the flow head's warm start at t0 = 0.5.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
from diffusers import DDIMScheduler, DDPMScheduler
from torch import Tensor, nn

from .base import ActionHead, ChunkPrediction, Context, HeadCapabilities, masked_mse, warm_start_steps
from .factory import register_head
from .inpainting import DEFAULT_MAX_GUIDANCE_WEIGHT, Inpainting, diffusion_guidance_scale
from .trunk import ActionTrunk, TrunkConfig, sinusoidal_embedding


@dataclass
class DiffusionConfig:
    """Diffusion head hyperparameters (defaults = Diffusion Policy's)."""

    trunk: TrunkConfig = field(default_factory=TrunkConfig)
    horizon: int = 16
    action_dim: int = 7
    num_train_timesteps: int = 100
    num_inference_steps: int = 100  # DDPM steps at inference
    sampler: Literal["ddpm", "ddim"] = "ddpm"
    ddim_steps: int = 10
    beta_schedule: str = "squaredcos_cap_v2"
    prediction_type: Literal["epsilon", "sample", "v_prediction"] = "epsilon"
    clip_sample: bool = True
    clip_sample_range: float = 1.0
    # warm start: share of the schedule re-run from the noised init (1 = cold, init ignored;
    # 0.5 = the protocol's warm row)
    warm_noise: float = 1.0


def _expand_mask(mask: Tensor, like: Tensor) -> Tensor:
    """(B, H) or (B, H, D) mask -> (B, H, D) bool."""
    m = mask.bool()
    if m.dim() == 2:
        m = m.unsqueeze(-1)
    return m.expand_as(like)


@register_head("diffusion")
class DiffusionHead(ActionHead):
    """Epsilon-predicting denoiser over action chunks. Context (B, T, W) -> chunks (B, H, D)."""

    config_class = DiffusionConfig
    capabilities = HeadCapabilities(
        warm_start=True,
        warm_overrides={"warm_noise": 0.5},  # re-noise the previous plan halfway (signal-to-noise 1)
        eval_cost=1.0,  # one denoiser forward per step
        knobs={
            "num_steps": "denoising steps (config: num_inference_steps for DDPM, ddim_steps for DDIM)",
            "sampler": '"ddpm" or "ddim" (eta = 0)',
            "generator": "torch.Generator for the initial noise and the DDPM step noise",
            "warm_noise": "warm start: run the last warm_noise share of the schedule from init noised to "
                          "its first timestep (1 = ignore init; config: warm_noise)",
            "max_guidance_weight": "inpainting: beta, the clip of the real-time chunking guidance weight, in the "
                                   f"flow time of the same noise level (default {DEFAULT_MAX_GUIDANCE_WEIGHT:g}; "
                                   "docs/realtime.md)",
        },
        presets=(("ddpm-100", {"sampler": "ddpm", "num_steps": 100}), ("ddim-10", {"sampler": "ddim", "num_steps": 10})),
        inpainting=True,
    )

    def __init__(self, cfg: DiffusionConfig) -> None:
        super().__init__()
        warm_start_steps(1, cfg.warm_noise)  # validates the range
        self.cfg = cfg
        self.horizon, self.action_dim = cfg.horizon, cfg.action_dim
        self._ts_cache: dict[tuple, Tensor] = {}  # (timesteps, device) -> (K,) long (_timesteps_on)
        w = cfg.trunk.width
        self.trunk = ActionTrunk(cfg.trunk, cfg.horizon, cfg.action_dim, out_dim=cfg.action_dim)
        self.time_mlp = nn.Sequential(nn.Linear(w, 4 * w), nn.SiLU(), nn.Linear(4 * w, w))
        common = dict(
            num_train_timesteps=cfg.num_train_timesteps,
            beta_schedule=cfg.beta_schedule,
            prediction_type=cfg.prediction_type,
            clip_sample=cfg.clip_sample,
            clip_sample_range=cfg.clip_sample_range,
        )
        # One instance per use: set_timesteps mutates scheduler state.
        self.train_scheduler = DDPMScheduler(**common)
        self.ddpm_scheduler = DDPMScheduler(**common)
        self.ddim_scheduler = DDIMScheduler(**common, set_alpha_to_one=True, steps_offset=0)

    # ---------------------------------------------------------------- denoiser
    def time_tokens(self, t: Tensor) -> Tensor:
        """Timestep token(s): t (N,) int -> (N, W)."""
        return self.time_mlp(sinusoidal_embedding(t, self.cfg.trunk.width).to(self.time_mlp[0].weight.dtype))

    def denoise(self, context: Context, noisy: Tensor, t: Tensor) -> Tensor:
        """Model output (epsilon by default) for noisy chunks (B, H, D) at timesteps t (B,)."""
        tok = self.time_tokens(t).unsqueeze(1)  # (B, 1, W)
        ctx = torch.cat([tok.to(context.tokens.dtype), context.tokens], dim=1)
        ones = torch.ones(context.mask.shape[0], 1, dtype=torch.bool, device=context.mask.device)
        return self.trunk(noisy, ctx, torch.cat([ones, context.mask.bool()], dim=1))

    # ---------------------------------------------------------------- training
    def compute_loss(
        self, context: Context, target: Tensor, mask: Tensor | None = None
    ) -> tuple[Tensor, dict[str, float]]:
        sched = self.train_scheduler
        b = target.shape[0]
        x0 = target
        if mask is not None:
            # Unsupervised entries are zeroed before noising so their (arbitrary) values cannot
            # leak into the denoiser's input and, through attention, into the supervised loss.
            x0 = torch.where(_expand_mask(mask, target), target, torch.zeros_like(target))
        noise = torch.randn_like(x0)
        t = torch.randint(0, sched.config.num_train_timesteps, (b,), device=target.device)
        noisy = sched.add_noise(x0, noise, t)
        out = self.denoise(context, noisy, t)
        if self.cfg.prediction_type == "epsilon":
            goal = noise
        elif self.cfg.prediction_type == "sample":
            goal = x0
        else:
            goal = sched.get_velocity(x0, noise, t)
        loss = masked_mse(out, goal, mask)
        return loss, {"loss": loss.item(), "diffusion_loss": loss.item()}

    # ---------------------------------------------------------------- inference
    def _guided_output(self, model_fn, x: Tensor, alpha_bar: float, target: Tensor, weights: Tensor,
                       max_weight: float) -> Tensor:
        """Real-time chunking guidance on one denoising step (docs/realtime.md): the model's clean-chunk
        estimate x0_hat(x_t) moves by (1 - abar) / sqrt(abar) * c * g, with g = (Y - x0_hat)^T diag(W)
        d x0_hat / d x_t (a vector-Jacobian product) and c = :func:`diffusion_guidance_scale` (the flow
        guidance weight, clipped at ``max_weight``, at the same noise level); returned as the model output
        (epsilon, sample or v) that the scheduler step expects."""
        sa, s1 = alpha_bar ** 0.5, (1.0 - alpha_bar) ** 0.5
        kind = self.cfg.prediction_type
        with torch.enable_grad():
            xg = x.detach().requires_grad_(True)
            out = model_fn(xg)
            if kind == "epsilon":
                x0 = (xg - s1 * out) / sa
            elif kind == "sample":
                x0 = out
            else:  # v_prediction
                x0 = sa * xg - s1 * out
            err = (target - x0.detach()) * weights.unsqueeze(-1)
            (g,) = torch.autograd.grad(x0, xg, grad_outputs=err)
        x0 = x0.detach() + (1.0 - alpha_bar) / sa * diffusion_guidance_scale(alpha_bar, max_weight) * g
        if self.cfg.clip_sample:
            # clipped here, as the scheduler clips every x0 estimate, so that the epsilon derived from it
            # agrees with the clipped x0 (DDIM uses both; an unclipped correction would pass through epsilon)
            x0 = x0.clamp(-self.cfg.clip_sample_range, self.cfg.clip_sample_range)
        if kind == "sample":
            return x0
        eps = (x - sa * x0) / s1
        return eps if kind == "epsilon" else sa * eps - s1 * x0

    def _timesteps_on(self, ts: list[int], device: torch.device) -> Tensor:
        """The schedule's integer timesteps as a (K,) long tensor on ``device``, copied to it once per
        schedule (a later call, a CUDA-graph capture included, makes no host-to-device copy)."""
        key = (tuple(ts), str(device))
        if key not in self._ts_cache:
            self._ts_cache[key] = torch.tensor(ts, device=device)
        return self._ts_cache[key]

    @torch.no_grad()
    def sample(
        self,
        context: Context,
        init: Tensor | None = None,
        inpaint: Inpainting | None = None,
        *,
        num_steps: int | None = None,
        sampler: Literal["ddpm", "ddim"] | None = None,
        generator: torch.Generator | None = None,
        warm_noise: float | None = None,
        max_guidance_weight: float | None = None,
    ) -> ChunkPrediction:
        """Denoise from N(0, I), or (warm start: ``init`` given and ``warm_noise`` < 1) from ``init``
        noised to the timestep where the last ``warm_noise`` share of the schedule begins.

        sampler: "ddpm" (default num_steps = cfg.num_inference_steps) or "ddim" (default
        num_steps = cfg.ddim_steps, eta = 0). ``inpaint``: every step's prediction is corrected by the
        real-time chunking guidance (:meth:`_guided_output`, one forward + one backward) before the
        scheduler step; the frozen steps are set at the end. docs/realtime.md.
        """
        cfg = self.cfg
        kind = sampler or cfg.sampler
        if kind == "ddpm":
            sched = self.ddpm_scheduler
            steps = cfg.num_inference_steps if num_steps is None else num_steps
            step_kw: dict = {"generator": generator}
        elif kind == "ddim":
            sched = self.ddim_scheduler
            steps = cfg.ddim_steps if num_steps is None else num_steps
            step_kw = {"eta": 0.0, "generator": generator}
        else:
            raise ValueError(f"unknown sampler {kind!r}; expected 'ddpm' or 'ddim'")
        tokens, cmask = context.tokens, context.mask.bool()
        b, t_ctx, w = tokens.shape
        device, dtype = tokens.device, tokens.dtype
        wn = cfg.warm_noise if warm_noise is None else float(warm_noise)
        n_warm = warm_start_steps(steps, wn)  # validates warm_noise on every call
        warm = n_warm if init is not None and wn < 1.0 else None
        sched.set_timesteps(steps, device="cpu")
        ts = [int(t) for t in sched.timesteps]
        shape = (b, self.horizon, self.action_dim)
        if warm is not None and init.shape != shape:
            raise ValueError(f"diffusion init must have shape {tuple(shape)}, got {tuple(init.shape)}")
        if warm == 0:
            x = init.to(device=device, dtype=dtype).clone()
            x = x if inpaint is None else inpaint.apply(x)
            return ChunkPrediction(actions=x, steps=torch.zeros(b, dtype=torch.long, device=device), nfe=0)
        if warm is not None:
            ts = ts[-warm:]  # the same spacing as the full schedule, only its last share

        # The context's keys / values once per chunk; per step only the timestep token is projected.
        # All timestep tokens for the schedule are embedded in one batched call.
        tc = self.trunk.encode_context(tokens, cmask)
        temb = self.time_tokens(self._timesteps_on(ts, device)).to(dtype)  # (K, W)
        beta = DEFAULT_MAX_GUIDANCE_WEIGHT if max_guidance_weight is None else float(max_guidance_weight)
        if inpaint is not None:
            inpaint = inpaint.to(device, dtype)
            target, weights = inpaint.target_and_weights()

        noise = torch.randn(shape, generator=generator, device=device, dtype=dtype)
        if warm is None:
            x = noise * sched.init_noise_sigma
        else:
            start = torch.full((b,), ts[0], dtype=torch.long, device=device)
            x = sched.add_noise(init.to(device=device, dtype=dtype), noise, start)
        for i, t in enumerate(ts):
            tok = temb[i].view(1, 1, w).expand(b, 1, w)
            if inpaint is None:
                out = self.trunk(x, tok, None, context=tc)
            else:
                out = self._guided_output(lambda xx, tok=tok: self.trunk(xx, tok, None, context=tc), x,
                                          float(sched.alphas_cumprod[t]), target, weights, beta)
            x = sched.step(out, t, x, return_dict=False, **step_kw)[0]
        if inpaint is not None:
            x = inpaint.apply(x)
        return ChunkPrediction(
            actions=x,
            steps=torch.full((b,), len(ts), dtype=torch.long, device=device),
            nfe=len(ts),
        )
