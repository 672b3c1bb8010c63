"""The one wire format of vla_ebt's inter-process messages: :mod:`vla_ebt_client.codec` bodies, framed.

Framing (:func:`write_frame` / :func:`read_frame`, :class:`FrameReader` for non-blocking pipes):
a frame is a 4-byte big-endian unsigned length ``n`` (:data:`HEADER`), then ``n`` bytes of codec
body, ``n <= MAX_FRAME_BYTES``. A stream that ends exactly between frames is a clean end
(``read_frame`` returns None); one that ends inside a frame raises :class:`ShortReadError`.

Users: the env workers (:mod:`eval.sim.workers`) and the LIBERO worker (``eval/sim/libero_worker.py``,
run by the LIBERO virtualenv's interpreter, which puts this package on its ``sys.path``); the policy
server and robot client send codec bodies inside WebSocket messages. Stdlib, numpy and msgpack only.

    write_frame(fd, {"obs": {"image": np.zeros((3, 8, 8), np.uint8)}, "done": False})
    msg = read_frame(fd, deadline=time.monotonic() + 5.0)   # None: the writer closed the stream
"""

from __future__ import annotations

import os
import select
import struct
import time
from typing import Any, BinaryIO, Union

from .codec import ALLOWED_KINDS, ARRAY_KEY, CodecError, decode, encode, packb, unpackb

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

HEADER = struct.Struct(">I")
MAX_FRAME_BYTES = (1 << 31) - 1  # 2 GiB: far above any observation batch, well below the header's range

Stream = Union[int, BinaryIO]  # a file descriptor or a binary file object


# --------------------------------------------------------------------------------------------
# errors
# --------------------------------------------------------------------------------------------


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
