"""How actions and states are normalized: :class:`NormalizationConfig` (modes, eps, clip, degenerate dims)."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Literal, Mapping

__all__ = ["NormalizationConfig", "MODES"]

MODES = ("quantile", "min_max", "mean_std", "identity")
Mode = Literal["quantile", "min_max", "mean_std", "identity"]


@dataclass
class NormalizationConfig:
    """How features are normalized.

    action_mode:   "quantile" (default; q01 -> -1, q99 -> +1), "min_max" (min -> -1, max -> +1),
                   "mean_std" (z-score) or "identity".
    state_mode:    same choices; default "mean_std" (why: docs/normalization.md).
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
