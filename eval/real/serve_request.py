"""What a policy-server request must hold: the observation check, the request fields and the
protocol constants.

:func:`check_observation` turns a decoded request (numpy arrays from :mod:`vla_ebt_client.codec`)
into the observation ``predict_chunk`` takes, :func:`check_options` / :func:`check_inpainting`
the infer request's fields into its keyword arguments and :func:`check_chunks` a score request's
candidates into what ``score_chunks`` takes; each raises :class:`RequestError` naming the key and
the expectation. The server (:mod:`eval.real.serve`) replies with that message as a
``bad_request`` error. Message types and field names come from :mod:`vla_ebt_client.protocol`
(shared with the client); the whole protocol: docs/serving.md.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from vla_ebt_client.protocol import (
    CONTROL_KEYS,
    INFER_FIELDS,
    INPAINTING_FIELDS,
    OBS_KEYS,
    PROTOCOL,
    REQUEST_TYPES,
    SCORE_FIELDS,
)

__all__ = ["check_observation", "check_options", "check_inpainting", "check_chunks", "RequestError", "PROTOCOL",
           "DEFAULT_MAX_MESSAGE_BYTES", "OBS_KEYS", "CONTROL_KEYS", "OPTION_KEYS", "INFER_FIELDS", "SCORE_FIELDS",
           "REQUEST_TYPES"]

DEFAULT_MAX_MESSAGE_BYTES = 16 * 2**20
#: optional per-request inference options (docs/serving.md); an alias of ``INFER_FIELDS``
OPTION_KEYS = INFER_FIELDS


class RequestError(ValueError):
    """A request the server refuses (message names the key and the expectation)."""


def check_observation(req: Mapping[str, Any], spec: Any, max_batch: int,
                      fields: Sequence[str] = INFER_FIELDS) -> dict[str, Any]:
    """Request dict -> observation for ``predict_chunk`` (numpy arrays, canonical forms), against
    ``spec`` (an ObservationSpec) and a batch of at most ``max_batch``; RequestError otherwise.
    ``fields``: the request's keys besides the observation and ``CONTROL_KEYS`` (an infer request's
    ``INFER_FIELDS``, a score request's ``SCORE_FIELDS``); any other key is refused.

    Checks what :func:`vla_ebt.schema.validate_observation` does not (types from the wire,
    image size, float image range, batch size, embodiment names, unknown keys); the policy
    validates shapes, NaN/inf and embodiment ids again.
    """
    unknown = sorted(set(req) - set(OBS_KEYS) - set(CONTROL_KEYS) - set(fields))
    if unknown:
        raise RequestError(f"unknown key(s) {unknown}; an observation has keys {list(OBS_KEYS)} "
                           f"(+ {list(CONTROL_KEYS) + list(fields)})")
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


def _float_array(name: str, x: Any, expect: str) -> np.ndarray:
    """A numeric array (or nested list) from the wire -> finite float32; RequestError naming ``name``."""
    if isinstance(x, (list, tuple)):
        try:
            x = np.asarray(x, np.float32)
        except (TypeError, ValueError) as e:
            raise RequestError(f"{name!r} is not a numeric array {expect}: {e}") from None
    if not isinstance(x, np.ndarray) or x.dtype.kind not in "iuf":
        got = f"dtype {x.dtype}" if isinstance(x, np.ndarray) else type(x).__name__
        raise RequestError(f"{name!r} must be a float array {expect}, got {got}")
    if not np.isfinite(x).all():
        raise RequestError(f"{name!r} contains NaN or inf")
    return x.astype(np.float32, copy=False)


def _batched(a: np.ndarray, ndim: int, batch: int) -> np.ndarray:
    """One sample's array (``ndim`` - 1 dims) -> the same for each of ``batch`` samples; else as it is."""
    if a.ndim == ndim - 1:
        return np.repeat(a[None], batch, axis=0)
    return a


def _action_steps(name: str, x: Any, spec: Any, batch: int, steps: int | None) -> np.ndarray:
    """An unnormalized action array (n, D') or (B, n, D'), ``D' <= spec.action_dim``, with ``n == steps``
    (``n <= horizon`` when None) -> float32 (B, n, D'); the policy pads D' and normalizes it."""
    h, d = spec.horizon, spec.action_dim
    n = "d" if steps is None else str(steps)
    expect = (f"({n}, <= {d}) or ({batch}, {n}, <= {d})" + (f" with d <= {h} (the horizon)" if steps is None else ""))
    a = _float_array(name, x, expect)
    a = _batched(a, 3, batch)
    ok = a.ndim == 3 and a.shape[0] == batch and 1 <= a.shape[2] <= d
    ok = ok and (a.shape[1] <= h if steps is None else a.shape[1] == steps)
    if not ok:
        raise RequestError(f"{name!r} expected shape {expect}, got {tuple(a.shape)}")
    return a


