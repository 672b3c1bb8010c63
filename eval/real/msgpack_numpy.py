"""msgpack with numpy arrays: the wire codec of the policy server and its client.

The codec lives in :mod:`eval.wire` (shared with the env workers' framed pipes); this module
re-exports it under its historical name. See :mod:`eval.wire` for the format and error contract.

    blob = packb({"state": np.zeros((1, 1, 2), np.float32), "instruction": ["go"]})
    obs = unpackb(blob)

Depends on numpy and msgpack only (imported by the torch-free robot client).
"""

from __future__ import annotations

from ..wire import ALLOWED_KINDS, ARRAY_KEY, MAX_NDIM, CodecError, decode, encode, packb, unpackb

__all__ = ["packb", "unpackb", "encode", "decode", "CodecError", "ARRAY_KEY", "ALLOWED_KINDS", "MAX_NDIM"]
