"""The batched per-embodiment :class:`Normalizer` (torch buffers + JSON serialization) and
:func:`pad_last_dim`.

Shapes: B = batch, H = action horizon, To = observation steps, D = ``max_action_dim``,
S = ``max_state_dim``, E = number of embodiments (datasets).
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from .config import NormalizationConfig
from .stats import STATS_FORMAT_VERSION, DatasetStats, FeatureStats, _atomic_write_json, _read_json, _stats_from_dict

__all__ = ["Normalizer", "pad_last_dim"]

_BOUNDED_MODES = ("quantile", "min_max")


def pad_last_dim(x: Tensor, size: int) -> Tensor:
    """Zero-pad (never truncate) the last dim of ``x`` (..., d) to (..., size)."""
    d = x.shape[-1]
    if d > size:
        raise ValueError(f"pad_last_dim: last dim {d} exceeds target size {size}")
    if d == size:
        return x
    return torch.nn.functional.pad(x, (0, size - d))


def _center_scale(fs: FeatureStats, mode: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(center, scale, spread) in float64 for ``normalized = (x - center) / scale``.
    ``spread`` is the quantity compared against eps."""
    if mode == "quantile":
        lo, hi = np.asarray(fs.q01), np.asarray(fs.q99)
        return (lo + hi) / 2, (hi - lo) / 2, hi - lo
    if mode == "min_max":
        lo, hi = np.asarray(fs.min), np.asarray(fs.max)
        return (lo + hi) / 2, (hi - lo) / 2, hi - lo
    if mode == "mean_std":
        std = np.asarray(fs.std)
        return np.asarray(fs.mean), std, std
    if mode == "identity":
        ones = np.ones(fs.dim)
        return np.zeros(fs.dim), ones, np.full(fs.dim, np.inf)
    raise ValueError(f"unknown mode {mode!r}")


_SPREAD_NAME = {"quantile": "q99 - q01", "min_max": "max - min", "mean_std": "std"}


