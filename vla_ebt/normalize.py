"""Normalization of actions and robot states, per dataset / embodiment.

This module is the single source of truth for normalization in training, evaluation and
serving. A :class:`Normalizer` is built from per-dataset statistics plus a
:class:`NormalizationConfig`, and it travels with the checkpoint as JSON
(:meth:`Normalizer.to_dict` / :meth:`Normalizer.save_json`); the torch buffers (state_dict) are
a convenience copy, the JSON is authoritative.

Design choices, each aimed at a common failure of VLA fine-tuning stacks:

* **No silent key mismatches.** Datasets are addressed by name via
  :meth:`Normalizer.embodiment_id`, which raises a ``ValueError`` listing every known name when a
  name is missing. Unknown keys in serialized config/stats are errors, never ignored.
* **No division by ~0.** A dimension whose range is smaller than ``eps`` (``q99 - q01`` for
  ``"quantile"``, ``max - min`` for ``"min_max"``, ``std`` for ``"mean_std"``) is *degenerate*.
  With ``on_degenerate="error"`` (the default) building the normalizer raises, naming the
  dataset, feature and dim. With ``on_degenerate="passthrough_dim"`` that dim normalizes to
  exactly 0 and unnormalizes to the constant stored in the stats (the mode's center) — the raw
  value is never passed through unnormalized.
* **Bounded action targets.** With ``clip=True`` (default) and a bounded action mode
  (``"quantile"`` or ``"min_max"``), normalized actions are clipped to [-1, 1] (so the rare 1 %
  tails cannot blow up the loss), and the same clip is applied to model outputs before
  unnormalizing (so served actions never leave [q01, q99] / [min, max]). Values inside the
  range round-trip exactly. States are never clipped; ``clip`` has no effect on
  ``"mean_std"`` / ``"identity"`` action modes.
* **Explicit padding.** Actions/states of all embodiments are padded to fixed
  ``max_action_dim`` / ``max_state_dim``. Padded dims always come out as exactly 0 (from both
  normalize and unnormalize, whatever the input held there), and per-embodiment dim masks are
  provided for losses.

Default modes: ``"quantile"`` for actions (robust to outliers, bounded targets for the head);
``"mean_std"`` for states (states are inputs, not targets; z-scoring degrades gracefully for dims
that are nearly constant with rare excursions, where q01 == q99 would make quantile mode
degenerate).

Shapes: B = batch, H = action horizon, To = observation steps, D = ``max_action_dim``,
S = ``max_state_dim``, E = number of embodiments (datasets).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
from dataclasses import dataclass
from typing import Any, Literal, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from .config_io import atomic_write_json

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

STATS_FORMAT_VERSION = 1
MODES = ("quantile", "min_max", "mean_std", "identity")
Mode = Literal["quantile", "min_max", "mean_std", "identity"]
_BOUNDED_MODES = ("quantile", "min_max")
_VECTOR_FIELDS = ("mean", "std", "min", "max", "q01", "q99")


# --------------------------------------------------------------------------------------------
# Statistics
# --------------------------------------------------------------------------------------------


def _as_float_list(value: Any, name: str) -> list[float]:
    """Convert a 1-D sequence/array of finite numbers to ``list[float]``; ValueError otherwise."""
    if isinstance(value, (str, bytes, Mapping)) or value is None:
        raise ValueError(f"field '{name}': expected a 1-D list of numbers, got {type(value).__name__}")
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise ValueError(f"field '{name}': expected a 1-D list of numbers ({e})") from None
    if arr.ndim != 1:
        raise ValueError(f"field '{name}': expected a 1-D list of numbers, got shape {arr.shape}")
    bad = np.flatnonzero(~np.isfinite(arr))
    if bad.size:
        i = int(bad[0])
        raise ValueError(
            f"field '{name}': expected finite numbers, got {arr[i]!r} at dim {i} "
            f"({bad.size} non-finite value(s))"
        )
    return [float(v) for v in arr]


@dataclass
class FeatureStats:
    """Per-dimension statistics of one feature (action or state) of one dataset.

    Every vector field has length D (the feature's native dim). ``std`` is the population
    standard deviation (ddof=0); ``q01``/``q99`` are ``np.quantile(x, 0.01 / 0.99, axis=0)``
    with numpy's default linear interpolation. ``count`` is the number of rows (timesteps) the
    statistics were computed from.

    Construction validates: all fields same length D >= 1, finite, ``std >= 0``,
    ``min <= q01 <= q99 <= max``, ``count >= 0``. Violations raise ``ValueError`` naming the
    field.
    """

    mean: list[float]
    std: list[float]
    min: list[float]
    max: list[float]
    q01: list[float]
    q99: list[float]
    count: int = 0

    def __post_init__(self) -> None:
        for name in _VECTOR_FIELDS:
            setattr(self, name, _as_float_list(getattr(self, name), name))
        dim = len(self.mean)
        if dim == 0:
            raise ValueError("field 'mean': expected at least 1 dim, got 0")
        for name in _VECTOR_FIELDS:
            n = len(getattr(self, name))
            if n != dim:
                raise ValueError(
                    f"field '{name}': expected {dim} dims (the length of 'mean'), got {n}"
                )
        if isinstance(self.count, bool) or not isinstance(self.count, (int, np.integer)):
            raise ValueError(f"field 'count': expected an int, got {type(self.count).__name__}")
        self.count = int(self.count)
        if self.count < 0:
            raise ValueError(f"field 'count': expected >= 0, got {self.count}")
        for i in range(dim):
            if self.std[i] < 0:
                raise ValueError(f"field 'std': expected >= 0, got {self.std[i]} at dim {i}")
            chain = (("min", self.min[i]), ("q01", self.q01[i]), ("q99", self.q99[i]), ("max", self.max[i]))
            for (na, a), (nb, b) in zip(chain, chain[1:]):
                if a > b:
                    raise ValueError(
                        f"field '{nb}': expected {na} <= {nb}, got {na}={a} > {nb}={b} at dim {i}"
                    )

    @property
    def dim(self) -> int:
        """Native dimension D of the feature."""
        return len(self.mean)

    @classmethod
    def from_array(cls, x: np.ndarray, mask: np.ndarray | None = None) -> "FeatureStats":
        """Compute statistics of ``x`` (N, D) over rows, optionally only rows where ``mask`` (N,)
        is True. Computed in float64. Raises ValueError on bad shapes, no valid rows or
        non-finite values."""
        x = np.asarray(x, dtype=np.float64)
        if x.ndim != 2:
            raise ValueError(f"from_array: expected x of shape (N, D), got {x.shape}")
        if mask is not None:
            mask = np.asarray(mask)
            if mask.shape != (x.shape[0],):
                raise ValueError(
                    f"from_array: expected mask of shape ({x.shape[0]},), got {mask.shape}"
                )
            x = x[mask.astype(bool)]
        if x.shape[0] == 0:
            raise ValueError("from_array: no valid rows to compute statistics from")
        if not np.isfinite(x).all():
            rows, cols = np.nonzero(~np.isfinite(x))
            raise ValueError(
                f"from_array: x contains non-finite values (first at valid row {rows[0]}, dim {cols[0]})"
            )
        q01, q99 = np.quantile(x, [0.01, 0.99], axis=0)
        return cls(
            mean=x.mean(axis=0),
            std=x.std(axis=0),
            min=x.min(axis=0),
            max=x.max(axis=0),
            q01=q01,
            q99=q99,
            count=int(x.shape[0]),
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (lists of Python floats; exact round-trip through ``json``)."""
        d: dict[str, Any] = {name: list(getattr(self, name)) for name in _VECTOR_FIELDS}
        d["count"] = self.count
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "FeatureStats":
        """Inverse of :meth:`to_dict`. Missing or unknown fields raise ValueError."""
        if not isinstance(d, Mapping):
            raise ValueError(f"expected a dict of statistics, got {type(d).__name__}")
        expected = set(_VECTOR_FIELDS) | {"count"}
        missing = [k for k in (*_VECTOR_FIELDS, "count") if k not in d]
        if missing:
            raise ValueError(
                f"missing field(s) {missing}; expected fields {sorted(expected)}"
            )
        unknown = sorted(set(d) - expected)
        if unknown:
            raise ValueError(f"unknown field(s) {unknown}; expected fields {sorted(expected)}")
        return cls(**{k: d[k] for k in expected})


@dataclass
class DatasetStats:
    """Statistics of one dataset / embodiment. ``state`` is None for action-only datasets."""

    action: FeatureStats
    state: FeatureStats | None = None
    num_episodes: int = 0
    num_steps: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.action, FeatureStats):
            raise ValueError(f"field 'action': expected FeatureStats, got {type(self.action).__name__}")
        if self.state is not None and not isinstance(self.state, FeatureStats):
            raise ValueError(f"field 'state': expected FeatureStats or None, got {type(self.state).__name__}")
        for name in ("num_episodes", "num_steps"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0:
                raise ValueError(f"field '{name}': expected an int >= 0, got {v!r}")
            setattr(self, name, int(v))

    def to_dict(self) -> dict[str, Any]:
        return {
            "action": self.action.to_dict(),
            "state": None if self.state is None else self.state.to_dict(),
            "num_episodes": self.num_episodes,
            "num_steps": self.num_steps,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "DatasetStats":
        """Inverse of :meth:`to_dict`. Errors are prefixed with the failing key (e.g. ``action.q99``)."""
        if not isinstance(d, Mapping):
            raise ValueError(f"expected a dict, got {type(d).__name__}")
        expected = {"action", "state", "num_episodes", "num_steps"}
        missing = [k for k in ("action", "num_episodes", "num_steps") if k not in d]
        if missing:
            raise ValueError(f"missing field(s) {missing}; expected fields {sorted(expected)}")
        unknown = sorted(set(d) - expected)
        if unknown:
            raise ValueError(f"unknown field(s) {unknown}; expected fields {sorted(expected)}")
        feats: dict[str, FeatureStats | None] = {}
        for key in ("action", "state"):
            raw = d.get(key)
            if raw is None and key == "state":
                feats[key] = None
                continue
            try:
                feats[key] = FeatureStats.from_dict(raw)
            except ValueError as e:
                raise ValueError(f"{key}: {e}") from None
        return cls(
            action=feats["action"],  # type: ignore[arg-type]
            state=feats["state"],
            num_episodes=d["num_episodes"],
            num_steps=d["num_steps"],
        )


def _stats_from_dict(datasets: Any, where: str) -> dict[str, DatasetStats]:
    if not isinstance(datasets, Mapping):
        raise ValueError(f"{where}: expected a dict of dataset name -> stats, got {type(datasets).__name__}")
    if not datasets:
        raise ValueError(f"{where}: no datasets")
    out: dict[str, DatasetStats] = {}
    for name in sorted(datasets):
        try:
            out[name] = DatasetStats.from_dict(datasets[name])
        except ValueError as e:
            raise ValueError(f"{where}['{name}']: {e}") from None
    return out


def _atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as JSON to ``path`` atomically (temp file in the same dir + os.replace);
    sorted keys, NaN/inf refused (ValueError, before any file is written)."""
    atomic_write_json(path, obj, sort_keys=True, allow_nan=False)


def _read_json(path: str | os.PathLike) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: invalid JSON ({e})") from None


def save_stats(path: str | os.PathLike, stats: Mapping[str, DatasetStats]) -> None:
    """Write ``{dataset name: DatasetStats}`` to ``path`` as JSON, atomically.

    File layout: ``{"format_version": 1, "datasets": {name: DatasetStats.to_dict()}}``.
    """
    if not stats:
        raise ValueError("save_stats: no datasets given")
    for name, s in stats.items():
        if not isinstance(name, str) or not name:
            raise ValueError(f"save_stats: dataset names must be non-empty strings, got {name!r}")
        if not isinstance(s, DatasetStats):
            raise ValueError(f"save_stats: stats['{name}'] is {type(s).__name__}, expected DatasetStats")
    _atomic_write_json(
        path,
        {"format_version": STATS_FORMAT_VERSION, "datasets": {k: v.to_dict() for k, v in stats.items()}},
    )


def load_stats(path: str | os.PathLike) -> dict[str, DatasetStats]:
    """Read a file written by :func:`save_stats`. Errors name the file and the failing key,
    e.g. ``stats.json: datasets['bridge']: action: field 'q99': expected 7 dims ...``."""
    raw = _read_json(path)
    if not isinstance(raw, Mapping):
        raise ValueError(f"{path}: expected a JSON object, got {type(raw).__name__}")
    version = raw.get("format_version")
    if version != STATS_FORMAT_VERSION:
        raise ValueError(f"{path}: format_version: expected {STATS_FORMAT_VERSION}, got {version!r}")
    if "datasets" not in raw:
        raise ValueError(f"{path}: missing key 'datasets'")
    unknown = sorted(set(raw) - {"format_version", "datasets"})
    if unknown:
        raise ValueError(f"{path}: unknown key(s) {unknown}")
    try:
        return _stats_from_dict(raw["datasets"], "datasets")
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None


# --------------------------------------------------------------------------------------------
# Config
# --------------------------------------------------------------------------------------------


@dataclass
class NormalizationConfig:
    """How features are normalized.

    action_mode:   "quantile" (default; q01 -> -1, q99 -> +1), "min_max" (min -> -1, max -> +1),
                   "mean_std" (z-score) or "identity".
    state_mode:    same choices; default "mean_std" (see module docstring).
    eps:           a dim whose range (q99 - q01, max - min, or std, per mode) is below eps is
                   degenerate. Absolute, in the feature's raw units.
    clip:          clip normalized actions (and model outputs before unnormalizing) to [-1, 1]
                   in bounded action modes ("quantile", "min_max"). States are never clipped.
    on_degenerate: "error" (default) raises when building the normalizer, naming dataset,
                   feature and dim; "passthrough_dim" maps that dim to 0 when normalizing and to
                   the stats' constant (the mode's center) when unnormalizing.
    """

    action_mode: Mode = "quantile"
    state_mode: Mode = "mean_std"
    eps: float = 1e-4
    clip: bool = True
    on_degenerate: Literal["error", "passthrough_dim"] = "error"

    def __post_init__(self) -> None:
        for name in ("action_mode", "state_mode"):
            v = getattr(self, name)
            if v not in MODES:
                raise ValueError(f"NormalizationConfig.{name}: expected one of {list(MODES)}, got {v!r}")
        if self.on_degenerate not in ("error", "passthrough_dim"):
            raise ValueError(
                "NormalizationConfig.on_degenerate: expected 'error' or 'passthrough_dim', "
                f"got {self.on_degenerate!r}"
            )
        if isinstance(self.eps, bool) or not isinstance(self.eps, (int, float)) or not (
            math.isfinite(self.eps) and self.eps > 0
        ):
            raise ValueError(f"NormalizationConfig.eps: expected a finite float > 0, got {self.eps!r}")
        self.eps = float(self.eps)
        if not isinstance(self.clip, bool):
            raise ValueError(f"NormalizationConfig.clip: expected a bool, got {self.clip!r}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "NormalizationConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"NormalizationConfig: unknown key(s) {unknown}; expected {sorted(names)}")
        return cls(**dict(d))


# --------------------------------------------------------------------------------------------
# Normalizer
# --------------------------------------------------------------------------------------------


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
