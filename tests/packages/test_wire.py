"""vla_ebt_client.wire: the one IPC framing (msgpack-numpy frames over pipes), its errors, and no pickle in eval/."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from vla_ebt_client import wire

ROOT = Path(__file__).resolve().parents[2]


def _message() -> dict:
    rng = np.random.default_rng(0)
    return {
        "f32": rng.normal(size=(2, 3)).astype(np.float32),
        "f64": rng.normal(size=(4,)),
        "f16": np.arange(5, dtype=np.float16),
        "u8": rng.integers(0, 255, size=(2, 3, 8, 8), dtype=np.uint8),
        "i64": np.array([-(2**62), 0, 2**62], np.int64),
        "bool": np.array([[True, False]]),
        "big_endian": np.arange(3, dtype=">i4"),
        "c64": np.array([1 + 2j], np.complex64),
        "empty": np.zeros((0, 7), np.float32),
        "scalar": np.float32(1.5),
        "nested": {"list": [1, "two", None, [np.int8(3)]], "deep": {"x": np.ones((1, 1), np.int16)}},
        "text": "pick up the bowl ✓",
        "none": None,
        "bytes": b"\x00\x01",
        "tuple": (1, 2.5),
        7: "int key",
    }


def _assert_same(a, b) -> None:
    if isinstance(a, np.ndarray):
        assert isinstance(b, np.ndarray) and b.dtype == a.dtype and b.shape == a.shape and b.flags.writeable
        np.testing.assert_array_equal(a, b)
    elif isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b)
        for k in a:
            _assert_same(a[k], b[k])
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, list) and len(a) == len(b)  # tuples arrive as lists
        for x, y in zip(a, b):
            _assert_same(x, y)
    elif isinstance(a, np.generic):
        assert b == a.item() and type(b) is type(a.item())
    else:
        assert b == a and type(b) is type(a)


def test_frames_round_trip_over_a_pipe_fd_and_file_objects():
    r, w = os.pipe()
    msgs = [_message(), None, "s", [], {"big": np.zeros(300_000, np.float64)}]  # 2.4 MB: many pipe chunks
    writer = threading.Thread(target=lambda: [wire.write_frame(w, m) for m in msgs])
    writer.start()
    got = [wire.read_frame(r, deadline=time.monotonic() + 30) for _ in msgs]
    writer.join()
    os.close(w)
    assert wire.read_frame(r) is None  # clean EOF between frames
    os.close(r)
    for a, b in zip(msgs, got):
        _assert_same(a, b)

    # file objects (buffered writer / buffered reader, no deadline) speak the same bytes
    r, w = os.pipe()
    with os.fdopen(w, "wb") as fw:
        wire.write_frame(fw, _message())
    with os.fdopen(r, "rb") as fr:
        _assert_same(_message(), wire.read_frame(fr))
        assert wire.read_frame(fr) is None


def test_frame_reader_reassembles_chunks():
    data = wire.encode_frame({"a": np.arange(10)}) + wire.encode_frame("second")
    fr = wire.FrameReader()
    out = []
    for i in range(0, len(data), 3):
        fr.feed(data[i : i + 3])
        while fr.ready:
            out.append(fr.pop())
    assert fr.pending == 0 and out[1] == "second" and np.array_equal(out[0]["a"], np.arange(10))
    with pytest.raises(IndexError):
        fr.pop()
    bad = wire.FrameReader(max_bytes=16)
    bad.feed(wire.HEADER.pack(17))
    with pytest.raises(wire.FrameError, match="17 bytes exceeds"):
        bad.ready


def test_short_read_timeout_and_bad_frames_raise_clear_errors():
    # the writer dies inside a frame
    r, w = os.pipe()
    frame = wire.encode_frame({"x": np.zeros(100)})
    os.write(w, frame[:50])
    os.close(w)
    with pytest.raises(wire.ShortReadError, match=r"ended after 46 of \d+ bytes") as e:
        wire.read_frame(r)
    assert isinstance(e.value, EOFError)
    os.close(r)

    # nothing arrives: the deadline raises, promptly
    r, w = os.pipe()
    t0 = time.monotonic()
    with pytest.raises(wire.ReadTimeout, match="timed out after 0 of 4 bytes") as e:
        wire.read_frame(r, deadline=time.monotonic() + 0.2)
    assert isinstance(e.value, TimeoutError) and time.monotonic() - t0 < 2
    # half a header, then silence
    os.write(w, b"\x00\x00")
    with pytest.raises(wire.ReadTimeout, match="after 2 of 4 bytes"):
        wire.read_exact(r, 4, deadline=time.monotonic() + 0.1)

    # a header announcing too much, and a body that is not msgpack
    os.write(w, wire.HEADER.pack(1000))
    with pytest.raises(wire.FrameError, match="exceeds the limit of 100"):
        wire.read_frame(r, max_bytes=100)
    os.write(w, wire.HEADER.pack(1) + b"\xc1")
    with pytest.raises(wire.CodecError, match="not a valid msgpack"):
        wire.read_frame(r)
    os.close(w)
    os.close(r)

    # what the codec cannot carry fails before anything is written
    r, w = os.pipe()
    with pytest.raises(TypeError):
        wire.write_frame(w, {"x": object()})
    with pytest.raises(TypeError):
        wire.write_frame(w, np.array(["a"], dtype=object))
    os.close(w)
    assert wire.read_frame(r) is None
    os.close(r)


def test_libero_worker_script_speaks_the_same_frames():
    """The LIBERO worker run as a script (isolated interpreter, no repo on sys.path) loads
    packages/vla_ebt_client on its sys.path; with an interpreter lacking LIBERO it sends one error frame and exits."""
    script = ROOT / "eval" / "sim" / "libero_worker.py"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, "-I", str(script)], input=b"", capture_output=True, env=env, timeout=60)
    r, w = os.pipe()
    os.write(w, proc.stdout)
    os.close(w)
    hello = wire.read_frame(r)
    assert wire.read_frame(r) is None
    os.close(r)
    assert proc.returncode == 1 and hello["ok"] is False and "libero" in hello["error"], proc.stderr[-2000:]


# the only modules allowed to mention these names are this test and none under eval/
_PICKLE = re.compile(r"^\s*(import|from)\s+(pickle|cPickle|_pickle|dill|cloudpickle|marshal|shelve)\b|"
                     r"\b(pickle|dill|cloudpickle|marshal)\.(loads?|dumps?)\b|allow_pickle\s*=\s*True|"
                     r"\bmultiprocessing\b.*\b(Queue|Pipe|Pool)\b", re.M)


def test_no_pickle_on_any_ipc_path_under_eval():
    hits = []
    for p in sorted((ROOT / "eval").rglob("*.py")):
        for m in _PICKLE.finditer(p.read_text()):
            line = p.read_text()[: m.start()].count("\n") + 1
            hits.append(f"{p.relative_to(ROOT)}:{line}: {m.group(0).strip()}")
    assert not hits, "pickle-based IPC under eval/ (use vla_ebt_client.wire):\n" + "\n".join(hits)
