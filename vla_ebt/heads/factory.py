"""The head registry: ``@register_head("name")`` on an :class:`ActionHead` subclass, build by name.

Every module of this package is imported on the first lookup, so a head defined in a new file under
``vla_ebt/heads/`` registers without any other file changing (docs/adding_a_head.md). A head defined
elsewhere registers when its module is imported.
"""

from __future__ import annotations

from typing import Any, Callable, TypeVar

from ..registry import Registry
from .base import ActionHead
from .trunk import TrunkConfig

HeadT = TypeVar("HeadT", bound=type[ActionHead])

HEADS: Registry[type[ActionHead]] = Registry("head", package=__package__)


def register_head(name: str) -> Callable[[HeadT], HeadT]:
    """Class decorator: register an ActionHead subclass (with ``config_class`` and
    ``capabilities`` set) under ``name`` and set its ``name``."""

    def deco(cls: HeadT) -> HeadT:
        if not (isinstance(cls, type) and issubclass(cls, ActionHead)):
            raise TypeError(f"register_head({name!r}): expected an ActionHead subclass, got {cls!r}")
        if not isinstance(getattr(cls, "config_class", None), type):
            raise TypeError(f"register_head({name!r}): {cls.__name__} does not set config_class")
        cls.name = name
        return HEADS.register(name)(cls)

    return deco


def available_heads() -> list[str]:
    """Sorted names of the registered heads."""
    return HEADS.names()


def head_class(kind: str) -> type[ActionHead]:
    """The head class registered as ``kind``; unknown names raise ValueError listing the known heads."""
    return HEADS.get(kind)


def head_config_for(kind: str, trunk: TrunkConfig, horizon: int, action_dim: int, **kw: Any) -> Any:
    """The config dataclass for ``kind`` with the shared fields filled in; ``kw`` sets the rest."""
    return head_class(kind).config_class(trunk=trunk, horizon=horizon, action_dim=action_dim, **kw)


def build_head(kind: str, cfg: Any) -> ActionHead:
    """Instantiate the head for ``kind``; ``cfg`` must be that kind's config dataclass (else TypeError)."""
    cls = head_class(kind)
    if not isinstance(cfg, cls.config_class):
        raise TypeError(f"head {kind!r} needs a {cls.config_class.__name__}, got {type(cfg).__name__}")
    return cls(cfg)
