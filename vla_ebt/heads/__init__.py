"""Action heads: EBT (energy minimization), diffusion (DDPM/DDIM) and regression baselines."""

from .base import ActionHead, ChunkPrediction, Context
from .diffusion import DiffusionConfig, DiffusionHead
from .ebt import EBTConfig, EBTHead
from .factory import build_head, head_config_for
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
    "RegressionConfig",
    "RegressionHead",
    "TrunkConfig",
    "build_head",
    "head_config_for",
]
