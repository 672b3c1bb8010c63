"""VLAPolicy: backbone + bridge + context tokens + action head + normalizer, one contract.

Training, evaluation and serving all go through this class:

* ``compute_loss(batch) -> (loss, info)``  — a training batch in the schema of
  :mod:`vla_ebt.schema` (unnormalized actions/states; normalization happens here).
* ``predict_chunk(obs) -> PolicyOutput``  — unnormalized actions (B, H, D) plus energy, steps,
  gradient norm, network evaluations and latency; ``predict_chunk(obs, prefix, prefix_weights,
  latency_budget_ms, soft_target=...)`` plans the next chunk while one executes (real-time chunking:
  committed prefix, soft guidance toward the previous plan, anytime budget; docs/realtime.md).
* ``score_chunks(obs, chunks) -> (B, K)`` — energies of given chunks (heads reporting energy).
* ``select_action(obs) -> (B, D)``        — one action per control step, draining a queue of
  the last chunk (receding horizon: execute ``n_action_steps`` then re-plan) or temporally
  ensembling every step's chunk; ``reset()`` clears it between episodes.
* ``save_pretrained(dir)`` / ``VLAPolicy.from_pretrained(dir)`` — safetensors weights, JSON
  config, normalizer statistics and the LoRA adapter (or merged weights). Nothing is unpickled.

The prefix (backbone + bridge) is computed once per observation; only the head runs inside the
EBT energy minimization or the diffusion denoising loop.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Mapping

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn
from vla_ebt_client import ActionChunkBroker

from . import config_io
from .backbones import BackboneConfig, build_backbone
from .bridge import Bridge, BridgeConfig
from .heads.base import ActionHead, Context
from .heads.inpainting import SoftGuidance
from .heads.diffusion import DiffusionConfig
from .heads.ebt import EBTConfig
from .heads.factory import build_head, head_class
from .heads.regression import RegressionConfig
from .heads.trunk import RMSNorm, TrunkConfig
from .lora import apply_finetune_mode, load_lora, merge_lora, save_lora
from .normalize import Normalizer
from .normalize.normalizer import pad_last_dim
from .schema import ObservationSpec, validate_batch, validate_observation

if TYPE_CHECKING:
    from .heads.cuda_graph import GraphedPredict

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
ADAPTER_NAME = "adapter_model.safetensors"
NORMALIZER_NAME = "normalizer.json"


@dataclass
class FinetuneConfig:
    """How the backbone trains. mode: "frozen" | "lora" | "full" (the head always trains)."""

    mode: Literal["frozen", "lora", "full"] = "lora"
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.0
    target_modules: tuple[str, ...] | None = None  # None: the backbone family's defaults


@dataclass
class ExecutionConfig:
    """How chunks become per-step actions (Diffusion Policy's Ta / ACT's temporal ensembling).

    mode:           "receding" executes ``n_action_steps`` of each chunk, then re-plans;
                    "ensemble" re-plans every step and averages all chunks covering the step
                    with weights exp(-ensemble_decay * age).
    warm_start:     heads declaring ``capabilities.warm_start`` (EBT) start the next chunk from the
                    previous chunk shifted by the executed steps (last action repeated).
    """

    mode: Literal["receding", "ensemble"] = "receding"
    n_action_steps: int = 8
    ensemble_decay: float = 0.01
    warm_start: bool = True


@dataclass
class PolicyConfig:
    """Everything needed to rebuild a policy's architecture (saved as config.json).

    ``head`` names a registered head (:func:`vla_ebt.heads.available_heads`). ``trunk``, ``horizon``
    and ``action_dim`` are shared by all head kinds so the heads compared side by side have identical
    trunks; the same fields inside the head's config are overwritten by these. ``head_options`` sets
    fields of the selected head's config (needed for a head without a typed field here).
    ``bridge.width`` is set to ``trunk.width``.
    """

    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    bridge: BridgeConfig = field(default_factory=BridgeConfig)
    head: str = "ebt"
    trunk: TrunkConfig = field(default_factory=TrunkConfig)
    horizon: int = 16
    action_dim: int = 7
    state_dim: int = 8
    obs_steps: int = 1
    num_views: int = 1
    ebt: EBTConfig = field(default_factory=EBTConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    regression: RegressionConfig = field(default_factory=RegressionConfig)
    execution: ExecutionConfig = field(default_factory=ExecutionConfig)
    head_options: dict[str, bool | int | float | str] = field(default_factory=dict)

    def head_config(self) -> Any:
        """The selected head's config: its typed field here (``ebt`` / ...) or its config class's
        defaults, then ``head_options``, then the shared trunk / horizon / action_dim. Unknown head
        names or option fields raise ValueError."""
        cls = head_class(self.head).config_class
        sub = getattr(self, self.head, None)
        sub = sub if isinstance(sub, cls) else cls()
        if self.head_options:
            merged = {**config_io.to_dict(sub), **self.head_options}
            sub = config_io.from_dict(cls, merged, where=f"head_options ({self.head})")
        return dataclasses.replace(sub, trunk=self.trunk, horizon=self.horizon, action_dim=self.action_dim)


@dataclass
class PolicyOutput:
    """One chunk per sample, unnormalized.

    actions:      (B, H, D) unnormalized; dims past the embodiment's own action dim are 0.
    normalized:   (B, H, D) the head's output in normalized space (used for warm starts).
    energy:       (B,) final energy (EBT) or None.
    steps:        (B,) minimization / denoising steps used.
    grad_norm:    (B,) final ||dE/da|| (EBT) or None.
    nfe:          head network evaluations for the call.
    latency_ms:   wall time of the call: prefix + head (+ unnormalize).
    head_ms:      wall time of the head alone.
    """

    actions: Tensor
    normalized: Tensor
    steps: Tensor
    nfe: int
    latency_ms: float
    head_ms: float
    energy: Tensor | None = None
    grad_norm: Tensor | None = None


def _knob_key(knobs: Mapping[str, Any]) -> tuple:
    return tuple(sorted((k, repr(v)) for k, v in knobs.items()))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class ContextEncoder(nn.Module):
    """Observation -> Context tokens for the head: [bridge(prefix) | state token | embodiment token].

    images (B, V, 3, H, W) + instructions + normalized state (B, To, S) + embodiment (B,)
    -> Context(tokens (B, T' + 2, W), mask (B, T' + 2)).
    """

    def __init__(self, cfg: PolicyConfig, num_embodiments: int) -> None:
        super().__init__()
        w = cfg.trunk.width
        self.backbone = build_backbone(cfg.backbone)
        self.bridge = Bridge(self.backbone.width, dataclasses.replace(cfg.bridge, width=w))
        self.state_proj = nn.Sequential(nn.Linear(cfg.obs_steps * cfg.state_dim, w), nn.GELU(), nn.Linear(w, w))
        self.embodiment = nn.Embedding(num_embodiments, w)
        self.norm = RMSNorm(w)

    def forward(self, images: Tensor, instructions: list[str], state: Tensor, embodiment: Tensor) -> Context:
        prefix = self.bridge(self.backbone(images, instructions))
        extra = torch.stack([self.state_proj(state.flatten(1)), self.embodiment(embodiment)], dim=1)
        tokens = torch.cat([prefix.tokens, self.norm(extra)], dim=1)
        mask = torch.cat([prefix.mask, torch.ones(extra.shape[:2], dtype=torch.bool, device=tokens.device)], dim=1)
        return Context(tokens, mask)


class VLAPolicy(nn.Module):
    """The policy contract (see module docstring). Build with a config and a Normalizer."""

    def __init__(self, cfg: PolicyConfig, normalizer: Normalizer) -> None:
        super().__init__()
        if normalizer.max_action_dim != cfg.action_dim or normalizer.max_state_dim != cfg.state_dim:
            raise ValueError(
                f"normalizer dims (action {normalizer.max_action_dim}, state {normalizer.max_state_dim}) do not match "
                f"policy config (action_dim {cfg.action_dim}, state_dim {cfg.state_dim})"
            )
        if not 1 <= cfg.execution.n_action_steps <= cfg.horizon:
            raise ValueError(f"execution.n_action_steps must be in [1, horizon={cfg.horizon}], got {cfg.execution.n_action_steps}")
        self.cfg = cfg
        self.normalizer = normalizer
        self.encoder = ContextEncoder(cfg, normalizer.num_embodiments)
        self.head: ActionHead = build_head(cfg.head, cfg.head_config())
        self.lora_modules = apply_finetune_mode(
            self.encoder.backbone,
            cfg.finetune.mode,
            r=cfg.finetune.lora_r,
            alpha=cfg.finetune.lora_alpha,
            dropout=cfg.finetune.lora_dropout,
            target_modules=list(cfg.finetune.target_modules) if cfg.finetune.target_modules else None,
        )
        self.spec = ObservationSpec(
            num_views=cfg.num_views,
            image_size=cfg.backbone.image_size,
            obs_steps=cfg.obs_steps,
            state_dim=cfg.state_dim,
            action_dim=cfg.action_dim,
            horizon=cfg.horizon,
            embodiments=tuple(normalizer.names),
        )
        self._graphed: dict[tuple, Any] = {}  # knobs -> GraphedPredict (capture_cuda_graph)
        self.reset()

    @property
    def device(self) -> torch.device:
        return next(self.head.parameters()).device

    # ------------------------------------------------------------------ encoding
    def encode(self, obs: Mapping[str, Any]) -> Context:
        """Validated observation -> Context. Normalizes the state."""
        dev = self.device
        state = self.normalizer.normalize_state(obs["state"].to(dev), obs["embodiment"].to(dev))
        return self.encoder(obs["images"].to(dev), obs["instruction"], state, obs["embodiment"].to(dev))

    # ------------------------------------------------------------------ CUDA graphs
    def capture_cuda_graph(self, obs: Mapping[str, Any], **head_overrides: Any) -> GraphedPredict:
        """Capture the head's chunk for these knobs as a CUDA graph (``heads.cuda_graph``), on ``obs``'s
        batch size and context length. Later ``predict_chunk`` calls with the same knobs and no prefix,
        soft target, warm start or latency budget replay it (the observation is encoded eagerly as
        before). ValueError on a CPU policy or an ungraphable knob; ``train(True)`` or
        :meth:`release_cuda_graphs` drops every capture (the graphs point at the current weights'
        memory: in-place updates are seen, a move to another device is not). Returns the capture, whose
        call on an encoded context replays the head alone."""
        from .heads.cuda_graph import GraphedPredict

        o = validate_observation(obs, self.spec)
        was_training = self.training
        self.eval()
        try:
            with torch.no_grad():
                ctx = self.encode(o)
            graphed = GraphedPredict(self.head, ctx, **head_overrides)
            self._graphed[_knob_key(head_overrides)] = graphed
        finally:
            if was_training:
                self.train()
        return graphed

    def release_cuda_graphs(self) -> None:
        self._graphed.clear()

    def train(self, mode: bool = True) -> "VLAPolicy":
        if mode:
            self._graphed.clear()
        return super().train(mode)

    # ------------------------------------------------------------------ training
    def compute_loss(self, batch: Mapping[str, Any]) -> tuple[Tensor, dict[str, float]]:
        """batch (training schema) -> (scalar loss, metrics). Loss only on valid steps and dims."""
        b = validate_batch(batch, self.spec)
        dev = self.device
        emb = b["embodiment"].to(dev)
        target = self.normalizer.normalize_action(b["action"].to(dev), emb)
        mask = b["action_mask"].to(dev)[:, :, None] & self.normalizer.action_dim_mask(emb)[:, None, :]
        target = torch.where(mask, target, torch.zeros_like(target))  # masked values never reach the head
        ctx = self.encode(b)
        return self.head.compute_loss(ctx, target, mask)

    # ------------------------------------------------------------------ inference
    @torch.no_grad()
    def predict_chunk(
        self,
        obs: Mapping[str, Any],
        prefix: Tensor | None = None,
        prefix_weights: Tensor | None = None,
        latency_budget_ms: float | None = None,
        *,
        soft_target: Tensor | None = None,
        warm_start: Tensor | None = None,
        **head_overrides: Any,
    ) -> PolicyOutput:
        """obs (observation schema) -> PolicyOutput with unnormalized actions (B, H, D).

        Real-time chunking (docs/realtime.md), all in unnormalized action units:

        prefix:         (B, d, D) (or (B, d, <= D), padded with 0) the actions already committed for the
                        first d steps of the new chunk; the output's first d steps equal it exactly
                        (dims past the embodiment's own are 0, as in every output). Every head takes
                        it: heads declaring ``capabilities.inpainting`` inpaint the rest of the chunk
                        around it, the others get their first d steps overwritten.
        prefix_weights: (B, H) or (H,) soft-guidance weights >= 0 per step of the new chunk (steps < d
                        are frozen whatever their weight), pulling those steps toward ``soft_target``;
                        needs ``soft_target`` and an inpainting head (else ValueError).
        soft_target:    (B, H, D) (or (B, H, <= D)) the previous plan aligned to the new chunk's steps.
                        When ``warm_start`` is None and ``execution.warm_start`` is on, it is also the
                        warm start of heads declaring ``capabilities.warm_start``.
        latency_budget_ms: per-chunk latency budget of the whole call (encoding included): the head gets
                        what is left after encoding as its ``latency_budget_ms`` knob (anytime EBT);
                        a head without that knob raises ValueError.

        warm_start: (B, H, D) normalized initial chunk (used by heads declaring ``capabilities.warm_start``).
        head_overrides: inference knobs for the head's predict (``head.capabilities.knobs``, e.g.
        num_steps=4, min_grad=1e-3, sampler="ddim"); unknown ones raise ValueError.
        """
        o = validate_observation(obs, self.spec)
        rt = dict(prefix=prefix, prefix_weights=prefix_weights, soft_target=soft_target,
                  latency_budget_ms=latency_budget_ms)
        if not self.training:
            return self._predict(o, warm_start, head_overrides, **rt)
        self.eval()  # inference always runs in eval mode (dropout off, BatchNorm frozen)
        try:
            return self._predict(o, warm_start, head_overrides, **rt)
        finally:
            self.train()

    def _actions_arg(self, name: str, x: Any, b: int, steps: int | None) -> Tensor:
        """An unnormalized action tensor argument -> float32 (B, n, D) on the policy's device, dims padded."""
        t = torch.as_tensor(x, dtype=torch.float32, device=self.device)
        d_max = self.cfg.action_dim
        ok = t.dim() == 3 and t.shape[0] == b and t.shape[2] <= d_max
        ok = ok and (t.shape[1] <= self.cfg.horizon if steps is None else t.shape[1] == steps)
        if not ok:
            n = f"d <= {self.cfg.horizon}" if steps is None else str(steps)
            raise ValueError(f"{name} must have shape ({b}, {n}, <= {d_max}), got {tuple(t.shape)}")
        if not bool(torch.isfinite(t).all()):
            raise ValueError(f"{name} contains NaN or inf")
        return pad_last_dim(t, d_max)

    def _inpainting_args(
        self, b: int, emb: Tensor, prefix: Any, prefix_weights: Any, soft_target: Any
    ) -> tuple[Tensor | None, Tensor | None, SoftGuidance | None]:
        """-> (raw padded prefix (B, d, D), its normalized values, normalized SoftGuidance) or Nones."""
        raw = norm = guidance = None
        if prefix is not None:
            raw = self._actions_arg("prefix", prefix, b, None)
            if not raw.shape[1]:  # d = 0: nothing committed
                raw = None
            else:
                norm = self.normalizer.normalize_action(raw, emb)
        if (prefix_weights is None) != (soft_target is None):
            raise ValueError("prefix_weights and soft_target go together (soft guidance toward the previous plan)")
        if prefix_weights is not None:
            if not self.head.capabilities.inpainting:
                raise ValueError(f"head {self.cfg.head!r} does not declare capabilities.inpainting: it takes a "
                                 "prefix (its first d steps are overwritten) but no prefix_weights / soft_target")
            h = self.cfg.horizon
            w = torch.as_tensor(prefix_weights, dtype=torch.float32, device=self.device)
            if w.shape not in ((b, h), (h,)):
                raise ValueError(f"prefix_weights must have shape ({b}, {h}) or ({h},), got {tuple(w.shape)}")
            target = self.normalizer.normalize_action(self._actions_arg("soft_target", soft_target, b, h), emb)
            guidance = SoftGuidance(target, w)
        return raw, norm, guidance

    def _predict(
        self,
        o: dict[str, Any],
        warm_start: Tensor | None,
        head_overrides: dict[str, Any],
        prefix: Any = None,
        prefix_weights: Any = None,
        soft_target: Any = None,
        latency_budget_ms: float | None = None,
    ) -> PolicyOutput:
        dev = self.device
        emb = o["embodiment"].to(dev)
        b = emb.shape[0]
        raw_prefix, norm_prefix, guidance = self._inpainting_args(b, emb, prefix, prefix_weights, soft_target)
        if latency_budget_ms is not None:
            budget = float(latency_budget_ms)
            if not (budget == budget and 0 <= budget < float("inf")):
                raise ValueError(f"latency_budget_ms must be a finite number >= 0, got {latency_budget_ms}")
            self.head.check_overrides({"latency_budget_ms": budget})  # a head without the knob: ValueError
        if warm_start is None and guidance is not None and self.cfg.execution.warm_start:
            warm_start = guidance.target
        _sync(dev)
        t0 = time.perf_counter()
        ctx = self.encode(o)
        _sync(dev)
        t1 = time.perf_counter()
        if latency_budget_ms is not None:
            head_overrides = {**head_overrides, "latency_budget_ms": max(0.0, budget - (t1 - t0) * 1e3)}
        graphed = None
        if self._graphed and warm_start is None and norm_prefix is None and guidance is None and latency_budget_ms is None:
            graphed = self._graphed.get(_knob_key(head_overrides))
            if graphed is not None and not graphed.fits(ctx):
                graphed = None
        if graphed is not None:
            pred = graphed(ctx)
        else:
            pred = self.head.predict(ctx, init=warm_start, prefix=norm_prefix, guidance=guidance, **head_overrides)
        _sync(dev)
        t2 = time.perf_counter()
        actions = self.normalizer.unnormalize_action(pred.actions, emb)
        normalized = pred.actions
        if raw_prefix is not None:
            d = raw_prefix.shape[1]
            valid = self.normalizer.action_dim_mask(emb)[:, None, :]
            actions = actions.clone()
            actions[:, :d] = torch.where(valid, raw_prefix, torch.zeros((), device=dev)).to(actions.dtype)
            normalized = normalized.clone()
            normalized[:, :d] = norm_prefix.to(normalized.dtype)
        _sync(dev)
        t3 = time.perf_counter()
        return PolicyOutput(
            actions=actions,
            normalized=normalized,
            steps=pred.steps,
            nfe=pred.nfe,
            latency_ms=(t3 - t0) * 1e3,
            head_ms=(t2 - t1) * 1e3,
            energy=pred.energy,
            grad_norm=pred.grad_norm,
        )

    @torch.no_grad()
    def score_chunks(self, obs: Mapping[str, Any], chunks: Tensor) -> Tensor:
        """Energies (B, K) of given unnormalized chunks (B, K, H, D) (or one per sample, (B, H, D))
        under ``obs``, for heads declaring ``capabilities.reports_energy`` (EBT: ``head.energy`` of the
        normalized chunk, the quantity ``predict_chunk``'s ``energy`` reports; lower is better).
        Other heads raise ValueError, as do chunks of the wrong shape."""
        if not self.head.capabilities.reports_energy or not callable(getattr(self.head, "energy", None)):
            raise ValueError(f"score_chunks: head {self.cfg.head!r} has no energy (capabilities.reports_energy)")
        o = validate_observation(obs, self.spec)
        dev = self.device
        c = torch.as_tensor(chunks, dtype=torch.float32, device=dev)
        c = c[:, None] if c.dim() == 3 else c
        b = o["state"].shape[0]
        if c.dim() != 4 or c.shape[0] != b or tuple(c.shape[2:]) != (self.cfg.horizon, self.cfg.action_dim):
            raise ValueError(f"score_chunks: chunks must be (B={b}, K, H={self.cfg.horizon}, D={self.cfg.action_dim}), "
                             f"got {tuple(c.shape)}")
        k = c.shape[1]
        was_training = self.training
        self.eval()
        try:
            emb = o["embodiment"].to(dev).repeat_interleave(k)
            norm = self.normalizer.normalize_action(c.flatten(0, 1), emb)
            return self.head.energy(self.encode(o).repeat_interleave(k), norm).view(b, k)
        finally:
            self.train(was_training)

    def reset(self) -> None:
        """Forget the action queue, ensemble buffer and warm start (call at episode start); the
        ``execution`` config is read here."""
        ex = self.cfg.execution
        self._broker = ActionChunkBroker(self._plan_chunk, mode=ex.mode, n_action_steps=ex.n_action_steps,
                                         ensemble_decay=ex.ensemble_decay, horizon=self.cfg.horizon)
        self._prev_norm: Tensor | None = None
        self.last_output: PolicyOutput | None = None

    def rollout_state(self) -> dict[str, Any]:
        """The per-episode execution state that ``reset()`` clears: the broker's action queue,
        ensemble buffer and step counter (``queue``, ``ensemble``, ``t``), the warm-start chunk and
        ``last_output`` (shallow copies of the containers; the tensors are shared, never modified in
        place). With ``load_rollout_state`` one policy can interleave several episodes (e.g. one per
        env worker)."""
        return {**self._broker.state(), "prev_norm": self._prev_norm, "last_output": self.last_output}

    def load_rollout_state(self, state: Mapping[str, Any]) -> None:
        """Restore a state captured by ``rollout_state()``."""
        self._broker.load_state(state)
        self._prev_norm = state["prev_norm"]
        self.last_output = state["last_output"]

    def _warm_start(self, executed: int) -> Tensor | None:
        ex = self.cfg.execution
        if not self.head.capabilities.warm_start or not ex.warm_start or self._prev_norm is None:
            return None
        prev = self._prev_norm
        shifted = prev[:, executed:]
        pad = shifted[:, -1:].expand(-1, executed, -1) if shifted.shape[1] else prev[:, -1:].expand(-1, executed, -1)
        return torch.cat([shifted, pad], dim=1)[:, : self.cfg.horizon]

    def _plan_chunk(self, obs: Mapping[str, Any]) -> Tensor:
        """The broker's chunk source: unnormalized actions (B, H, D) of one ``predict_chunk``, warm
        started from the previous chunk shifted by the steps executed since it was planned
        (receding: ``n_action_steps``; ensemble: 1). Sets ``last_output``."""
        b = self._broker
        out = self.predict_chunk(obs, warm_start=self._warm_start(b.n_action_steps if b.mode == "receding" else 1))
        self.last_output = out
        self._prev_norm = out.normalized
        return out.actions

    @torch.no_grad()
    def select_action(self, obs: Mapping[str, Any]) -> Tensor:
        """One unnormalized action (B, D) for the current control step, from the chunk broker
        (:class:`vla_ebt_client.ActionChunkBroker`, the one chunk execution of robot and sim)."""
        return self._broker.act(obs)

    # ------------------------------------------------------------------ persistence
    def _base_weight_prefixes(self) -> list[str]:
        bb = self.encoder.backbone
        return [f"encoder.backbone.{name}." for name in bb.pretrained_modules()]

    def _own_state_dict(self, include_backbone_base: bool) -> dict[str, Tensor]:
        prefixes = self._base_weight_prefixes()
        out = {}
        for k, v in self.state_dict().items():
            if k.startswith("normalizer.") or "lora_" in k:
                continue  # normalizer travels as JSON; adapters in their own file
            if not include_backbone_base and any(k.startswith(p) for p in prefixes):
                continue
            out[k] = v.detach().contiguous().cpu()
        return out

    def save_pretrained(self, directory: str | Path, merge_adapter: bool = False) -> Path:
        """Write config.json, normalizer.json, model.safetensors (+ adapter_model.safetensors).

        Backbone base weights are saved only when they changed: finetune mode "full", or
        ``merge_adapter=True`` (the adapter is then folded into them, in place, and the saved
        config says "full" so it loads without adapters). A frozen or LoRA backbone reloads its
        base weights from ``backbone.model`` (a hub id or local path).
        """
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        cfg = self.cfg
        lora = cfg.finetune.mode == "lora" and self.lora_modules
        if merge_adapter and lora:
            merge_lora(self.encoder.backbone)
            self.lora_modules = []
            cfg = dataclasses.replace(cfg, finetune=dataclasses.replace(cfg.finetune, mode="full"))
            self.cfg = cfg
            lora = False
        include_base = cfg.finetune.mode == "full"
        tmp = d / f".{WEIGHTS_NAME}.tmp"
        save_file(self._own_state_dict(include_base), str(tmp), metadata={"format": "pt"})
        tmp.replace(d / WEIGHTS_NAME)
        if lora:
            save_lora(self.encoder.backbone, d / ADAPTER_NAME)
        elif (d / ADAPTER_NAME).exists():
            (d / ADAPTER_NAME).unlink()
        self.normalizer.save_json(d / NORMALIZER_NAME)
        config_io.save_json(d / CONFIG_NAME, config_io.to_dict(cfg))
        return d

    @classmethod
    def load_config(cls, directory: str | Path) -> PolicyConfig:
        path = Path(directory) / CONFIG_NAME
        return config_io.from_dict(PolicyConfig, config_io.load_json(path), where=str(path))

    @classmethod
    def from_pretrained(cls, directory: str | Path, map_location: str | torch.device = "cpu") -> "VLAPolicy":
        """Rebuild from a folder written by save_pretrained; errors name the file and the problem."""
        d = Path(directory)
        if not d.is_dir():
            raise FileNotFoundError(f"{d}: policy directory not found")
        cfg = cls.load_config(d)
        normalizer = Normalizer.load_json(d / NORMALIZER_NAME)
        policy = cls(cfg, normalizer)
        weights_path = d / WEIGHTS_NAME
        if not weights_path.exists():
            raise FileNotFoundError(f"{weights_path}: weights file not found")
        state = load_file(str(weights_path), device=str(map_location))
        expected = policy._own_state_dict(include_backbone_base=cfg.finetune.mode == "full")
        missing = sorted(set(expected) - set(state))
        unexpected = sorted(set(state) - set(policy.state_dict()))
        if missing or unexpected:
            raise ValueError(f"{weights_path}: missing keys {missing[:10]} / unexpected keys {unexpected[:10]}")
        policy.load_state_dict(state, strict=False)
        if cfg.finetune.mode == "lora" and policy.lora_modules:
            load_lora(policy.encoder.backbone, d / ADAPTER_NAME)
        return policy.to(map_location).eval()
