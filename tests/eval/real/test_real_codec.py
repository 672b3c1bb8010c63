"""msgpack-numpy codec, Spearman correlation, and the robot client's torch-free import."""

import subprocess
import sys
from pathlib import Path

import msgpack
import numpy as np
import pytest

from eval.real.replay import spearman
from vla_ebt_client.codec import CodecError, packb, unpackb

ROOT = Path(__file__).resolve().parents[3]


@pytest.mark.parametrize("dtype", ["uint8", "int64", "float32", "float64", "float16", "bool", ">f4", "complex64"])
def test_array_round_trip(dtype):
    rng = np.random.default_rng(0)
    x = (rng.normal(size=(2, 3, 4)) * 10).astype(dtype)
    y = unpackb(packb({"x": x, "nested": [x[0], {"y": x[:, :1]}]}))
    for a, b in [(x, y["x"]), (x[0], y["nested"][0]), (x[:, :1], y["nested"][1]["y"])]:
        assert b.dtype == a.dtype and b.shape == a.shape
        np.testing.assert_array_equal(a, b)
    assert y["x"].flags.writeable  # a copy, not a view of the message buffer


def test_non_contiguous_zero_size_and_scalars():
    x = np.arange(24, dtype=np.float32).reshape(4, 6)[:, ::2]
    y = unpackb(packb({"x": x, "e": np.zeros((0, 3), np.int32), "s": np.float32(1.5), "i": np.int64(3), "t": (1, 2)}))
    np.testing.assert_array_equal(y["x"], x)
    assert y["e"].shape == (0, 3) and y["e"].dtype == np.int32
    assert y["s"] == 1.5 and y["i"] == 3 and y["t"] == [1, 2]


def test_refuses_objects_and_malformed_arrays():
    with pytest.raises(TypeError):
        packb({"x": np.array([object()])})
    bad = [
        {"__ndarray__": True, "dtype": "|O", "shape": [1], "data": b"\0" * 8},  # object dtype
        {"__ndarray__": True, "dtype": "<f4", "shape": [3], "data": b"\0" * 8},  # byte count
        {"__ndarray__": True, "dtype": "<f4", "shape": [-1], "data": b""},  # negative dim
        {"__ndarray__": True, "dtype": "not a dtype", "shape": [1], "data": b"\0"},
        {"__ndarray__": True, "dtype": "<f4", "shape": [1], "data": "text"},
        {"__ndarray__": True, "dtype": [["a", "<f4"]], "shape": [1], "data": b"\0" * 4},  # structured
        {"__ndarray__": True, "shape": [1]},
    ]
    for m in bad:
        with pytest.raises(CodecError):
            unpackb(msgpack.packb(m, use_bin_type=True))
    for garbage in [b"\xc1", b"\x92\x01", b""]:
        with pytest.raises(CodecError):
            unpackb(garbage)
    with pytest.raises(CodecError, match="exceeds"):
        unpackb(packb({"x": 1}), max_bytes=2)


def test_spearman_matches_scipy_with_ties():
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(0)
    x = rng.integers(0, 5, 50).astype(float)  # many ties
    y = x + rng.normal(size=50)
    assert spearman(x, y) == pytest.approx(stats.spearmanr(x, y).statistic, abs=1e-12)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert spearman([1, 1, 1], [1, 2, 3]) is None  # constant input
    assert spearman([1, 2], [1, 2]) is None  # too few pairs
    assert spearman([1, 2, 3, np.nan, 5], [1, 2, 3, 4, 5]) == pytest.approx(1.0)  # non-finite pairs dropped


def test_client_module_imports_without_torch():
    code = (
        "import sys\n"
        "import vla_ebt_client, vla_ebt_client.codec, vla_ebt_client.client, vla_ebt_client.broker\n"
        "from vla_ebt_client import PolicyClient, ActionChunkBroker, ObservationHistory\n"
        "bad = sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.'))\n"
        "assert not bad, bad\n"
        "print('ok')\n"
    )
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr
