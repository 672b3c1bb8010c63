"""What a policy-server request must hold: the observation check and the protocol constants.

:func:`check_observation` turns a decoded request (numpy arrays from :mod:`vla_ebt_client.codec`)
into the observation ``predict_chunk`` takes, or raises :class:`RequestError` naming the key and
the expectation. The server (:mod:`eval.real.serve`) replies with that message as a
``bad_request`` error. The whole protocol: docs/serving.md.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

__all__ = ["check_observation", "check_options", "RequestError", "PROTOCOL", "DEFAULT_MAX_MESSAGE_BYTES",
           "OBS_KEYS", "CONTROL_KEYS", "OPTION_KEYS"]

PROTOCOL = "vla_ebt.serve/1"
DEFAULT_MAX_MESSAGE_BYTES = 16 * 2**20
OBS_KEYS = ("images", "instruction", "state", "embodiment")
CONTROL_KEYS = ("request_id", "type")
#: optional per-request inference options (docs/serving.md)
OPTION_KEYS = ("latency_budget_ms",)


class RequestError(ValueError):
    """A request the server refuses (message names the key and the expectation)."""


def check_observation(req: Mapping[str, Any], spec: Any, max_batch: int) -> dict[str, Any]:
    """Request dict -> observation for ``predict_chunk`` (numpy arrays, canonical forms), against
    ``spec`` (an ObservationSpec) and a batch of at most ``max_batch``; RequestError otherwise.

    Checks what :func:`vla_ebt.schema.validate_observation` does not (types from the wire,
    image size, float image range, batch size, embodiment names, unknown keys); the policy
    validates shapes, NaN/inf and embodiment ids again.
    """
    unknown = sorted(set(req) - set(OBS_KEYS) - set(CONTROL_KEYS) - set(OPTION_KEYS))
    if unknown:
        raise RequestError(f"unknown key(s) {unknown}; an observation has keys {list(OBS_KEYS)} "
                           f"(+ optional {list(CONTROL_KEYS) + list(OPTION_KEYS)})")
    missing = [k for k in OBS_KEYS if k not in req]
    if missing:
        raise RequestError(f"missing key(s) {missing}; an observation has keys {list(OBS_KEYS)}")
    images = req["images"]
    if not isinstance(images, np.ndarray):
        raise RequestError(f"'images' must be an array (B, {spec.num_views}, 3, {spec.image_size}, "
                           f"{spec.image_size}), got {type(images).__name__}")
    want = (spec.num_views, 3, spec.image_size, spec.image_size)
    if images.ndim != 5 or tuple(images.shape[1:]) != want:
        raise RequestError(f"'images' expected shape (B, {', '.join(map(str, want))}), got {tuple(images.shape)}")
    b = images.shape[0]
    if not 1 <= b <= max_batch:
        raise RequestError(f"batch size must be in [1, {max_batch}], got {b}")
    if images.dtype == np.uint8:
        pass
    elif images.dtype.kind == "f":
        if not np.isfinite(images).all():
            raise RequestError("'images' contains NaN or inf")
        lo, hi = float(images.min()), float(images.max())
        if lo < -1e-3 or hi > 1 + 1e-3:
            raise RequestError(f"float 'images' must be in [0, 1] (got [{lo:.3g}, {hi:.3g}]); send uint8 for 0..255")
        images = images.astype(np.float32, copy=False)
    else:
        raise RequestError(f"'images' dtype must be uint8 or float, got {images.dtype}")

    instr = req["instruction"]
    if isinstance(instr, str):
        instr = [instr] * b if b > 1 else [instr]
    if not isinstance(instr, list) or len(instr) != b or not all(isinstance(s, str) for s in instr):
        raise RequestError(f"'instruction' must be a string or a list of {b} strings, got {str(instr)[:200]}")

    state = req["state"]
    if isinstance(state, list):
        try:
            state = np.asarray(state, np.float32)
        except (TypeError, ValueError) as e:
            raise RequestError(f"'state' is not a numeric array: {e}") from None
    if not isinstance(state, np.ndarray) or state.dtype.kind != "f":
        got = state.dtype if isinstance(state, np.ndarray) else type(state).__name__
        raise RequestError(f"'state' must be a float array (B, {spec.obs_steps}, <= {spec.state_dim}), got {got}")
    if not np.isfinite(state).all():
        raise RequestError("'state' contains NaN or inf")
    state = state.astype(np.float32, copy=False)

    emb = req["embodiment"]
    names = list(spec.embodiments)
    if isinstance(emb, str):
        if emb not in names:
            raise RequestError(f"unknown embodiment {emb!r}; known: {names}")
        emb = names.index(emb)
    if isinstance(emb, bool) or (isinstance(emb, np.ndarray) and emb.dtype.kind not in "iu"):
        raise RequestError(f"'embodiment' must be integer id(s) or a name in {names}")
    try:
        emb = np.asarray(emb)
    except (TypeError, ValueError) as e:
        raise RequestError(f"'embodiment' is not an id or list of ids: {e}") from None
    if emb.dtype.kind not in "iu":
        raise RequestError(f"'embodiment' must be integer id(s) or a name in {names}, got dtype {emb.dtype}")
    emb = emb.astype(np.int64).reshape(-1)
    return {"images": images, "instruction": instr, "state": state, "embodiment": emb}


def check_options(req: Mapping[str, Any], knobs: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The request's inference options -> keyword arguments for ``predict_chunk``; RequestError otherwise.

    ``latency_budget_ms``: a finite number > 0 (or None / absent): the per-chunk latency budget of an
    anytime head (EBT). ``knobs``: the served head's ``capabilities.knobs`` when known; a budget for a
    head without the ``latency_budget_ms`` knob is refused.
    """
    out: dict[str, Any] = {}
    budget = req.get("latency_budget_ms")
    if budget is not None:
        if isinstance(budget, np.ndarray) and budget.ndim == 0:
            budget = budget.item()
        if isinstance(budget, np.generic):
            budget = budget.item()
        if isinstance(budget, bool) or not isinstance(budget, (int, float)):
            raise RequestError(f"'latency_budget_ms' must be a number (milliseconds), got {type(budget).__name__}")
        budget = float(budget)
        if not np.isfinite(budget) or budget <= 0:
            raise RequestError(f"'latency_budget_ms' must be a finite number > 0, got {budget}")
        if knobs is not None and "latency_budget_ms" not in knobs:
            raise RequestError("this policy's head has no latency budget (no 'latency_budget_ms' knob; anytime "
                               "inference is an EBT feature): leave 'latency_budget_ms' out")
        out["latency_budget_ms"] = budget
    return out


def to_numpy(x: Any) -> np.ndarray | None:
    """Tensor / array / None -> numpy (CPU) or None."""
    if x is None:
        return None
    if hasattr(x, "detach"):
        x = x.detach().cpu()
        if x.dtype.is_floating_point:
            x = x.float()
        x = x.numpy()
    return np.asarray(x)
