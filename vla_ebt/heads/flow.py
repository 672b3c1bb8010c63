"""Flow-matching action head (the pi0 / SmolVLA / GR00T-style baseline).

Convention (stated once, used everywhere here): time t runs from noise to data,

    x_t = (1 - t) * noise + t * action,    t in [0, 1],  t = 0 pure noise, t = 1 the action chunk,

and the network predicts the velocity of that straight path, ``dx_t/dt = action - noise`` (the
training target, mean squared error). Sampling integrates dx/dt = v(x, t) with ``infer_steps``
Euler steps (10 by default) from x_0 ~ N(0, I) to t = 1; one trunk forward per step.

Training time distribution (``time_dist``): "beta" follows the pi0 paper's description, a Beta
distribution that puts more weight on the noisy end: u ~ Beta(``beta_a`` = 1.5, ``beta_b`` = 1),
t = ``time_max`` * (1 - u) with ``time_max`` = 0.999, i.e. density p(t) ~ (1 - t / 0.999)^0.5 on
[0, 0.999]: highest at pure noise, falling to zero at the data end (mean t = 0.4). The reason given
there: late, nearly clean steps are easy (predicting the velocity there is almost copying the
input), while the noisy end is where the action distribution is decided; the cutoff keeps t below 1.
"uniform" samples t ~ U[0, ``time_max``] (plain rectified flow / conditional flow matching).

The denoiser is the same :class:`~vla_ebt.heads.trunk.ActionTrunk` as every other head, and t enters
like the diffusion head's timestep: sinusoidal embedding of ``100 * t`` (the diffusion head's
integer timestep range) -> MLP -> one extra context token prepended to the context.

Warm start (``capabilities.warm_start``; the policy passes the previous plan shifted as ``init``):
``warm_noise`` = w in [0, 1] re-noises the plan to x_{t0} = t0 * init + (1 - t0) * noise with
t0 = 1 - w and integrates only from t0 to 1, with the remaining share of the steps,
max(1, round(w * num_steps)). w = 1 (the config default) ignores ``init`` (the cold sample, identical
for the same generator); w = 0 returns ``init`` unchanged with no network evaluation.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import Tensor, nn

from .base import ActionHead, ChunkPrediction, Context, HeadCapabilities, expand_mask, masked_mse, warm_start_steps
from .factory import register_head
from .inpainting import DEFAULT_MAX_GUIDANCE_WEIGHT, Inpainting, guided_flow_velocity
from .trunk import ActionTrunk, TrunkConfig, sinusoidal_embedding

#: t in [0, 1] is embedded as sinusoidal(TIME_SCALE * t), the diffusion head's timestep range
TIME_SCALE = 100.0


@dataclass
class FlowConfig:
    """Flow-matching head hyperparameters (defaults: pi0's description)."""

    trunk: TrunkConfig = field(default_factory=TrunkConfig)
    horizon: int = 16
    action_dim: int = 7
    infer_steps: int = 10  # Euler steps from noise to the action chunk
    time_dist: Literal["beta", "uniform"] = "beta"  # training t: pi0's Beta (noisy end) or U[0, time_max]
    beta_a: float = 1.5  # "beta": u ~ Beta(beta_a, beta_b), t = time_max * (1 - u)
    beta_b: float = 1.0
    time_max: float = 0.999  # training t never reaches the clean end
    # warm start: fraction of the path re-run from the re-noised init (1 = cold, init ignored;
    # 0.5 = the protocol's warm row: start at t0 = 0.5 with half of the steps)
    warm_noise: float = 1.0


@register_head("flow")
class FlowHead(ActionHead):
    """Velocity field over action chunks, integrated with Euler steps. Context (B, T, W) -> (B, H, D)."""

    config_class = FlowConfig
    capabilities = HeadCapabilities(
        warm_start=True,
        warm_overrides={"warm_noise": 0.5},  # re-noise the previous plan halfway (signal-to-noise 1)
        eval_cost=1.0,  # one trunk forward per Euler step
        knobs={
            "num_steps": "Euler steps from noise (config: infer_steps)",
            "warm_noise": "warm start: re-noise init to t0 = 1 - warm_noise and run that share of the "
                          "steps (1 = ignore init; config: warm_noise)",
            "generator": "torch.Generator for the initial noise",
            "max_guidance_weight": "inpainting: beta, the clip of the real-time chunking guidance weight "
                                   f"(default {DEFAULT_MAX_GUIDANCE_WEIGHT:g}; docs/realtime.md)",
        },
        presets=(("flow-10", {"num_steps": 10}),),
        inpainting=True,
    )

    def __init__(self, cfg: FlowConfig) -> None:
        super().__init__()
        if cfg.time_dist not in ("beta", "uniform"):
            raise ValueError(f"unknown flow time_dist {cfg.time_dist!r}; expected 'beta' or 'uniform'")
        if not 0.0 < cfg.time_max <= 1.0:
            raise ValueError(f"flow time_max must be in (0, 1], got {cfg.time_max}")
        warm_start_steps(1, cfg.warm_noise)  # validates the range
        self.cfg = cfg
        self.horizon, self.action_dim = cfg.horizon, cfg.action_dim
        w = cfg.trunk.width
        self.trunk = ActionTrunk(cfg.trunk, cfg.horizon, cfg.action_dim, out_dim=cfg.action_dim)
        self.time_mlp = nn.Sequential(nn.Linear(w, 4 * w), nn.SiLU(), nn.Linear(4 * w, w))

    # ---------------------------------------------------------------- velocity field
    def time_tokens(self, t: Tensor) -> Tensor:
        """Time token(s): t (N,) float in [0, 1] -> (N, W)."""
        emb = sinusoidal_embedding(t * TIME_SCALE, self.cfg.trunk.width)
        return self.time_mlp(emb.to(self.time_mlp[0].weight.dtype))

    def velocity(self, context: Context, x: Tensor, t: Tensor) -> Tensor:
        """Predicted dx/dt for chunks x (B, H, D) at times t (B,)."""
        tok = self.time_tokens(t).unsqueeze(1).to(context.tokens.dtype)  # (B, 1, W)
        ctx = torch.cat([tok, context.tokens], dim=1)
        ones = torch.ones(context.mask.shape[0], 1, dtype=torch.bool, device=context.mask.device)
        return self.trunk(x, ctx, torch.cat([ones, context.mask.bool()], dim=1))

    def sample_time(self, n: int, device: torch.device) -> Tensor:
        """Training times (n,) from ``time_dist``."""
        cfg = self.cfg
        if cfg.time_dist == "beta":
            beta = torch.distributions.Beta(torch.tensor(cfg.beta_a, device=device), torch.tensor(cfg.beta_b, device=device))
            return cfg.time_max * (1.0 - beta.sample((n,)))
        return cfg.time_max * torch.rand(n, device=device)

    # ---------------------------------------------------------------- training
    def compute_loss(
        self, context: Context, target: Tensor, mask: Tensor | None = None
    ) -> tuple[Tensor, dict[str, float]]:
        x1 = target
        if mask is not None:
            # unsupervised entries are zeroed before they enter the path (as in the diffusion head),
            # so their values cannot reach the supervised loss through attention
            x1 = torch.where(expand_mask(mask, target).bool(), target, torch.zeros_like(target))
        noise = torch.randn_like(x1)
        t = self.sample_time(x1.shape[0], x1.device).to(x1.dtype)
        tt = t.view(-1, 1, 1)
        xt = (1.0 - tt) * noise + tt * x1
        loss = masked_mse(self.velocity(context, xt, t), x1 - noise, mask)
        return loss, {"loss": loss.item(), "flow_loss": loss.item(), "flow_t_mean": t.mean().item()}

    # ---------------------------------------------------------------- inference
    @torch.no_grad()
    def sample(
        self,
        context: Context,
        init: Tensor | None = None,
        inpaint: Inpainting | None = None,
        *,
        num_steps: int | None = None,
        warm_noise: float | None = None,
        generator: torch.Generator | None = None,
        max_guidance_weight: float | None = None,
    ) -> ChunkPrediction:
        """Euler integration of the velocity field from t0 to 1.

        Cold (``init`` None or ``warm_noise`` 1): t0 = 0, x = noise, ``num_steps`` steps. Warm:
        t0 = 1 - warm_noise, x = t0 * init + (1 - t0) * noise, ``warm_start_steps`` steps.
        ``inpaint``: every step is the real-time chunking guided step
        (:func:`~vla_ebt.heads.inpainting.guided_flow_velocity`: one forward + one backward) toward
        the frozen prefix (weight 1) and the soft target (its weights); the frozen steps are set at
        the end. docs/realtime.md.
        """
        cfg = self.cfg
        steps = cfg.infer_steps if num_steps is None else int(num_steps)
        if steps < 1:
            raise ValueError(f"flow num_steps must be >= 1, got {steps}")
        w = cfg.warm_noise if warm_noise is None else float(warm_noise)
        n = warm_start_steps(steps, w)
        tokens, cmask = context.tokens, context.mask.bool()
        b, t_ctx, width = tokens.shape
        device, dtype = tokens.device, tokens.dtype
        shape = (b, self.horizon, self.action_dim)
        x = torch.randn(shape, generator=generator, device=device, dtype=dtype)
        t0 = 0.0
        if init is not None and w < 1.0:
            if init.shape != shape:
                raise ValueError(f"flow init must have shape {tuple(shape)}, got {tuple(init.shape)}")
            t0 = 1.0 - w
            x = t0 * init.to(device=device, dtype=dtype) + (1.0 - t0) * x
        else:
            n = steps
        if n == 0:
            x = x if inpaint is None else inpaint.apply(x)
            return ChunkPrediction(actions=x, steps=torch.zeros(b, dtype=torch.long, device=device), nfe=0)

        # The context's keys / values once per chunk; per step only the time token is projected.
        tc = self.trunk.encode_context(tokens, cmask)
        dt = (1.0 - t0) / n
        taus = [t0 + i * dt for i in range(n)]
        # the same float64 values as ``taus``, made on the device (no host copy: CUDA-graph capturable)
        tau_t = (t0 + dt * torch.arange(n, dtype=torch.float64, device=device)).float()
        temb = self.time_tokens(tau_t).to(dtype)  # (n, W), one call
        beta = DEFAULT_MAX_GUIDANCE_WEIGHT if max_guidance_weight is None else float(max_guidance_weight)
        if inpaint is not None:
            inpaint = inpaint.to(device, dtype)
            target, weights = inpaint.target_and_weights()
        for i in range(n):
            tok = temb[i].view(1, 1, width).expand(b, 1, width)
            field_fn = lambda xx, tok=tok: self.trunk(xx, tok, None, context=tc)  # noqa: E731
            if inpaint is None:
                v = field_fn(x)
            else:
                v = guided_flow_velocity(field_fn, x, taus[i], target, weights, beta)
            x = x + dt * v
        if inpaint is not None:
            x = inpaint.apply(x)
        return ChunkPrediction(
            actions=x,
            steps=torch.full((b,), n, dtype=torch.long, device=device),
            nfe=n,
        )
