"""Build an action head by name: "ebt", "diffusion" or "regression"."""

from __future__ import annotations

from typing import Any, Literal, Union

from .base import ActionHead
from .diffusion import DiffusionConfig, DiffusionHead
from .ebt import EBTConfig, EBTHead
from .regression import RegressionConfig, RegressionHead
from .trunk import TrunkConfig

HeadKind = Literal["ebt", "diffusion", "regression"]
AnyHeadConfig = Union[EBTConfig, DiffusionConfig, RegressionConfig]

_REGISTRY: dict[str, tuple[type, type]] = {
    "ebt": (EBTConfig, EBTHead),
    "diffusion": (DiffusionConfig, DiffusionHead),
    "regression": (RegressionConfig, RegressionHead),
}


def _lookup(kind: str) -> tuple[type, type]:
    try:
        return _REGISTRY[kind]
    except KeyError:
        raise ValueError(f"unknown head kind {kind!r}; expected one of {sorted(_REGISTRY)}") from None


def head_config_for(
    kind: HeadKind, trunk: TrunkConfig, horizon: int, action_dim: int, **kw: Any
) -> AnyHeadConfig:
    """The config dataclass for ``kind`` with the shared fields filled in; ``kw`` sets the rest."""
    cfg_cls, _ = _lookup(kind)
    return cfg_cls(trunk=trunk, horizon=horizon, action_dim=action_dim, **kw)


def build_head(kind: HeadKind, cfg: AnyHeadConfig) -> ActionHead:
    """Instantiate the head for ``kind``; ``cfg`` must be that kind's config dataclass."""
    cfg_cls, head_cls = _lookup(kind)
    if not isinstance(cfg, cfg_cls):
        raise TypeError(f"head kind {kind!r} needs a {cfg_cls.__name__}, got {type(cfg).__name__}")
    return head_cls(cfg)
