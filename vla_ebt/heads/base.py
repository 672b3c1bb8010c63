"""The contract every action head satisfies, the capabilities it declares, and the context it reads.

All heads work in *normalized* action space (values roughly in [-1, 1]); the policy owns
normalization. Shapes: B = batch, T = context tokens, W = head width, H = prediction horizon,
D = (padded) action dimension.
"""

from __future__ import annotations

import abc
import contextlib
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Iterator, Mapping

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from .inpainting import SoftGuidance, resolve_inpainting


@dataclass
class Context:
    """Context tokens the head cross-attends to, computed once per observation.

    tokens: (B, T, W) float, already at head width.
    mask:   (B, T) bool, True where the token is valid.
    """

    tokens: Tensor
    mask: Tensor

    @property
    def batch_size(self) -> int:
        return self.tokens.shape[0]

    def repeat_interleave(self, n: int) -> "Context":
        """Repeat every sample n times along the batch: (B, ...) -> (B * n, ...)."""
        return Context(self.tokens.repeat_interleave(n, 0), self.mask.repeat_interleave(n, 0))

    def repeat(self, n: int) -> "Context":
        """Tile the whole batch n times: (B, ...) -> (n * B, ...), sample i at rows i, B + i, ..."""
        return Context(self.tokens.repeat(n, 1, 1), self.mask.repeat(n, 1))

    def detach(self) -> "Context":
        return Context(self.tokens.detach(), self.mask)


@dataclass
class ChunkPrediction:
    """One predicted action chunk per sample, with what it cost.

    actions:   (B, H, D) normalized actions.
    energy:    (B,) final energy (EBT) or None.
    steps:     (B,) long, optimization/denoising steps actually used per sample.
    grad_norm: (B,) final energy-gradient norm (EBT) or None.
    nfe:       network evaluations for the whole batch call (forward passes of the trunk).
    """

    actions: Tensor
    steps: Tensor
    nfe: int
    energy: Tensor | None = None
    grad_norm: Tensor | None = None
    energy_trace: Tensor | None = None  # (K+1, B) energy before the first and after each step


def expand_mask(mask: Tensor | None, like: Tensor) -> Tensor:
    """A supervision mask as a float (B, H, D) like ``like``: None -> ones, (B, H) -> broadcast over D."""
    if mask is None:
        return torch.ones_like(like)
    m = mask.to(like.dtype)
    return m.unsqueeze(-1).expand_as(like) if m.dim() == 2 else m


def masked_mean(err: Tensor, mask: Tensor | None) -> Tensor:
    """Mean of an elementwise error (B, H, D) over valid entries only.

    mask: (B, H, D) or (B, H) bool/float, 1 = supervised. Returns a scalar.
    """
    if mask is None:
        return err.mean()
    m = expand_mask(mask, err)
    return (err * m).sum() / m.sum().clamp_min(1.0)


def masked_mse(pred: Tensor, target: Tensor, mask: Tensor | None) -> Tensor:
    """Mean squared error over valid entries only. pred, target: (B, H, D)."""
    return masked_mean((pred - target).pow(2), mask)


def masked_l1(pred: Tensor, target: Tensor, mask: Tensor | None) -> Tensor:
    """Mean absolute error over valid entries only. pred, target: (B, H, D)."""
    return masked_mean((pred - target).abs(), mask)


def warm_start_steps(num_steps: int, warm_noise: float) -> int:
    """Steps a warm-started sampler runs when it re-runs the last ``warm_noise`` share (in [0, 1]) of
    a ``num_steps`` schedule: ``max(1, round(num_steps * warm_noise))``, and 0 when ``warm_noise`` is 0
    (the init is returned as it is). Out-of-range values raise ValueError."""
    if not 0.0 <= warm_noise <= 1.0:
        raise ValueError(f"warm_noise must be in [0, 1], got {warm_noise}")
    if warm_noise == 0.0:
        return 0
    return min(num_steps, max(1, round(num_steps * warm_noise)))


@dataclass(frozen=True)
class HeadCapabilities:
    """What a head is, declared by the head class (callers query this, never the head's name).

    warm_start:        ``predict(init=...)`` starts from ``init`` (the previous plan shifted in time);
                       heads without it never see ``init``.
    eval_cost:         cost of one network evaluation (one unit of ``ChunkPrediction.nfe``) in trunk
                       forward-pass equivalents.
    knobs:             inference overrides ``predict`` accepts: name -> meaning. Unset knobs take the
                       head config's value.
    reports_energy:    predictions carry ``energy``, ``grad_norm`` and ``energy_trace``.
    second_order_loss: the training loss differentiates through a gradient (``create_graph=True``).
    presets:           named inference settings the head is compared under: (label, knob values).
    warm_overrides:    knob values under which ``init`` actually shapes the output when warm start is
                       on (e.g. diffusion / flow re-noise the previous plan only with ``warm_noise`` < 1,
                       their default being cold); comparisons apply them to every warm-start row.
    inpainting:        ``sample`` takes an :class:`~vla_ebt.heads.inpainting.Inpainting` (a frozen prefix
                       and soft guidance toward the previous plan, docs/realtime.md); without it
                       ``predict`` only overwrites the frozen steps and refuses soft guidance.
    """

    warm_start: bool = False
    eval_cost: float = 1.0
    knobs: Mapping[str, str] = field(default_factory=dict)
    reports_energy: bool = False
    second_order_loss: bool = False
    presets: tuple[tuple[str, Mapping[str, Any]], ...] = ()
    warm_overrides: Mapping[str, Any] = field(default_factory=dict)
    inpainting: bool = False


