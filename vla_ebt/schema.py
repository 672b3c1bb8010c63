"""The one observation / training-batch schema, used by training, evaluation and serving.

Observation (what a robot or simulator provides each control step; batched):

=============  ==========================  =====================================================
key            shape / type                meaning
=============  ==========================  =====================================================
images         (B, V, 3, H, W) float/uint8  V camera views (cameras x observation steps, flattened
                                            camera-major); float in [0, 1] or uint8 in [0, 255]
instruction    list[str] of length B        natural-language task instruction (non-empty)
state          (B, To, S) float             robot state, *unnormalized*, To observation steps,
                                            zero-padded to the policy's max state dim S
embodiment     (B,) long                    embodiment/dataset id (index into the normalizer)
=============  ==========================  =====================================================

A training batch adds:

=============  ==========================  =====================================================
action         (B, H, D) float             the next H actions, *unnormalized*, zero-padded to D
action_mask    (B, H) bool                 True where the step lies inside the episode
=============  ==========================  =====================================================

Dims beyond an embodiment's own action/state dim are masked by the normalizer
(:meth:`vla_ebt.normalize.Normalizer.action_dim_mask`), not by the batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import torch
from torch import Tensor

OBSERVATION_KEYS = ("images", "instruction", "state", "embodiment")
TRAINING_KEYS = OBSERVATION_KEYS + ("action", "action_mask")


@dataclass(frozen=True)
class ObservationSpec:
    """What a policy expects; announced by the policy server and checked on every request."""

    num_views: int
    image_size: int
    obs_steps: int
    state_dim: int
    action_dim: int
    horizon: int
    embodiments: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "num_views": self.num_views,
            "image_size": self.image_size,
            "obs_steps": self.obs_steps,
            "state_dim": self.state_dim,
            "action_dim": self.action_dim,
            "horizon": self.horizon,
            "embodiments": list(self.embodiments),
        }


class SchemaError(ValueError):
    """A batch or observation that does not match the schema (message names key and expectation)."""


def _tensor(batch: Mapping[str, Any], key: str, where: str) -> Tensor:
    if key not in batch:
        raise SchemaError(f"{where}: missing key {key!r}; expected keys {list(OBSERVATION_KEYS)}")
    v = batch[key]
    if not isinstance(v, Tensor):
        try:
            v = torch.as_tensor(v)
        except Exception as e:  # noqa: BLE001
            raise SchemaError(f"{where}: {key!r} is not array-like ({type(v).__name__}): {e}") from None
    return v


def validate_observation(obs: Mapping[str, Any], spec: ObservationSpec, where: str = "observation") -> dict[str, Any]:
    """Check shapes/dtypes/values against ``spec``; return a dict of tensors in canonical dtypes.

    images -> float32 in [0, 1]; state -> float32; embodiment -> long. Raises SchemaError naming
    the key, the expected and the received shape or value.
    """
    images = _tensor(obs, "images", where)
    if images.dim() != 5 or images.shape[1] != spec.num_views or images.shape[2] != 3:
        raise SchemaError(
            f"{where}: 'images' expected shape (B, {spec.num_views}, 3, H, W), got {tuple(images.shape)}"
        )
    b = images.shape[0]
    if images.dtype == torch.uint8:
        images = images.float() / 255.0
    elif images.is_floating_point():
        images = images.float()
        if not torch.isfinite(images).all():
            raise SchemaError(f"{where}: 'images' contains NaN or inf")
    else:
        raise SchemaError(f"{where}: 'images' expected uint8 or float dtype, got {images.dtype}")

    if "instruction" not in obs:
        raise SchemaError(f"{where}: missing key 'instruction'; expected a list of {b} strings")
    instr = obs["instruction"]
    if isinstance(instr, str):
        instr = [instr]
    instr = list(instr)
    if len(instr) != b or not all(isinstance(s, str) for s in instr):
        raise SchemaError(f"{where}: 'instruction' expected a list of {b} strings, got {instr!r:.200}")
    if any(not s.strip() for s in instr):
        raise SchemaError(f"{where}: 'instruction' contains an empty string")

    state = _tensor(obs, "state", where)
    if state.dim() == 2:
        state = state[:, None]
    if state.dim() != 3 or state.shape[0] != b or state.shape[1] != spec.obs_steps or state.shape[2] > spec.state_dim:
        raise SchemaError(
            f"{where}: 'state' expected shape ({b}, {spec.obs_steps}, <= {spec.state_dim}), got {tuple(state.shape)}"
        )
    if not state.is_floating_point() or not torch.isfinite(state).all():
        raise SchemaError(f"{where}: 'state' must be finite floats, got dtype {state.dtype}")
    if state.shape[2] < spec.state_dim:
        state = torch.nn.functional.pad(state.float(), (0, spec.state_dim - state.shape[2]))

    emb = _tensor(obs, "embodiment", where).reshape(-1)
    if emb.numel() == 1 and b > 1:
        emb = emb.expand(b)
    if emb.shape != (b,) or emb.is_floating_point():
        raise SchemaError(f"{where}: 'embodiment' expected ({b},) integer ids, got {tuple(emb.shape)} {emb.dtype}")
    if emb.min() < 0 or emb.max() >= len(spec.embodiments):
        raise SchemaError(
            f"{where}: 'embodiment' ids must be in [0, {len(spec.embodiments)}) for {list(spec.embodiments)}, "
            f"got {emb.tolist()}"
        )
    return {"images": images, "instruction": instr, "state": state.float(), "embodiment": emb.long()}


def validate_batch(batch: Mapping[str, Any], spec: ObservationSpec, where: str = "batch") -> dict[str, Any]:
    """validate_observation plus 'action' (B, H, <= D) finite and 'action_mask' (B, H) bool."""
    out = validate_observation(batch, spec, where)
    b = out["images"].shape[0]
    action = _tensor(batch, "action", where).float()
    if action.dim() != 3 or action.shape[0] != b or action.shape[1] != spec.horizon or action.shape[2] > spec.action_dim:
        raise SchemaError(
            f"{where}: 'action' expected shape ({b}, {spec.horizon}, <= {spec.action_dim}), got {tuple(action.shape)}"
        )
    if not torch.isfinite(action).all():
        raise SchemaError(f"{where}: 'action' contains NaN or inf")
    if action.shape[2] < spec.action_dim:
        action = torch.nn.functional.pad(action, (0, spec.action_dim - action.shape[2]))
    mask = batch.get("action_mask")
    if mask is None:
        mask = torch.ones(b, spec.horizon, dtype=torch.bool)
    mask = torch.as_tensor(mask)
    if mask.shape != (b, spec.horizon):
        raise SchemaError(f"{where}: 'action_mask' expected shape ({b}, {spec.horizon}), got {tuple(mask.shape)}")
    out["action"] = action
    out["action_mask"] = mask.bool()
    return out
