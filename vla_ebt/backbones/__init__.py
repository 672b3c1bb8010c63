"""Vision-language backbones. See :mod:`vla_ebt.backbones.base` for the interface."""

from .base import Backbone, BackboneConfig, PrefixOutput, available_backbones, build_backbone, register_backbone

__all__ = ["Backbone", "BackboneConfig", "PrefixOutput", "available_backbones", "build_backbone", "register_backbone"]