#: ``hook(head, context, init, overrides, prediction)``, called after every ``predict``.
PredictHook = Callable[["ActionHead", Context, "Tensor | None", dict[str, Any], ChunkPrediction], None]


class ActionHead(nn.Module, abc.ABC):
    """A head maps a Context to action chunks and knows how to train itself.

    Subclasses set ``config_class`` and ``capabilities`` and implement ``compute_loss`` and
    ``sample``; callers use ``predict``, which applies and validates the inference overrides.
    """

    horizon: int
    action_dim: int
    #: registry name, set by :func:`vla_ebt.heads.factory.register_head`
    name: ClassVar[str] = ""
    #: the head's config dataclass (fields ``trunk``, ``horizon``, ``action_dim`` plus its own)
    config_class: ClassVar[type]
    capabilities: ClassVar[HeadCapabilities] = HeadCapabilities()

    def __init__(self) -> None:
        super().__init__()
        self._override_stack: list[dict[str, Any]] = []
        self._predict_hooks: OrderedDict[int, PredictHook] = OrderedDict()
        self._in_hook = False

    @abc.abstractmethod
    def compute_loss(
        self, context: Context, target: Tensor, mask: Tensor | None = None
    ) -> tuple[Tensor, dict[str, float]]:
        """Training loss. target: (B, H, D) normalized; mask: (B, H, D) valid entries.

        Returns (scalar loss, float metrics for logging).
        """

    @abc.abstractmethod
    def sample(self, context: Context, init: Tensor | None = None, **knobs: Any) -> ChunkPrediction:
        """One chunk per context. Keyword-only parameters = ``capabilities.knobs`` (None: the config's
        value). Called by ``predict``; overrides are already validated and ``init`` is None unless
        the head declares ``warm_start``."""

    def check_overrides(self, overrides: Mapping[str, Any]) -> None:
        """ValueError naming the head, the unknown knob(s) and the known ones."""
        known = self.capabilities.knobs
        bad = sorted(k for k in overrides if k not in known)
        if bad:
            raise ValueError(f"head {self.name or type(self).__name__!r} has no inference knob(s) {bad}; "
                             f"known: {sorted(known)}")

    @contextlib.contextmanager
    def inference_overrides(self, **overrides: Any) -> Iterator["ActionHead"]:
        """Within the block every ``predict`` call uses ``overrides`` (validated now) unless the call
        passes the same knob. Blocks nest; the inner one wins."""
        self.check_overrides(overrides)
        self._override_stack.append(dict(overrides))
        try:
            yield self
        finally:
            self._override_stack.pop()

    def active_overrides(self) -> dict[str, Any]:
        """The knob values the enclosing ``inference_overrides`` blocks set (inner ones win)."""
        out: dict[str, Any] = {}
        for layer in self._override_stack:
            out.update(layer)
        return out

    def predict(
        self,
        context: Context,
        init: Tensor | None = None,
        prefix: Tensor | None = None,
        prefix_mask: Tensor | None = None,
        guidance: SoftGuidance | None = None,
        **overrides: Any,
    ) -> ChunkPrediction:
        """Sample one chunk per context. init: (B, H, D) optional warm start (used only by heads
        declaring ``warm_start``); overrides: knobs for this call (``capabilities.knobs``; unknown
        ones raise ValueError). Runs the predict hooks (not for calls made from inside a hook).

        Inpainting (normalized space, docs/realtime.md): ``prefix`` (B, d, D) the committed first d
        steps, or (B, H, D) with ``prefix_mask`` (B, H) bool; ``guidance`` a
        :class:`~vla_ebt.heads.inpainting.SoftGuidance` (target (B, H, D), weights (B, H) or (H,)).
        The returned chunk's frozen steps equal the prefix exactly. A head declaring
        ``capabilities.inpainting`` gets them as ``sample(..., inpaint=...)``; for other heads the
        frozen steps are overwritten after sampling and ``guidance`` raises ValueError."""
        knobs = {**self.active_overrides(), **overrides}
        self.check_overrides(knobs)
        inpaint = resolve_inpainting(prefix, prefix_mask, guidance, context.batch_size, self.horizon,
                                     self.action_dim, context.tokens.device, context.tokens.dtype)
        init = init if self.capabilities.warm_start else None
        if inpaint is None:
            pred = self.sample(context, init, **knobs)
        elif self.capabilities.inpainting:
            pred = self.sample(context, init, inpaint, **knobs)
        elif inpaint.has_soft:
            raise ValueError(f"head {self.name or type(self).__name__!r} does not declare capabilities.inpainting: "
                             "it takes a prefix (its frozen steps are overwritten) but no soft guidance")
        else:
            pred = self.sample(context, init, **knobs)
            pred.actions = inpaint.apply(pred.actions)
        if self._predict_hooks and not self._in_hook:
            self._in_hook = True
            try:
                for hook in list(self._predict_hooks.values()):
                    hook(self, context, init, knobs, pred)
            finally:
                self._in_hook = False
        return pred

    def register_predict_hook(self, hook: PredictHook) -> RemovableHandle:
        """Call ``hook(head, context, init, overrides, prediction)`` after every ``predict``;
        ``handle.remove()`` detaches it."""
        handle = RemovableHandle(self._predict_hooks)
        self._predict_hooks[handle.id] = hook
        return handle
