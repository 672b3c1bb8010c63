"""Per-dataset statistics of actions and states, and their JSON file (``save_stats`` / ``load_stats``).

Field meanings and validation: :class:`FeatureStats`. Every error is a ``ValueError`` naming the
file (when there is one), the dataset and the failing field.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

from ..config_io import atomic_write_json

__all__ = ["FeatureStats", "DatasetStats", "save_stats", "load_stats", "STATS_FORMAT_VERSION"]

STATS_FORMAT_VERSION = 1
_VECTOR_FIELDS = ("mean", "std", "min", "max", "q01", "q99")


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
