"""The one wire format of vla_ebt's inter-process messages: msgpack with numpy arrays, framed.

Codec (:func:`packb` / :func:`unpackb`): an ``np.ndarray`` travels as the map ``{"__ndarray__":
True, "dtype": "<f4", "shape": [..], "data": <raw C-order bytes>}``; numpy scalars become Python
scalars; tuples become lists. Only bool / integer / unsigned / float / complex dtypes are accepted
(never object or structured dtypes: nothing is unpickled), and ``data`` must have exactly
``prod(shape) * itemsize`` bytes. Decoded arrays are writable copies. ``dtype.str`` is the same
across numpy 1.x and 2.x, so the two ends may run different numpy versions.

Framing (:func:`write_frame` / :func:`read_frame`, :class:`FrameReader` for non-blocking pipes):
a frame is a 4-byte big-endian unsigned length ``n`` (:data:`HEADER`), then ``n`` bytes of codec
body, ``n <= MAX_FRAME_BYTES``. A stream that ends exactly between frames is a clean end
(``read_frame`` returns None); one that ends inside a frame raises :class:`ShortReadError`.

Users: the policy server and robot client (:mod:`eval.real`, the codec inside WebSocket messages),
the env workers (:mod:`eval.sim.workers`) and the LIBERO worker (``eval/sim/libero_worker.py``,
run by the LIBERO virtualenv's interpreter, which loads this file by path). Hence: stdlib, numpy
and msgpack only, and no imports from this repository.

    write_frame(fd, {"obs": {"image": np.zeros((3, 8, 8), np.uint8)}, "done": False})
    msg = read_frame(fd, deadline=time.monotonic() + 5.0)   # None: the writer closed the stream
"""

from __future__ import annotations

import os
import select
import struct
import time
from typing import Any, BinaryIO, Union

import msgpack
import numpy as np

__all__ = [
    "packb",
    "unpackb",
    "encode",
    "decode",
    "CodecError",
    "FrameError",
    "ShortReadError",
    "ReadTimeout",
    "ARRAY_KEY",
    "ALLOWED_KINDS",
    "HEADER",
    "MAX_FRAME_BYTES",
    "encode_frame",
    "read_exact",
    "read_frame",
    "write_frame",
    "FrameReader",
]

ARRAY_KEY = "__ndarray__"
ALLOWED_KINDS = frozenset("biufc")  # bool, int, uint, float, complex
MAX_NDIM = 32
HEADER = struct.Struct(">I")
MAX_FRAME_BYTES = (1 << 31) - 1  # 2 GiB: far above any observation batch, well below the header's range

Stream = Union[int, BinaryIO]  # a file descriptor or a binary file object


# --------------------------------------------------------------------------------------------
# errors
# --------------------------------------------------------------------------------------------


class CodecError(ValueError):
    """A message that is not valid msgpack-numpy (bad dtype, shape or byte count)."""


class FrameError(CodecError):
    """A frame header announcing more than the allowed number of bytes (a broken stream)."""


class ShortReadError(EOFError):
    """The stream ended after ``got`` of the ``expected`` bytes."""

    def __init__(self, got: int, expected: int) -> None:
        self.got, self.expected = got, expected
        super().__init__(f"stream ended after {got} of {expected} bytes")


class ReadTimeout(TimeoutError):
    """The deadline passed after ``got`` of the ``expected`` bytes had arrived."""

    def __init__(self, got: int, expected: int) -> None:
        self.got, self.expected = got, expected
        super().__init__(f"read timed out after {got} of {expected} bytes")


# --------------------------------------------------------------------------------------------
# codec
# --------------------------------------------------------------------------------------------


def encode(obj: Any) -> Any:
    """msgpack ``default`` hook: numpy arrays -> tagged maps, numpy scalars -> Python scalars.
    Raises TypeError for anything else (and for arrays of other dtype kinds)."""
    if isinstance(obj, np.ndarray):
        if obj.dtype.kind not in ALLOWED_KINDS:
            raise TypeError(f"msgpack_numpy: cannot send arrays of dtype {obj.dtype} (only bool/int/uint/float/complex)")
        arr = np.ascontiguousarray(obj)
        return {ARRAY_KEY: True, "dtype": arr.dtype.str, "shape": list(arr.shape), "data": arr.tobytes()}
    if isinstance(obj, np.generic):
        return obj.item()
    raise TypeError(f"msgpack_numpy: cannot serialize {type(obj).__name__}")


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
    """Encode one message; raises TypeError for values the format cannot carry."""
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


# --------------------------------------------------------------------------------------------
# framing
# --------------------------------------------------------------------------------------------


