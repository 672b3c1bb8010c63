"""Normalization of actions and robot states, per dataset / embodiment.

The single source of truth for normalization in training, evaluation and serving. A
:class:`Normalizer` is built from per-dataset statistics (:mod:`.stats`) plus a
:class:`NormalizationConfig` (:mod:`.config`) and travels with the checkpoint as JSON
(:meth:`Normalizer.to_dict` / :meth:`Normalizer.save_json`); the torch buffers (state_dict) are a
convenience copy, the JSON is authoritative.

Contract: unknown dataset names and unknown keys in serialized config/stats raise ``ValueError``;
a degenerate dim (range < ``eps``) raises unless ``on_degenerate="passthrough_dim"`` (then it
normalizes to 0 and unnormalizes to the stats' constant); with ``clip=True`` and a bounded action
mode, normalized actions and model outputs are clipped to [-1, 1]; padded dims always come out 0.
Defaults: ``"quantile"`` for actions, ``"mean_std"`` for states. The reasons for each choice are in
docs/normalization.md.

Modules: :mod:`.stats` (FeatureStats, DatasetStats, save/load_stats), :mod:`.config`
(NormalizationConfig, MODES), :mod:`.normalizer` (Normalizer, pad_last_dim).
"""

from __future__ import annotations

from .config import MODES, NormalizationConfig
from .normalizer import Normalizer, pad_last_dim
from .stats import STATS_FORMAT_VERSION, DatasetStats, FeatureStats, load_stats, save_stats

__all__ = [
    "FeatureStats",
    "DatasetStats",
    "NormalizationConfig",
    "Normalizer",
    "save_stats",
    "load_stats",
    "pad_last_dim",
    "MODES",
    "STATS_FORMAT_VERSION",
]
