"""msgpack with numpy arrays: the wire format of the policy server and its client.

An ``np.ndarray`` travels as the map ``{"__ndarray__": True, "dtype": "<f4", "shape": [..],
"data": <raw C-order bytes>}``; numpy scalars become Python scalars; tuples become lists. Only
bool / integer / unsigned / float / complex dtypes are accepted (never object or structured
dtypes: nothing is unpickled), and ``data`` must have exactly ``prod(shape) * itemsize`` bytes.
Decoded arrays are writable copies (independent of the message buffer).

    blob = packb({"state": np.zeros((1, 1, 2), np.float32), "instruction": ["go"]})
    obs = unpackb(blob)

Depends on numpy and msgpack only: the policy server, the robot client and the env workers'
pipes (:mod:`eval.sim.workers`) all speak it.
"""

from __future__ import annotations

from typing import Any

import msgpack
import numpy as np

__all__ = ["packb", "unpackb", "encode", "decode", "CodecError", "ARRAY_KEY", "ALLOWED_KINDS"]

ARRAY_KEY = "__ndarray__"
ALLOWED_KINDS = frozenset("biufc")  # bool, int, uint, float, complex
MAX_NDIM = 32


class CodecError(ValueError):
    """A message that is not valid msgpack-numpy (bad dtype, shape or byte count)."""


def encode(obj: Any) -> Any:
    """msgpack ``default`` hook: numpy arrays -> tagged maps, numpy scalars -> Python scalars."""
    if isinstance(obj, np.ndarray):
        if obj.dtype.kind not in ALLOWED_KINDS:
            raise TypeError(f"codec: cannot send arrays of dtype {obj.dtype} (only bool/int/uint/float/complex)")
        arr = np.ascontiguousarray(obj)
        return {ARRAY_KEY: True, "dtype": arr.dtype.str, "shape": list(arr.shape), "data": arr.tobytes()}
    if isinstance(obj, np.generic):
        return obj.item()
    raise TypeError(f"codec: cannot serialize {type(obj).__name__}")


def _array(m: dict) -> np.ndarray:
    try:
        dtype = np.dtype(m["dtype"])
        shape = tuple(int(s) for s in m["shape"])
        data = m["data"]
    except (KeyError, TypeError, ValueError) as e:
        raise CodecError(f"malformed array (needs dtype, shape, data): {e}") from None
    if dtype.kind not in ALLOWED_KINDS or dtype.fields is not None or dtype.subdtype is not None:
        raise CodecError(f"array dtype {m['dtype']!r} not allowed (only bool/int/uint/float/complex)")
    if len(shape) > MAX_NDIM or any(s < 0 for s in shape):
        raise CodecError(f"array shape {list(shape)} invalid")
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise CodecError(f"array data must be bytes, got {type(data).__name__}")
    n = 1
    for s in shape:
        n *= s
    if len(data) != n * dtype.itemsize:
        raise CodecError(f"array data has {len(data)} bytes, expected {n * dtype.itemsize} for shape {list(shape)} "
                         f"dtype {dtype.str}")
    return np.frombuffer(data, dtype=dtype).reshape(shape).copy()


def decode(m: dict) -> Any:
    """msgpack ``object_hook``: tagged maps -> arrays."""
    if m.get(ARRAY_KEY) is True:
        return _array(m)
    return m


def packb(obj: Any) -> bytes:
    """Encode ``obj`` (dicts / lists / str / numbers / numpy arrays); raises TypeError for anything else."""
    return msgpack.packb(obj, default=encode, use_bin_type=True)


def unpackb(data: bytes, max_bytes: int | None = None) -> Any:
    """Decode a message; raises CodecError for anything malformed (never another exception type
    for bad input)."""
    if max_bytes is not None and len(data) > max_bytes:
        raise CodecError(f"message of {len(data)} bytes exceeds the limit of {max_bytes} bytes")
    try:
        return msgpack.unpackb(data, object_hook=decode, raw=False, strict_map_key=False)
    except CodecError:
        raise
    except Exception as e:  # noqa: BLE001 - msgpack raises many types for garbage input
        raise CodecError(f"not a valid msgpack message: {type(e).__name__}: {e}") from None