def _frame_size(head: bytes | bytearray, max_bytes: int) -> int:
    (n,) = HEADER.unpack_from(head)
    if n > max_bytes:
        raise FrameError(f"frame of {n} bytes exceeds the limit of {max_bytes} bytes (broken stream?)")
    return n


def encode_frame(msg: Any) -> bytes:
    """``msg`` as one frame (header + body). Raises TypeError for values the codec cannot carry
    and FrameError for a body above MAX_FRAME_BYTES."""
    body = packb(msg)
    if len(body) > MAX_FRAME_BYTES:
        raise FrameError(f"message of {len(body)} bytes exceeds the frame limit of {MAX_FRAME_BYTES} bytes")
    return HEADER.pack(len(body)) + body


def read_exact(src: Stream, n: int, deadline: float | None = None) -> bytes:
    """Read exactly ``n`` bytes from ``src`` (a file descriptor or a binary file object).

    ``deadline``: a ``time.monotonic()`` instant; None waits forever. With a deadline, or with a
    file descriptor, reads go through ``select`` + ``os.read`` on the descriptor (works on
    non-blocking pipes; a file object must then be unbuffered, e.g. ``Popen(bufsize=0)``); a
    file object without a deadline is read with its own ``read``.
    Raises :class:`ShortReadError` (an EOFError) when the stream ends first and
    :class:`ReadTimeout` (a TimeoutError) when the deadline passes first.
    """
    buf = bytearray()
    if deadline is None and not isinstance(src, int):
        while len(buf) < n:
            chunk = src.read(n - len(buf))
            if not chunk:
                raise ShortReadError(len(buf), n)
            buf += chunk
        return bytes(buf)
    fd = src if isinstance(src, int) else src.fileno()
    while len(buf) < n:
        left = None
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise ReadTimeout(len(buf), n)
        ready, _, _ = select.select([fd], [], [], left)
        if not ready:
            continue  # timed out: the check above raises
        try:
            chunk = os.read(fd, min(n - len(buf), 1 << 20))
        except BlockingIOError:  # spurious wake-up on a non-blocking descriptor
            continue
        if not chunk:
            raise ShortReadError(len(buf), n)
        buf += chunk
    return bytes(buf)


def read_frame(src: Stream, deadline: float | None = None, max_bytes: int = MAX_FRAME_BYTES) -> Any:
    """Read and decode one frame (see :func:`read_exact` for ``src`` / ``deadline``).

    Returns the message, or None when the stream ends before the first header byte (the writer
    closed it between frames). Raises ShortReadError when it ends inside a frame, ReadTimeout at
    the deadline, FrameError for a frame above ``max_bytes`` and CodecError for a bad body.
    """
    try:
        head = read_exact(src, HEADER.size, deadline)
    except ShortReadError as e:
        if e.got == 0:
            return None
        raise
    return unpackb(read_exact(src, _frame_size(head, max_bytes), deadline))


def write_frame(dst: Stream, msg: Any) -> None:
    """Write ``msg`` as one frame to ``dst`` (a blocking file descriptor or a binary file object,
    which is flushed). Encoding errors (TypeError, FrameError) are raised before any byte is
    written; a closed reader raises BrokenPipeError (an OSError)."""
    view = memoryview(encode_frame(msg))
    while view:  # os.write and unbuffered (raw) streams may write part of the data
        n = os.write(dst, view) if isinstance(dst, int) else dst.write(view)
        if n is None:  # a raw stream in non-blocking mode that is full
            raise BlockingIOError("write_frame: the stream would block; use a blocking stream")
        view = view[n:]
    if not isinstance(dst, int):
        dst.flush()


class FrameReader:
    """Reassembles frames from chunks read off a non-blocking pipe.

    ``feed(chunk)`` appends bytes; ``ready`` tells whether a complete frame is buffered; ``pop()``
    decodes and removes it (IndexError when none is complete; CodecError for a bad body). A
    buffered header above ``max_bytes`` makes ``ready`` raise FrameError.
    """

    def __init__(self, max_bytes: int = MAX_FRAME_BYTES) -> None:
        self.max_bytes = int(max_bytes)
        self._buf = bytearray()

    def feed(self, chunk: bytes) -> None:
        self._buf += chunk

    @property
    def pending(self) -> int:
        """Bytes buffered (complete frames and a partial one)."""
        return len(self._buf)

    @property
    def ready(self) -> bool:
        if len(self._buf) < HEADER.size:
            return False
        return len(self._buf) >= HEADER.size + _frame_size(self._buf, self.max_bytes)

    def pop(self) -> Any:
        if not self.ready:
            raise IndexError("FrameReader.pop: no complete frame buffered")
        end = HEADER.size + HEADER.unpack_from(self._buf)[0]
        body = bytes(self._buf[HEADER.size:end])
        del self._buf[:end]
        return unpackb(body)
