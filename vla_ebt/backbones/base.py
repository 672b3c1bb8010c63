"""The one backbone interface: images + instructions -> prefix tokens and a mask.

Every vision-language backbone family (HF VLMs, open_clip, the composite image+text encoder)
implements :class:`Backbone` and registers a builder with :func:`register_backbone` in its module
under this package (every module here is imported on the first lookup), so a config names a family
and training, evaluation and serving build it the same way.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Callable

from torch import Tensor, nn

from ..registry import Registry
from torch.nn.modules.batchnorm import _BatchNorm


@dataclass
class BackboneConfig:
    """Which backbone to build and from where.

    family:       registry name ("composite", "paligemma", "idefics3", "open_clip", ...).
    model:        HF id or local directory (HF families), open_clip model name, or for the
                  composite family "<image_encoder>+<text_encoder>".
    checkpoint:   weights file (open_clip) or None.
    image_size:   side length the backbone's preprocessing resizes images to.
    max_text_tokens: instruction tokens kept (longer instructions are truncated).
    max_cameras:  size of the learned per-camera embedding table (families that add one).
    extra:        family-specific string options (see each family module's docstring).
    """

    family: str = "composite"
    model: str = "efficientnet_lite0+all-MiniLM-L6-v2"
    checkpoint: str | None = None
    image_size: int = 96
    max_text_tokens: int = 24
    max_cameras: int = 4
    extra: dict[str, str] = field(default_factory=dict)


@dataclass
class PrefixOutput:
    """Backbone output.

    tokens: (B, T, D_b) float prefix embeddings.
    mask:   (B, T) bool, True for valid tokens (padding of the text, absent cameras).
    """

    tokens: Tensor
    mask: Tensor


class Backbone(nn.Module, abc.ABC):
    """images (B, V, 3, H, W) float in [0, 1] + instructions (B strings) -> PrefixOutput.

    Subclasses set ``width`` (D_b) and ``family`` and own their preprocessing (resize, mean/std
    normalization, tokenization) so callers only pass raw [0, 1] images and strings.
    """

    width: int
    family: str
    #: "full" (plain nn.Module behaviour), "lora" or "frozen"; set by :func:`vla_ebt.lora.apply_finetune_mode`.
    finetune_mode: str = "full"

    @abc.abstractmethod
    def forward(self, images: Tensor, instructions: list[str]) -> PrefixOutput: ...

    @abc.abstractmethod
    def lora_target_modules(self) -> list[str]:
        """Default LoRA targets: peft-style name suffixes (``"q_proj"``, ``"attention.self.query"``) or
        ``"re:<regex>"`` full-name patterns, matched inside :meth:`pretrained_modules` (see vla_ebt.lora)."""

    def pretrained_modules(self) -> dict[str, nn.Module]:
        """Submodules that hold checkpoint weights, by attribute name.

        ``frozen`` and ``lora`` fine-tuning freeze exactly these; every other parameter of the backbone
        (newly initialised projections, camera embeddings) stays trainable. Default: all children.
        """
        return dict(self.named_children())

    def train(self, mode: bool = True) -> "Backbone":
        """nn.Module.train, except pretrained modules stay in eval mode when frozen, and their BatchNorm
        running statistics stay fixed unless the whole backbone is fine-tuned ("full")."""
        super().train(mode)
        if mode and self.finetune_mode != "full":
            for module in self.pretrained_modules().values():
                if self.finetune_mode == "frozen":
                    module.eval()
                else:
                    for sub in module.modules():
                        if isinstance(sub, _BatchNorm):
                            sub.eval()
        return self


_REGISTRY: Registry[Callable[[BackboneConfig], Backbone]] = Registry(
    "backbone family", "backbone families", package=__package__)


def register_backbone(family: str) -> Callable:
    """Decorator: register ``builder(cfg) -> Backbone`` under ``family``."""
    return _REGISTRY.register(family)


def available_backbones() -> list[str]:
    """Sorted names of the registered backbone families."""
    return _REGISTRY.names()


def build_backbone(cfg: BackboneConfig) -> Backbone:
    """Build the backbone a config names; unknown families raise ValueError listing the known ones."""
    try:
        builder = _REGISTRY.get(cfg.family)
    except ValueError as e:
        raise ValueError(f"backbone.family: {e}") from None
    return builder(cfg)