class Normalizer(nn.Module):
    """Per-embodiment normalization of padded actions and states.

    Embodiment ids are indices into ``self.names`` (dataset names sorted). Buffers
    (all shape (E, D) or (E, S), float32 / bool):
      ``{action,state}_center``, ``{action,state}_scale`` (1 where invalid/degenerate),
      ``{action,state}_valid`` (dim exists for that embodiment),
      ``{action,state}_degenerate`` (dim is degenerate; only possible in passthrough_dim mode).

    ``normalized = (x - center) / scale`` on valid, non-degenerate dims; 0 elsewhere.
    Computation is in float32; outputs keep the input dtype.
    """

    action_center: Tensor
    action_scale: Tensor
    action_valid: Tensor
    action_degenerate: Tensor
    state_center: Tensor
    state_scale: Tensor
    state_valid: Tensor
    state_degenerate: Tensor

    def __init__(
        self,
        stats: Mapping[str, DatasetStats],
        config: NormalizationConfig | None = None,
        max_action_dim: int | None = None,
        max_state_dim: int | None = None,
    ) -> None:
        """``max_*_dim`` default to the largest native dim across datasets; pass fixed values so
        checkpoints stay compatible when datasets are added."""
        super().__init__()
        if not stats:
            raise ValueError("Normalizer: no dataset statistics given")
        for name, s in stats.items():
            if not isinstance(name, str) or not name:
                raise ValueError(f"Normalizer: dataset names must be non-empty strings, got {name!r}")
            if not isinstance(s, DatasetStats):
                raise ValueError(f"Normalizer: stats['{name}'] is {type(s).__name__}, expected DatasetStats")
        self.config = config if config is not None else NormalizationConfig()
        self.names: tuple[str, ...] = tuple(sorted(stats))
        self.stats: dict[str, DatasetStats] = {n: stats[n] for n in self.names}

        a_dims = [self.stats[n].action.dim for n in self.names]
        s_dims = [0 if self.stats[n].state is None else self.stats[n].state.dim for n in self.names]
        self.max_action_dim = self._check_max_dim(max_action_dim, a_dims, "action")
        self.max_state_dim = self._check_max_dim(max_state_dim, s_dims, "state")

        for feature, mode, max_dim in (
            ("action", self.config.action_mode, self.max_action_dim),
            ("state", self.config.state_mode, self.max_state_dim),
        ):
            E = len(self.names)
            center = torch.zeros(E, max_dim, dtype=torch.float64)
            scale = torch.ones(E, max_dim, dtype=torch.float64)
            valid = torch.zeros(E, max_dim, dtype=torch.bool)
            degen = torch.zeros(E, max_dim, dtype=torch.bool)
            for e, name in enumerate(self.names):
                fs: FeatureStats | None = getattr(self.stats[name], feature)
                if fs is None:
                    continue
                c, s, spread = _center_scale(fs, mode)
                bad = spread < self.config.eps
                if bad.any() and self.config.on_degenerate == "error":
                    i = int(np.flatnonzero(bad)[0])
                    raise ValueError(
                        f"Normalizer: degenerate range for dataset '{name}', feature '{feature}', "
                        f"dim {i}: {_SPREAD_NAME[mode]} = {spread[i]:.6g} < eps = {self.config.eps:g} "
                        f"(mode '{mode}'; degenerate dims: {np.flatnonzero(bad).tolist()}). "
                        "Use NormalizationConfig(on_degenerate='passthrough_dim') to map such dims "
                        "to 0 (and back to the constant), or a different mode/eps."
                    )
                d = fs.dim
                center[e, :d] = torch.from_numpy(c)
                scale[e, :d] = torch.from_numpy(np.where(bad, 1.0, s))
                valid[e, :d] = True
                degen[e, :d] = torch.from_numpy(bad)
            self.register_buffer(f"{feature}_center", center.float())
            self.register_buffer(f"{feature}_scale", scale.float())
            self.register_buffer(f"{feature}_valid", valid)
            self.register_buffer(f"{feature}_degenerate", degen)

    @staticmethod
    def _check_max_dim(max_dim: int | None, dims: list[int], feature: str) -> int:
        need = max(dims)
        if max_dim is None:
            return need
        if isinstance(max_dim, bool) or not isinstance(max_dim, int) or max_dim < 0:
            raise ValueError(f"Normalizer: max_{feature}_dim must be an int >= 0, got {max_dim!r}")
        if max_dim < need:
            raise ValueError(f"Normalizer: max_{feature}_dim={max_dim} is smaller than the largest "
                             f"{feature} dim across datasets ({need})")
        return max_dim

    # ---------------------------------------------------------------- names / ids

    @property
    def num_embodiments(self) -> int:
        return len(self.names)

    def embodiment_id(self, name: str) -> int:
        """Index of dataset ``name``. Unknown names raise ValueError listing the known names."""
        try:
            return self.names.index(name)
        except ValueError:
            raise ValueError(
                f"Normalizer: unknown dataset/embodiment {name!r}; known names: {list(self.names)}"
            ) from None

    def embodiment_ids(self, names: Sequence[str], device: torch.device | str | None = None) -> Tensor:
        """(B,) long tensor of ids for a list of dataset names."""
        return torch.tensor([self.embodiment_id(n) for n in names], dtype=torch.long, device=device)

    def action_dim(self, name: str) -> int:
        """Native action dim of dataset ``name``."""
        return self.stats[self.names[self.embodiment_id(name)]].action.dim

    def state_dim(self, name: str) -> int:
        """Native state dim of dataset ``name`` (0 if it has no state)."""
        st = self.stats[self.names[self.embodiment_id(name)]].state
        return 0 if st is None else st.dim

    # ---------------------------------------------------------------- core

    def _ids(self, embodiment: Tensor, batch: int | None = None) -> Tensor:
        """Validate ``embodiment`` (B,) integer ids (B == ``batch`` if given) -> long on the buffers' device."""
        if not isinstance(embodiment, Tensor):
            raise TypeError(f"embodiment must be a LongTensor (B,), got {type(embodiment).__name__}")
        if embodiment.dtype.is_floating_point or embodiment.dtype == torch.bool or embodiment.dtype.is_complex:
            raise TypeError(f"embodiment must be an integer tensor, got dtype {embodiment.dtype}")
        if embodiment.dim() != 1 or (batch is not None and embodiment.shape[0] != batch):
            want = "(B,)" if batch is None else f"({batch},)"
            raise ValueError(f"embodiment: expected shape {want}, got {tuple(embodiment.shape)}")
        ids = embodiment.to(device=self.action_center.device, dtype=torch.long)
        if ids.numel():
            lo, hi = int(ids.min()), int(ids.max())
            if lo < 0 or hi >= self.num_embodiments:
                raise ValueError(
                    f"embodiment ids must be in [0, {self.num_embodiments}) "
                    f"(known names: {list(self.names)}), got min {lo}, max {hi}"
                )
        return ids

    def _gather(self, feature: str, x: Tensor, embodiment: Tensor, max_dim: int, shapes: str):
        if not isinstance(x, Tensor) or not x.dtype.is_floating_point:
            raise TypeError(f"{feature}: expected a floating-point tensor")
        if x.dim() not in (2, 3) or x.shape[-1] != max_dim:
            raise ValueError(
                f"{feature}: expected shape {shapes} with last dim {max_dim} (padded max dim; use "
                f"pad_last_dim), got {tuple(x.shape)}"
            )
        ids = self._ids(embodiment, x.shape[0])
        parts = [getattr(self, f"{feature}_{k}")[ids].to(x.device)
                 for k in ("center", "scale", "valid", "degenerate")]
        if x.dim() == 3:
            parts = [p.unsqueeze(1) for p in parts]
        return parts

    def _normalize(self, feature: str, mode: str, x: Tensor, embodiment: Tensor, max_dim: int, shapes: str) -> Tensor:
        center, scale, valid, degen = self._gather(feature, x, embodiment, max_dim, shapes)
        y = (x.to(torch.float32) - center) / scale
        if feature == "action" and self.config.clip and mode in _BOUNDED_MODES:
            y = y.clamp(-1.0, 1.0)
        y = torch.where(valid & ~degen, y, torch.zeros((), dtype=y.dtype, device=y.device))
        return y.to(x.dtype)

    def _unnormalize(self, feature: str, mode: str, x: Tensor, embodiment: Tensor, max_dim: int, shapes: str) -> Tensor:
        center, scale, valid, degen = self._gather(feature, x, embodiment, max_dim, shapes)
        y = x.to(torch.float32)
        if feature == "action" and self.config.clip and mode in _BOUNDED_MODES:
            y = y.clamp(-1.0, 1.0)
        y = y * scale + center
        y = torch.where(degen, center, y)
        y = torch.where(valid, y, torch.zeros((), dtype=y.dtype, device=y.device))
        return y.to(x.dtype)

    def normalize_action(self, action: Tensor, embodiment: Tensor) -> Tensor:
        """Raw padded actions (B, H, D) or (B, D) -> normalized, same shape. ``embodiment``: (B,)."""
        return self._normalize("action", self.config.action_mode, action, embodiment,
                               self.max_action_dim, "(B, H, D) or (B, D)")

    def unnormalize_action(self, action: Tensor, embodiment: Tensor) -> Tensor:
        """Normalized actions (B, H, D) or (B, D) -> raw units, same shape; padded dims are 0."""
        return self._unnormalize("action", self.config.action_mode, action, embodiment,
                                 self.max_action_dim, "(B, H, D) or (B, D)")

    def normalize_state(self, state: Tensor, embodiment: Tensor) -> Tensor:
        """Raw padded states (B, S) or (B, To, S) -> normalized, same shape."""
        return self._normalize("state", self.config.state_mode, state, embodiment,
                               self.max_state_dim, "(B, S) or (B, To, S)")

    def unnormalize_state(self, state: Tensor, embodiment: Tensor) -> Tensor:
        """Normalized states (B, S) or (B, To, S) -> raw units, same shape; padded dims are 0."""
        return self._unnormalize("state", self.config.state_mode, state, embodiment,
                                 self.max_state_dim, "(B, S) or (B, To, S)")

    def action_dim_mask(self, embodiment: Tensor) -> Tensor:
        """(B, D) bool: True where the action dim exists for that embodiment. Degenerate dims
        (passthrough_dim mode) are still True here; see :meth:`action_degenerate_mask`."""
        return self.action_valid[self._ids(embodiment)]

    def state_dim_mask(self, embodiment: Tensor) -> Tensor:
        """(B, S) bool: True where the state dim exists for that embodiment."""
        return self.state_valid[self._ids(embodiment)]

    def action_degenerate_mask(self, embodiment: Tensor) -> Tensor:
        """(B, D) bool: True on degenerate action dims (always normalized to 0). A loss may
        exclude them: ``mask = action_dim_mask(e) & ~action_degenerate_mask(e)``."""
        return self.action_degenerate[self._ids(embodiment)]

    # ---------------------------------------------------------------- serialization

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict: config, max dims and all dataset statistics (the source of truth)."""
        return {
            "format_version": STATS_FORMAT_VERSION,
            "config": self.config.to_dict(),
            "max_action_dim": self.max_action_dim,
            "max_state_dim": self.max_state_dim,
            "datasets": {n: self.stats[n].to_dict() for n in self.names},
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Normalizer":
        """Inverse of :meth:`to_dict`; gives identical outputs. Unknown/missing keys raise."""
        if not isinstance(d, Mapping):
            raise ValueError(f"Normalizer.from_dict: expected a dict, got {type(d).__name__}")
        keys = {"format_version", "config", "max_action_dim", "max_state_dim", "datasets"}
        missing = sorted(keys - set(d))
        if missing:
            raise ValueError(f"Normalizer.from_dict: missing key(s) {missing}")
        unknown = sorted(set(d) - keys)
        if unknown:
            raise ValueError(f"Normalizer.from_dict: unknown key(s) {unknown}")
        if d["format_version"] != STATS_FORMAT_VERSION:
            raise ValueError(f"Normalizer.from_dict: format_version: expected {STATS_FORMAT_VERSION}, "
                             f"got {d['format_version']!r}")
        return cls(
            _stats_from_dict(d["datasets"], "datasets"),
            NormalizationConfig.from_dict(d["config"]),
            max_action_dim=d["max_action_dim"],
            max_state_dim=d["max_state_dim"],
        )

    def save_json(self, path: str | os.PathLike) -> None:
        """Write :meth:`to_dict` to ``path`` atomically (store beside the checkpoint weights)."""
        _atomic_write_json(path, self.to_dict())

    @classmethod
    def load_json(cls, path: str | os.PathLike) -> "Normalizer":
        """Read a file written by :meth:`save_json`; errors name the file."""
        try:
            return cls.from_dict(_read_json(path))
        except ValueError as e:
            msg = str(e)
            raise ValueError(msg if msg.startswith(f"{path}:") else f"{path}: {msg}") from None

    def fingerprint(self) -> str:
        """Short sha256 of the canonical JSON; store it in checkpoints/logs to verify at
        inference that the same statistics are in use."""
        blob = json.dumps(self.to_dict(), sort_keys=True, allow_nan=False).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def extra_repr(self) -> str:
        return (f"names={list(self.names)}, max_action_dim={self.max_action_dim}, "
                f"max_state_dim={self.max_state_dim}, config={self.config}")
