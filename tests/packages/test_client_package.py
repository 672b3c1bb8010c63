"""The torch-free client package (packages/vla_ebt_client): one observation history for training
and closed loops, one chunk execution for numpy and torch chunks, and the package installed alone
in a fresh virtualenv driving a running policy server."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from eval.real.serve import PolicyServer
from tests.policy_fixtures import D, H, make_policy
from vla_ebt.data.episodes import ChunkDataset, Episode
from vla_ebt_client import ActionChunkBroker, ObservationHistory, camera_major, history_indices

ROOT = Path(__file__).resolve().parents[2]
CLIENT_DIR = ROOT / "packages" / "vla_ebt_client"


# ------------------------------------------------------------------------------------------------
# observation history


def test_history_indices_repeat_the_first_step():
    assert history_indices(0, 3).tolist() == [0, 0, 0]
    assert history_indices(1, 3).tolist() == [0, 0, 1]
    assert history_indices(5, 3).tolist() == [3, 4, 5]
    assert history_indices(4, 1).tolist() == [4]
    assert history_indices(2, 3).dtype == np.int64
    for t, to in [(-1, 2), (0, 0)]:
        with pytest.raises(ValueError):
            history_indices(t, to)


@pytest.mark.parametrize("obs_steps, image_history, views", [(1, False, 1), (3, False, 2), (3, True, 2), (2, True, 1)])
def test_streaming_history_equals_the_training_samples(obs_steps, image_history, views):
    """ObservationHistory fed step by step (closed loop) gives exactly ChunkDataset's sample
    (training) at every step: same frames (camera-major), same states, same padding."""
    g = np.random.default_rng(0)
    T = 6
    ep = Episode(images=g.integers(0, 256, (T, views, 3, 8, 8), dtype=np.uint8),
                 state=g.normal(size=(T, 3)).astype(np.float32), action=np.zeros((T, 2), np.float32),
                 instruction="go", task="t", success=True)
    ds = ChunkDataset([ep], horizon=2, obs_steps=obs_steps, image_history=image_history, embodiment=1)
    hist = ObservationHistory(obs_steps, image_history, embodiment=1)
    for t in range(T):
        raw = {"image": ep.images[t][0] if views == 1 else ep.images[t], "state": ep.state[t], "instruction": "go"}
        o = hist(raw)
        sample = ds[t]
        assert hist.t == t and o["instruction"] == ["go"] and o["embodiment"].tolist() == [1]
        assert o["images"].dtype == np.uint8 and o["state"].dtype == np.float32
        torch.testing.assert_close(torch.from_numpy(o["images"][0]).float().div_(255.0), sample["images"])
        torch.testing.assert_close(torch.from_numpy(o["state"][0]), sample["state"])
        np.testing.assert_array_equal(o["state"][0], ep.state[history_indices(t, obs_steps)])
    hist.reset()
    assert hist({"image": ep.images[3], "state": ep.state[3], "instruction": "x"})["state"].shape == (1, obs_steps, 3)


def test_history_instruction_override_and_errors():
    h = ObservationHistory(2, instruction="override")
    assert h({"image": np.zeros((3, 4, 4), np.uint8), "state": [1.0], "instruction": "env"})["instruction"] == ["override"]
    with pytest.raises(RuntimeError, match="no observation"):
        ObservationHistory(2).states()
    with pytest.raises(ValueError):
        ObservationHistory(0)
    with pytest.raises(ValueError):
        camera_major(np.zeros((2, 3, 4, 4)))


# ------------------------------------------------------------------------------------------------
# chunk execution


def scripted_chunks(n: int = 6, b: int = 2, h: int = 5, d: int = 3) -> list[np.ndarray]:
    g = np.random.default_rng(1)
    return [g.normal(size=(b, h, d)).astype(np.float32) for _ in range(n)]


def run_broker(chunks: list, mode: str, steps: int, to_torch: bool) -> tuple[list[np.ndarray], ActionChunkBroker]:
    it = iter(torch.from_numpy(c) if to_torch else c for c in chunks)
    b = ActionChunkBroker(lambda obs: next(it), mode=mode, n_action_steps=2, ensemble_decay=0.3, horizon=5)
    out = []
    for _ in range(steps):
        a = b.act({})
        assert isinstance(a, torch.Tensor) == to_torch and a.dtype == (torch.float32 if to_torch else np.float32)
        out.append(np.asarray(a))
    return out, b


@pytest.mark.parametrize("mode", ["receding", "ensemble"])
def test_broker_gives_the_same_actions_for_numpy_and_torch_chunks(mode):
    chunks = scripted_chunks()
    ref, b = run_broker(chunks, mode, 6, to_torch=False)
    got, _ = run_broker(chunks, mode, 6, to_torch=True)
    for x, y in zip(ref, got):
        np.testing.assert_array_equal(x, y)
    if mode == "receding":
        want = [chunks[k // 2][:, k % 2] for k in range(6)]
        assert b.chunks == 3
    else:  # every step averages each chunk that covers it, weights exp(-0.3 * age), in float64
        want = []
        for t in range(6):
            covering = [(t0, chunks[t0]) for t0 in range(t + 1) if t - t0 < 5]
            w = np.array([math.exp(-0.3 * (t - t0)) for t0, _ in covering])
            want.append(sum(wi * c[:, t - t0].astype(np.float64) for wi, (t0, c) in zip(w, covering)) / w.sum())
        assert b.chunks == 6
    for x, y in zip(ref, want):
        np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-6)


def test_broker_state_interleaves_episodes():
    """state() / load_state() swapped around every act: two interleaved episodes get exactly the
    actions each gets alone (what VLAPolicy.rollout_state relies on with env workers)."""
    chunks = scripted_chunks()
    streams, current = {0: iter(chunks[:3]), 1: iter(chunks[3:])}, [0]
    b = ActionChunkBroker(lambda obs: next(streams[current[0]]), mode="ensemble", ensemble_decay=0.3)
    states, got = {0: b.state(), 1: b.state()}, {0: [], 1: []}
    for _ in range(3):
        for e in (0, 1):
            current[0] = e
            b.load_state(states[e])
            got[e].append(b.act({}))
            states[e] = b.state()
    for e, own in ((0, chunks[:3]), (1, chunks[3:])):
        alone, _ = run_broker(own, "ensemble", 3, to_torch=False)
        for x, y in zip(got[e], alone):
            np.testing.assert_array_equal(x, y)
    assert states[0]["t"] == 3 and len(states[0]["ensemble"]) == 3 and states[0]["queue"] == []


def test_broker_refuses_bad_sources_modes_and_chunks():
    with pytest.raises(TypeError):
        ActionChunkBroker(42)
    with pytest.raises(ValueError, match="mode"):
        ActionChunkBroker(lambda o: None, mode="average")
    with pytest.raises(ValueError, match="n_action_steps"):
        ActionChunkBroker(lambda o: None, n_action_steps=9, horizon=8)
    with pytest.raises(ValueError, match=r"\(B, H, D\)"):
        ActionChunkBroker(lambda o: np.zeros((4, 2), np.float32)).act({})


# ------------------------------------------------------------------------------------------------
# the package alone, in a fresh virtualenv

CLIENT_SCRIPT = r"""
import json, sys
import numpy as np
from vla_ebt_client import ActionChunkBroker, ObservationHistory, PolicyClient