def check_inpainting(req: Mapping[str, Any], spec: Any, batch: int, *, inpainting: bool | None = None,
                     head: Any = None) -> dict[str, Any]:
    """An infer request's real-time chunking fields -> keyword arguments for ``predict_chunk``
    (``prefix`` (B, d, D'), ``prefix_weights`` (B, H) or (H,), ``soft_target`` (B, H, D'): float32,
    unnormalized, as the robot sent them: ``predict_chunk`` normalizes them with the policy's
    normalizer); RequestError otherwise.

    ``prefix`` (d, D') or (B, d, D'), ``d <= H``, ``D' <= D``; one sample's (d, D') is used for every
    sample of the batch. ``prefix_weights`` (H,) or (B, H), finite and >= 0, and ``soft_target``
    (H, D') or (B, H, D') go together. ``inpainting``: the served head's
    ``capabilities.inpainting`` when known; a head without it takes a prefix (its first d steps are
    overwritten, as in process) but soft guidance is refused, naming ``head``.
    """
    out: dict[str, Any] = {}
    sent = [k for k in ("prefix_weights", "soft_target") if req.get(k) is not None]
    if sent and inpainting is False:
        raise RequestError(f"head {head!r} does not declare capabilities.inpainting: it takes 'prefix' (its first d "
                           f"steps are overwritten) but no soft guidance; leave out {sent}")
    if len(sent) == 1:
        other = ({"prefix_weights", "soft_target"} - set(sent)).pop()
        raise RequestError(f"'prefix_weights' and 'soft_target' go together (soft guidance toward the previous "
                           f"plan): got {sent[0]!r} without {other!r}")
    if req.get("prefix") is not None:
        out["prefix"] = _action_steps("prefix", req["prefix"], spec, batch, None)
    if sent:
        h = spec.horizon
        w = _float_array("prefix_weights", req["prefix_weights"], f"({h},) or ({batch}, {h})")
        if w.shape not in ((h,), (batch, h)):
            raise RequestError(f"'prefix_weights' expected shape ({h},) or ({batch}, {h}), got {tuple(w.shape)}")
        if (w < 0).any():
            raise RequestError(f"'prefix_weights' must be >= 0, got a minimum of {float(w.min()):.3g}")
        out["prefix_weights"] = w
        out["soft_target"] = _action_steps("soft_target", req["soft_target"], spec, batch, h)
    return out


def check_chunks(req: Mapping[str, Any], spec: Any, batch: int, max_chunks: int, *,
                 reports_energy: bool | None = None, head: Any = None) -> np.ndarray:
    """A score request's ``chunks`` (K, H, D') or (B, K, H, D'), ``D' <= D``, unnormalized -> float32
    (B, K, H, D) (dims past D' are 0, as in every reply's actions) for ``score_chunks``; one sample's
    (K, H, D') is scored under each observation of the batch. At most ``max_chunks`` chunks in all
    (B * K). ``reports_energy``: the served head's ``capabilities.reports_energy`` when known; a head
    without energy is refused, naming ``head``. RequestError otherwise."""
    if reports_energy is False:
        raise RequestError(f"head {head!r} has no energy (capabilities.reports_energy is False): it cannot "
                           "score 'chunks'; a score request needs an energy head (EBT)")
    if req.get("chunks") is None:
        raise RequestError("a score request needs 'chunks' (K, H, D) or (B, K, H, D): the candidate action chunks")
    h, d = spec.horizon, spec.action_dim
    expect = f"(K, {h}, <= {d}) or ({batch}, K, {h}, <= {d})"
    c = _batched(_float_array("chunks", req["chunks"], expect), 4, batch)
    if c.ndim != 4 or c.shape[0] != batch or c.shape[1] < 1 or c.shape[2] != h or not 1 <= c.shape[3] <= d:
        raise RequestError(f"'chunks' expected shape {expect} with K >= 1, got {tuple(c.shape)}")
    if c.shape[0] * c.shape[1] > max_chunks:
        raise RequestError(f"'chunks': at most {max_chunks} chunks per request (batch x K), got "
                           f"{c.shape[0]} x {c.shape[1]}")
    if c.shape[3] < d:
        c = np.concatenate([c, np.zeros(c.shape[:3] + (d - c.shape[3],), np.float32)], axis=3)
    return c


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
