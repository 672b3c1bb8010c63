"""Action heads: EBT (energy minimization), diffusion (DDPM/DDIM), flow matching and regression baselines.

Heads register by name (:mod:`vla_ebt.heads.factory`); adding one: docs/adding_a_head.md.
"""

from .base import ActionHead, ChunkPrediction, Context, HeadCapabilities
from .diffusion import DiffusionConfig, DiffusionHead
from .ebt import EBTConfig, EBTHead
from .flow import FlowConfig, FlowHead
from .factory import available_heads, build_head, head_class, head_config_for, register_head
from .inpainting import Inpainting, SoftGuidance, rtc_soft_weights
from .regression import RegressionConfig, RegressionHead
from .trunk import TrunkConfig

__all__ = [
    "ActionHead",
    "ChunkPrediction",
    "Context",
    "DiffusionConfig",
    "DiffusionHead",
    "EBTConfig",
    "EBTHead",
    "FlowConfig",
    "FlowHead",
    "HeadCapabilities",
    "Inpainting",
    "RegressionConfig",
    "RegressionHead",
    "SoftGuidance",
    "TrunkConfig",
    "available_heads",
    "build_head",
    "head_class",
    "head_config_for",
    "register_head",
    "rtc_soft_weights",
]