url, token = sys.argv[1], sys.argv[2]
out = {}
for mod in ("torch", "vla_ebt"):
    try:
        __import__(mod)
        out[mod] = "importable"
    except ImportError as e:
        out[mod] = type(e).__name__
with PolicyClient(url, token=token) as client:                         # handshake: the metadata
    m = client.metadata
    out["metadata"] = {k: m[k] for k in ("protocol", "horizon", "action_dim", "obs_steps", "cameras")}
    history = ObservationHistory(m["obs_steps"], embodiment=0)
    g = np.random.default_rng(0)
    def raw():
        return {"image": g.integers(0, 256, (3, m["image_size"], m["image_size"]), dtype=np.uint8),
                "state": g.normal(size=m["state_dim"]).astype(np.float32), "instruction": "pick up the cup"}
    reply = client.infer(history(raw()))                                # one inference
    out["chunk_shape"] = list(reply["actions"].shape)
    out["chunk_dtype"] = str(reply["actions"].dtype)
    broker = ActionChunkBroker(client)                                  # receding, from the metadata
    actions = [broker.act(history(raw())) for _ in range(4)]
    out["action_shapes"] = [list(a.shape) for a in actions]
    out["chunks"] = broker.chunks
    out["torch_loaded"] = "torch" in sys.modules
print(json.dumps(out))
"""


def _clean_env() -> dict[str, str]:
    """This environment minus anything that would let the fresh venv see the project's packages."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTHONSTARTUP")}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    return env


@pytest.mark.slow
def test_client_package_alone_in_a_fresh_venv_drives_the_server(tmp_path):
    src = tmp_path / "src"  # build from a copy: a build never writes into the repository
    shutil.copytree(CLIENT_DIR, src, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    venv = tmp_path / "venv"
    env = _clean_env()
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, env=env, timeout=120)
    py = str(venv / "bin" / "python")
    r = subprocess.run([py, "-m", "pip", "install", "-q", "--no-compile", str(src)], env=env, cwd=tmp_path,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, f"pip install of the client package failed:\n{r.stdout}\n{r.stderr}"
    freeze = subprocess.run([py, "-m", "pip", "list", "--format=json"], env=env, cwd=tmp_path, capture_output=True,
                            text=True, timeout=60, check=True)
    installed = {p["name"].lower().replace("_", "-") for p in json.loads(freeze.stdout)}
    assert {"vla-ebt-client", "numpy", "websockets", "msgpack"} <= installed
    assert not installed & {"torch", "vla-ebt"}

    token = "venv-token"
    policy = make_policy(head="regression").eval()
    with PolicyServer(policy, host="127.0.0.1", port=0, token=token) as srv:
        r = subprocess.run([py, "-c", CLIENT_SCRIPT, srv.url, token], env=env, cwd=tmp_path, capture_output=True,
                           text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["torch"] == "ModuleNotFoundError" and out["vla_ebt"] == "ModuleNotFoundError"
    assert out["metadata"] == {"protocol": "vla_ebt.serve/1", "horizon": H, "action_dim": D, "obs_steps": 1,
                               "cameras": 1}
    assert out["chunk_shape"] == [1, H, D] and out["chunk_dtype"] == "float32"
    assert out["action_shapes"] == [[1, D]] * 4 and out["chunks"] == 2  # n_action_steps = 3
    assert out["torch_loaded"] is False
